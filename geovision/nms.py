"""Class-aware non-maximum suppression, in NumPy or with torchvision, chosen by the caller.

The ONNX Runtime path must run without torch installed, so it (and the seam
merging every run shares) uses the greedy algorithm in NumPy; the torch
backend, which has torch loaded anyway, asks for torchvision's
``batched_nms``. A test checks that both keep the same boxes. Nothing here
looks at which modules happen to be imported.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: (boxes, scores, classes, iou) -> indexes kept, best score first
Nms = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]


def batched_nms_torchvision(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """:func:`batched_nms` by torchvision.ops (the torch backend's choice)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    import torch
    from torchvision.ops import batched_nms as tv_batched_nms

    kept = tv_batched_nms(
        torch.as_tensor(boxes, dtype=torch.float64),
        torch.as_tensor(scores, dtype=torch.float64),
        torch.as_tensor(classes, dtype=torch.int64),
        iou,
    )
    return kept.numpy()


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indexes of the boxes kept, best score first; boxes of different classes never suppress each other.

    Greedy, in NumPy (classes kept apart by offsetting their boxes).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = (np.asarray(classes, dtype=np.float64) * (np.abs(b).max() + 1))[:, None]
    b = b + offset
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        ih = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = iw * ih
        union = area[i] + area[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)
