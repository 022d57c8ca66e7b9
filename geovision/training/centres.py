"""Training centre-heatmap box detectors (:mod:`geovision.backends.centres`) on a chip dataset.

Chips are those the YOLO trainer gets (:func:`.chips.chip_detection_dataset`:
PNG tiles and YOLO-format boxes), so the split, labelled areas and no-data
handling are the same. Each box becomes a Gaussian bump on its class's
heatmap, elliptical and as wide as the box (TTFNet's shape, Liu et al.
2019), with the box's log width and height learned where the bump is high.
The heatmap learns with CenterNet's penalty-reduced focal loss; the best
epoch is the one with the highest box F1 (IoU 0.4) on the validation chips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from geovision.backends.centres import SIZE_SCALE
from geovision.config import ModelConfig
from geovision.training.chips import ChipSet
from geovision.training.common import aerial_augmentations
from geovision.training.scoring import MIN_BOXES, detected_f1, read_chips
from geovision.training.smp import SmpTrainer, as_tensor, fit, start_network, write_package

#: a bump's standard deviation as a share of the box's side (TTFNet's alpha / 6)
BUMP = 0.54 / 6
#: pixels whose bump is at least this high learn the box size
SIZE_FLOOR = 0.3
#: the heatmap's starting bias: every pixel starts at a probability of 0.1 (CenterNet's prior)
PRIOR_BIAS = -2.19


def targets(boxes: np.ndarray, size: int, n_classes: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The heatmaps (classes, n, n), log sizes (2, n, n) and size weights (n, n) of one chip's boxes
    (k, 5: class, x1, y1, x2, y2 in input pixels), on the network's output grid of n = size / stride
    pixels. Sizes stay in input pixels. Where bumps overlap, the smaller box's size wins."""
    n = size // stride
    heat = np.zeros((n_classes, n, n), np.float32)
    sizes = np.zeros((2, n, n), np.float32)
    weight = np.zeros((n, n), np.float32)
    order = np.argsort(-(boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2]))  # large first, small on top
    for c, x1, y1, x2, y2 in boxes[order]:
        w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        cx, cy = min(int((x1 + x2) / 2 / stride), n - 1), min(int((y1 + y2) / 2 / stride), n - 1)
        sx, sy = max(BUMP * w / stride, 0.8), max(BUMP * h / stride, 0.8)
        rx, ry = int(3 * sx) + 1, int(3 * sy) + 1
        xs, ys = np.arange(max(0, cx - rx), min(n, cx + rx + 1)), np.arange(max(0, cy - ry), min(n, cy + ry + 1))
        bump = np.exp(-((xs[None] - cx) ** 2) / (2 * sx**2) - ((ys[:, None] - cy) ** 2) / (2 * sy**2))
        window = np.ix_(ys, xs)
        heat[int(c)][window] = np.maximum(heat[int(c)][window], bump)
        learn = bump >= SIZE_FLOOR
        sizes[0][window] = np.where(learn, np.log(w / SIZE_SCALE), sizes[0][window])
        sizes[1][window] = np.where(learn, np.log(h / SIZE_SCALE), sizes[1][window])
        weight[window] = np.where(learn, bump, weight[window])
    return heat, sizes, weight


def focal_loss(logits: Any, heat: Any) -> Any:
    """CenterNet's focal loss: peaks (heat 1) are objects; near them, misses cost less."""
    import torch

    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    peak = (heat >= 1 - 1e-6).float()
    pos = peak * (1 - p) ** 2 * torch.log(p)
    neg = (1 - peak) * (1 - heat) ** 4 * p**2 * torch.log(1 - p)
    return -(pos.sum() + neg.sum()) / peak.sum().clamp(min=1)


def augmentation(aerial: bool, seed: int | None = None) -> Any:
    """The segmenters' geometry and colour changes, with boxes carried along (``seed``: repeatable draws)."""
    import albumentations as A

    geometry = A.Affine(scale=(0.7, 1.4) if aerial else (0.85, 1.15), p=0.6 if aerial else 0.5)
    pixels = aerial_augmentations() if aerial else [A.RandomBrightnessContrast(0.2, 0.2, p=0.7)]
    boxes = A.BboxParams(format="pascal_voc", label_fields=["classes"], min_visibility=0.3, clip=True)
    return A.Compose([A.SquareSymmetry(p=1.0), geometry, *pixels], bbox_params=boxes, seed=seed)


