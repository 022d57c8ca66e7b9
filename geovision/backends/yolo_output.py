"""Decoding YOLO detection heads' raw output, shared by the torch and ONNX backends."""

from __future__ import annotations

import numpy as np

from geovision.backends import Detections
from geovision.nms import batched_nms

MAX_DETECTIONS_PER_TILE = 1000


def decode(out: np.ndarray, confidence: float, iou: float, size: int, end2end: bool = False) -> Detections:
    """One image's head output to tile-pixel boxes above ``confidence``, after class-aware NMS.

    ``out`` is (4 + classes, anchors) — centre x, centre y, width, height, then
    class scores — or, for end-to-end heads, (max_det, 6) rows of
    x1, y1, x2, y2, score, class that need no NMS.
    """
    out = np.asarray(out, dtype=np.float32)
    if end2end:
        out = out[out[:, 4] >= confidence]
        return Detections(np.clip(out[:, :4], 0, size), out[:, 4].copy(), out[:, 5].astype(np.int64))
    class_scores = out[4:]
    classes = class_scores.argmax(axis=0)
    scores = class_scores[classes, np.arange(class_scores.shape[1])]
    keep = np.flatnonzero(scores >= confidence)
    if keep.size == 0:
        return Detections.empty()
    cx, cy, w, h = out[:4, keep]
    boxes = np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1), 0, size)
    scores, classes = scores[keep], classes[keep]
    kept = batched_nms(boxes, scores, classes, iou)[:MAX_DETECTIONS_PER_TILE]
    return Detections(boxes[kept], scores[kept].astype(np.float32), classes[kept].astype(np.int64))
