"""What every model backend is: the Detector and Segmenter protocols, the Detections they return, and
the decoding of YOLO-shaped head output that the YOLO, centre and ONNX backends share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import shapely
import shapely.geometry
from rasterio import features

from geovision.geometry import Nms, batched_nms

MAX_DETECTIONS_PER_TILE = 1000


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


def decode(
    out: np.ndarray, confidence: float, iou: float, size: int, end2end: bool = False, nms: Nms = batched_nms
) -> Detections:
    """One image's head output to tile-pixel boxes above ``confidence``, after class-aware NMS.

    ``out`` is (4 + classes, anchors) — centre x, centre y, width, height, then
    class scores — or, for end-to-end heads, (max_det, 6) rows of
    x1, y1, x2, y2, score, class that need no NMS.
    """
    out = np.asarray(out, dtype=np.float32)
    if end2end:
        out = out[out[:, 4] >= confidence]
        return Detections(np.clip(out[:, :4], 0, size), out[:, 4].copy(), out[:, 5].astype(np.int64))
    anchors, boxes, scores, classes = _kept(out, out.shape[0] - 4, confidence, iou, size, nms)
    return Detections(boxes, scores, classes)


def _kept(
    out: np.ndarray, n_classes: int, confidence: float, iou: float, size: int, nms: Nms
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Anchors kept by the threshold and NMS, with their boxes, scores and classes."""
    class_scores = out[4 : 4 + n_classes]
    classes = class_scores.argmax(axis=0)
    scores = class_scores[classes, np.arange(class_scores.shape[1])]
    anchors = np.flatnonzero(scores >= confidence)
    cx, cy, w, h = out[:4, anchors]
    boxes = np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1), 0, size).reshape(-1, 4)
    kept = nms(boxes, scores[anchors], classes[anchors], iou)[:MAX_DETECTIONS_PER_TILE]
    anchors = anchors[kept]
    return anchors, boxes[kept], scores[anchors].astype(np.float32), classes[anchors].astype(np.int64)


def decode_instances(
    out: np.ndarray, proto: np.ndarray, confidence: float, iou: float, size: int, nms: Nms = batched_nms
) -> Detections:
    """One image's YOLO-seg output to boxes with one outline polygon each.

    ``out`` is (4 + classes + masks, anchors), the last rows mask
    coefficients; ``proto`` is (masks, h, w) prototypes at a fraction of the
    tile size. Each kept object's mask is its coefficients times the
    prototypes, upsampled to the tile, cut to its box and thresholded at 0.5;
    its outline is the mask's largest 4-connected region.
    """
    out = np.asarray(out, dtype=np.float32)
    nm, h, w = proto.shape
    anchors, boxes, scores, classes = _kept(out, out.shape[0] - 4 - nm, confidence, iou, size, nms)
    polygons = np.empty(len(anchors), dtype=object)
    if len(anchors):
        from scipy import ndimage  # instance outlines only: box detectors never load it

        logits = (out[-nm:, anchors].T @ proto.reshape(nm, -1)).reshape(-1, h, w)
        for i, (m, box) in enumerate(zip(logits, boxes)):
            # pixel-centre aligned, as the network was trained (not corner aligned)
            up = ndimage.zoom(m, (size / h, size / w), order=1, grid_mode=True, mode="nearest")
            polygons[i] = _outline(up, box)
    det = Detections(boxes, scores, classes, polygons)
    return det.take(np.flatnonzero([p is not None for p in polygons]).astype(np.int64))


def _outline(logit: np.ndarray, box: np.ndarray) -> shapely.Polygon | None:
    """The largest region with probability >= 0.5 (logit >= 0) inside ``box``, in tile pixels."""
    x1, y1 = np.floor(box[:2]).astype(int)
    x2, y2 = np.ceil(box[2:]).astype(int)
    mask = np.zeros(logit.shape, dtype=np.uint8)
    mask[y1:y2, x1:x2] = logit[y1:y2, x1:x2] >= 0
    polys = [shapely.geometry.shape(g) for g, _ in features.shapes(mask, mask=mask > 0, connectivity=4)]
    return max(polys, key=lambda p: p.area) if polys else None