class CentreTrainer(SmpTrainer):
    """Centre-heatmap box detectors on an smp network, on the chips a YOLO detector gets."""

    def network(self) -> str:
        return f"centre heatmap on {super().network()}"

    def config(self) -> ModelConfig:
        return replace(super().config(), smp=self.smp_options(boundary=False))

    def fit(self, chips: ChipSet, cfg: ModelConfig, package: Path, info: dict[str, Any]) -> ModelConfig:
        """Focal loss on the heatmap and L1 on log sizes; the epoch of the best box F1 on the validation
        chips, with that F1's confidence unless one was given."""
        import torch

        from geovision.backends.base import decode
        from geovision.backends.centres import boxes_module
        from geovision.backends.device import pick_device

        opts, log = self.options(), self.log
        splits = yaml.safe_load((chips.folder / "data.yaml").read_text())  # validation may be the training chips
        train_images, train_boxes = read_chips(chips.folder, Path(splits["train"]).name)
        val_images, val_boxes = read_chips(chips.folder, Path(splits["val"]).name)
        net, cfg, imagenet = start_network(cfg, train_images, opts, log)
        n_classes, size, stride = len(cfg.classes), cfg.tile_size, cfg.smp.output_stride
        with torch.no_grad():  # start every pixel at a low centre probability, or the focal loss swamps the first steps
            net.segmentation_head[0].bias[:n_classes] = PRIOR_BIAS
        mean, std = np.asarray(cfg.smp.mean, np.float32), np.asarray(cfg.smp.std, np.float32)
        device = pick_device(opts.device)
        net = net.to(device)
        aug = augmentation(opts.augment == "aerial", opts.seed)
        # the decoding module, its buffers beside the network
        boxes_of = boxes_module()(net, mean, std, n_classes, size, stride=stride).to(device)

        def loss_of(batch: list[int]) -> Any:
            xs, heats, sizes, weights = [], [], [], []
            for k in batch:
                b = train_boxes[k]
                out = aug(image=train_images[k], bboxes=b[:, 1:], classes=b[:, 0])
                kept = np.column_stack([out["classes"], out["bboxes"]]).reshape(-1, 5).astype(np.float32)
                heat, log_size, weight = targets(kept, size, n_classes, stride)
                xs.append(out["image"])
                heats.append(heat)
                sizes.append(log_size)
                weights.append(weight)
            out = net(as_tensor(xs, mean, std).to(device))
            want_heat, want_size, size_weight = (
                torch.from_numpy(np.stack(a)).to(device) for a in (heats, sizes, weights)
            )
            size_error = (out[:, n_classes : n_classes + 2] - want_size).abs().sum(1) * size_weight
            return focal_loss(out[:, :n_classes], want_heat) + size_error.sum() / size_weight.sum().clamp(min=1)

        def detect(images: Sequence[np.ndarray], confidence: float) -> list[Any]:
            with torch.inference_mode():
                out = boxes_of(torch.from_numpy(np.stack(images)).to(device)).cpu().numpy()
            return [decode(o, confidence, cfg.iou, size) for o in out]

        def validate() -> dict[str, float]:
            return detected_f1(detect, val_images, val_boxes)

        fitted = fit(net, len(train_images), loss_of, validate, "f1", opts, log)
        enough = sum(len(b) for b in val_boxes) >= MIN_BOXES  # too few boxes: luck, not a choice
        if self.spec.confidence is None and enough:
            cfg = cfg.with_overrides(confidence=fitted.scores["threshold"])
        metrics = {"box_f1_iou_0.4": fitted.scores["f1"], "at_confidence": fitted.scores["threshold"]}
        return write_package(cfg, fitted, package, opts, imagenet, metrics, info)
