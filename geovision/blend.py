"""Blending overlapping tile predictions of a segmenter, one band of rows at a time.

Each tile's class probabilities are weighted by a smooth window (a squared
sine, i.e. Hann, that falls towards the tile's edges, where a network sees
least context) and summed; dividing by the summed weights gives a prediction
with no jump at tile edges. Only one tile-height band of the model grid is
ever held: when a row of tiles is done, the rows no later tile can reach are
final and leave as a strip. Memory does not grow with the raster's height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geovision.tiling import TileGrid

#: Smallest window weight, so pixels at the raster's own edge (seen by one tile edge) still count.
MIN_WEIGHT = 1e-3


def hann_window(size: int) -> np.ndarray:
    """(size, size) float32 weights, highest in the centre, small but positive at the edges."""
    w = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.maximum(np.outer(w, w), MIN_WEIGHT).astype(np.float32)


@dataclass
class Strip:
    """Final predictions for model-grid rows ``y0`` to ``y0 + rows``, the grid's full width."""

    y0: int
    classes: np.ndarray  # (rows, width) uint8, 0 = background
    score: np.ndarray  # (rows, width) float32: probability of the pixel's class
    probs: np.ndarray  # (n_classes + 1, rows, width) float32, background first

    @property
    def rows(self) -> int:
        return self.classes.shape[0]


def warmup_rows(grid: TileGrid) -> int:
    """Tile rows above a row that reach into it: a blender started that many rows before row ``r``
    emits, from row ``r`` on, exactly the strips of one started at the top (the rows before it
    are incomplete and are thrown away)."""
    return math.ceil(grid.tile_size / grid.stride) - 1


class BandBlender:
    """Accumulates weighted tile probabilities row by row of tiles and emits final strips."""

    def __init__(self, grid: TileGrid, n_outputs: int, threshold: float = 0.5, first_row: int = 0) -> None:
        self.grid = grid
        self.threshold = threshold
        t = grid.tile_size
        self.window = hann_window(t)
        self.acc = np.zeros((n_outputs, t, grid.width), np.float32)
        self.weight = np.zeros((t, grid.width), np.float32)
        self.row = first_row  # a band of the grid starts part-way down (see :func:`warmup_rows`)

    def add(self, x0: int, probs: np.ndarray, valid: np.ndarray) -> None:
        """Add one tile of the current row: ``probs`` (outputs, t, t), ``valid`` (t, t)."""
        w = min(self.grid.tile_size, self.grid.width - x0)
        weight = self.window[:, :w] * valid[:, :w]
        self.acc[:, :, x0 : x0 + w] += probs[:, :, :w] * weight
        self.weight[:, x0 : x0 + w] += weight

    def finish_row(self) -> Strip:
        """Close the current row of tiles; return the rows that are now final."""
        g, t = self.grid, self.grid.tile_size
        y0 = g.row_start(self.row)
        last = self.row + 1 >= g.n_rows
        rows = (g.height - y0) if last else g.stride
        rows = min(rows, t)
        weight = self.weight[:rows]
        probs = np.divide(self.acc[:, :rows], weight, out=np.zeros_like(self.acc[:, :rows]), where=weight > 0)
        probs[0][weight == 0] = 1.0  # never seen (nodata): background
        strip = self._classify(y0, probs)
        # shift the band up by one stride; the freed rows start empty
        s = g.stride
        self.acc[:, : t - s] = self.acc[:, s:]
        self.acc[:, t - s :] = 0
        self.weight[: t - s] = self.weight[s:]
        self.weight[t - s :] = 0
        self.row += 1
        return strip

    def _classify(self, y0: int, probs: np.ndarray) -> Strip:
        """The most probable foreground class where it reaches the threshold, else background."""
        fg = probs[1:]
        best = fg.argmax(axis=0)
        score = np.take_along_axis(fg, best[None], axis=0)[0]
        classes = np.where(score >= self.threshold, best + 1, 0).astype(np.uint8)
        score = np.where(classes > 0, score, probs[0])
        return Strip(y0, classes, score.astype(np.float32), probs)
