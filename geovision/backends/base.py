"""What every model backend is: the Detector and Segmenter protocols and the Detections they return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Detections:
    """Objects found in one tile, in tile pixels: boxes (x1, y1, x2, y2) and, for
    instance segmenters, one outline polygon per box."""

    boxes: np.ndarray  # (n, 4) float32
    scores: np.ndarray  # (n,) float32
    classes: np.ndarray  # (n,) int64
    polygons: np.ndarray | None = None  # (n,) shapely Polygons, or None for box detectors

    @classmethod
    def empty(cls, with_polygons: bool = False) -> Detections:
        polys = np.empty(0, dtype=object) if with_polygons else None
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), polys)

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, keep: np.ndarray) -> Detections:
        polys = self.polygons[keep] if self.polygons is not None else None
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep], polys)


class Detector(Protocol):
    """Anything that finds boxes in a batch of (size, size, channels) uint8 tiles."""

    device: str

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, iou: float | None = None
    ) -> list[Detections]:
        """Boxes per tile above ``confidence`` after NMS at ``iou`` (None: the model's own)."""
        ...

    def fit_batch(self, base: int) -> int:
        """Tiles per call on this device: ``base``, or more where the GPU's free memory allows."""
        ...


class Segmenter(Protocol):
    """Anything that gives per-pixel probabilities (background first) for a batch of tiles."""

    device: str

    def segment(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def fit_batch(self, base: int) -> int:
        """Tiles per call on this device: ``base``, or more where the GPU's free memory allows."""
        ...
