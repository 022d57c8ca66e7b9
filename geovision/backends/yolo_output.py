"""Decoding YOLO heads' raw output, shared by the torch and ONNX backends."""

from __future__ import annotations

import numpy as np
import shapely
import shapely.geometry
from rasterio import features

from geovision.backends.base import Detections
from geovision.geometry import Nms, batched_nms

MAX_DETECTIONS_PER_TILE = 1000


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
