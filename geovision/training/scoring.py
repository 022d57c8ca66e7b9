"""Box F1 of a detector on its chip dataset, and the confidence threshold where it is best.

A trained detector's default confidence is chosen on its validation chips (the
held-out blocks, or the training chips when none holds a label), so that a
model fine-tuned on a user's imagery does not keep the threshold of the model
it started from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import yaml

from geovision.evaluate import match, pairwise_iou

#: thresholds swept on the validation chips
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 13))
#: fewer validation boxes than this choose no threshold: among twelve, the best on a dozen crowns is luck
MIN_BOXES = 30


def read_chips(folder: Path, split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Chip images and their boxes (n, 5: class, x1, y1, x2, y2 in pixels) from a YOLO chip dataset.

    Transposed copies (``_T``) are left out: the augmentation turns and flips every chip.
    """
    from PIL import Image

    images, boxes = [], []
    for png in sorted((folder / "images" / split).glob("*.png")):
        if png.stem.endswith("_T"):
            continue
        image = np.asarray(Image.open(png).convert("RGB"))
        size = image.shape[0]
        text = (folder / "labels" / split / f"{png.stem}.txt").read_text().split()
        rows = np.asarray(text, np.float64).reshape(-1, 5)
        c, cx, cy, w, h = rows.T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * size
        images.append(image)
        boxes.append(np.column_stack([c, xyxy]).astype(np.float32))
    return images, boxes


def box_f1(found: Sequence[Any], truth: Sequence[np.ndarray], iou: float = 0.4) -> dict[str, float]:
    """Box F1 over chips at each of :data:`THRESHOLDS`: the best, and its threshold."""
    best = {"f1": 0.0, "threshold": THRESHOLDS[0]}
    for t in THRESHOLDS:
        tp = fp = fn = 0
        for det, boxes in zip(found, truth):
            keep = det.scores >= t
            pred, real = shapely.box(*det.boxes[keep].T), shapely.box(*boxes[:, 1:].T)
            hits = int((match(pairwise_iou(pred, real), np.argsort(-det.scores[keep]), iou) >= 0).sum())
            tp, fp, fn = tp + hits, fp + int(keep.sum()) - hits, fn + len(boxes) - hits
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        if f1 > best["f1"]:
            best = {"f1": round(f1, 4), "threshold": t}
    return best


def chips_confidence(
    detect: Callable[[Sequence[np.ndarray], float], list[Any]], chip_dir: Path, batch: int = 8
) -> dict[str, float]:
    """Box F1 (IoU 0.4) of ``detect(images, confidence)`` on the validation chips that the chip
    dataset's data.yaml names, at its best threshold, and the boxes it was measured on:
    {"f1", "threshold", "boxes"}."""
    splits = yaml.safe_load((chip_dir / "data.yaml").read_text())
    images, boxes = read_chips(chip_dir, Path(splits["val"]).name)
    return {**detected_f1(detect, images, boxes, batch), "boxes": sum(len(b) for b in boxes)}


def detected_f1(
    detect: Callable[[Sequence[np.ndarray], float], list[Any]],
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    batch: int = 8,
) -> dict[str, float]:
    """:func:`box_f1` of ``detect(images, confidence)`` run in batches at the lowest threshold swept."""
    found: list[Any] = []
    for i in range(0, len(images), batch):
        found += detect(images[i : i + batch], THRESHOLDS[0])
    return box_f1(found, boxes)
