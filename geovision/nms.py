"""Class-aware non-maximum suppression in NumPy.

The ONNX Runtime path must run without torch installed, so it (and the seam
merging every run shares) uses the greedy algorithm here; the torch backend,
which has torch loaded anyway, passes torchvision's ``batched_nms``
(:func:`geovision.backends.yolo.batched_nms_torchvision`) where an
:data:`Nms` is taken. A test checks that both keep the same boxes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from geovision.geometry import box_iou

#: (boxes, scores, classes, iou) -> indexes kept, best score first
Nms = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]


#: up to this many boxes the pairwise IoU is computed at once (float32: 16 MB at 2048)
MATRIX_MAX = 2048


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indexes of the boxes kept, best score first; boxes of different classes never suppress each other.

    Greedy, in NumPy (classes kept apart by offsetting their boxes). A tile's
    boxes (up to :data:`MATRIX_MAX`) get their pairwise IoU in one step and the
    greedy pass only reads it; larger sets go box by box, in bounded memory.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = (np.asarray(classes, dtype=np.float64) * (np.abs(b).max() + 1))[:, None]
    order = np.argsort(-np.asarray(scores), kind="stable")
    b = (b + offset)[order]
    if len(b) <= MATRIX_MAX:
        return order[_greedy_on_matrix(box_iou(b[:, None], b[None]) > iou)]
    return order[_greedy_box_by_box(b, iou)]


def _greedy_on_matrix(over: np.ndarray) -> np.ndarray:
    """Positions kept (in score order) given which pairs overlap too much."""
    suppressed = np.zeros(len(over), dtype=bool)
    keep = []
    for i in range(len(over)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return np.asarray(keep, dtype=np.int64)


def _greedy_box_by_box(b: np.ndarray, iou: float) -> np.ndarray:
    """Positions kept (in score order), one box's overlaps at a time."""
    rest = np.arange(len(b))
    keep = []
    while rest.size:
        i, rest = rest[0], rest[1:]
        keep.append(i)
        rest = rest[box_iou(b[i], b[rest]) <= iou]
    return np.asarray(keep, dtype=np.int64)
