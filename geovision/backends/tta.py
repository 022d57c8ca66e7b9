"""Test-time augmentation for detectors and instance segmenters: each tile also seen mirrored.

A detector misses crowns or roofs it would find in a mirror image of the
same tile (its filters are not symmetric). Running each batch three times
(as it is, left-right and top-bottom mirrored), mapping the mirrored boxes
and outlines back and keeping, per class, the best-scoring of objects that
overlap (NMS at the call's IoU, by outline IoU for instance segmenters, as
objects are merged at tile seams) trades three times the model time for
recall. docs/models.md says what it gained on held-out sites.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

from geovision.backends.base import Detections, Detector
from geovision.merge import object_nms


class FlipTTA:
    """``inner`` run on each tile and its left-right and top-bottom mirrors, merged by NMS."""

    def __init__(self, inner: Detector, iou: float) -> None:
        self.inner = inner
        self.iou = iou
        self.device = inner.device

    def fit_batch(self, base: int) -> int:
        return self.inner.fit_batch(base)

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, iou: float | None = None
    ) -> list[Detections]:
        plain = self.inner.detect(images, confidence, iou)
        lr = self.inner.detect([np.ascontiguousarray(im[:, ::-1]) for im in images], confidence, iou)
        tb = self.inner.detect([np.ascontiguousarray(im[::-1]) for im in images], confidence, iou)
        out = []
        for im, a, b, c in zip(images, plain, lr, tb):
            height, width = im.shape[:2]
            boxes = np.concatenate([a.boxes, unflip(b.boxes, width, axis=0), unflip(c.boxes, height, axis=1)])
            polys = None
            if a.polygons is not None and b.polygons is not None and c.polygons is not None:
                back = unflip_outlines(b.polygons, width, axis=0), unflip_outlines(c.polygons, height, axis=1)
                polys = np.concatenate([a.polygons, *back])
            merged = Detections(
                boxes.astype(np.float32),
                np.concatenate([a.scores, b.scores, c.scores]),
                np.concatenate([a.classes, b.classes, c.classes]),
                polys,
            )
            out.append(merged.take(object_nms(merged.boxes, merged.scores, merged.classes, polys, iou or self.iou)))
        return out


def unflip(boxes: np.ndarray, extent: int, axis: int) -> np.ndarray:
    """Boxes (x1, y1, x2, y2) found in a tile mirrored along x (``axis`` 0) or y (1), in the tile's own pixels."""
    out = boxes.copy()
    lo, hi = (0, 2) if axis == 0 else (1, 3)
    out[:, lo], out[:, hi] = extent - boxes[:, hi], extent - boxes[:, lo]
    return out


def unflip_outlines(polys: np.ndarray, extent: int, axis: int) -> np.ndarray:
    """Outlines found in a tile mirrored along x (``axis`` 0) or y (1), in the tile's own pixels
    (rings re-oriented, so that they stay valid polygons in shapely's sense)."""
    sign = np.where(np.arange(2) == axis, -1.0, 1.0)
    shift = np.where(np.arange(2) == axis, float(extent), 0.0)
    return shapely.orient_polygons(shapely.transform(polys, lambda xy: xy * sign + shift))
