"""The tile grid: which windows of the model grid go through the model.

Tiles are squares of ``tile_size`` model pixels laid at a constant stride of
``tile_size - overlap``. The last tile in each row and column may run past
the raster's edge; the reader pads that part, so every tile has the same
shape and the overlap is the same everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    """One tile, in model-grid pixels (``x0``, ``y0`` is its top-left corner)."""

    row: int
    col: int
    x0: int
    y0: int
    size: int

    @property
    def x1(self) -> int:
        return self.x0 + self.size

    @property
    def y1(self) -> int:
        return self.y0 + self.size


@dataclass(frozen=True)
class TileGrid:
    """A grid of equal tiles covering a ``width`` x ``height`` pixel grid."""

    width: int
    height: int
    tile_size: int
    overlap: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"grid must be at least 1x1 pixels, got {self.width}x{self.height}")
        if self.tile_size < 1:
            raise ValueError(f"tile_size must be positive, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"overlap must be in [0, tile_size), got {self.overlap} for tile_size {self.tile_size}")

    @property
    def stride(self) -> int:
        return self.tile_size - self.overlap

    @property
    def n_cols(self) -> int:
        return _count(self.width, self.tile_size, self.stride)

    @property
    def n_rows(self) -> int:
        return _count(self.height, self.tile_size, self.stride)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def row(self, r: int) -> list[Tile]:
        """The tiles of row ``r``, left to right."""
        s, t = self.stride, self.tile_size
        return [Tile(r, c, c * s, r * s, t) for c in range(self.n_cols)]

    def __iter__(self) -> Iterator[Tile]:
        for r in range(self.n_rows):
            yield from self.row(r)

    def row_start(self, r: int) -> int:
        """First model-grid pixel row covered by tile row ``r``."""
        return r * self.stride


def _count(length: int, tile: int, stride: int) -> int:
    """Fewest tiles at ``stride`` whose union covers ``length`` pixels."""
    if length <= tile:
        return 1
    return math.ceil((length - tile) / stride) + 1
