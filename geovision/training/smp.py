"""Training segmentation models (segmentation-models-pytorch) on in-memory chips.

Training uses an albumentations pipeline suited to nadir imagery (the eight
90-degree rotations and flips, brightness/contrast, a little scale), Dice +
cross-entropy loss, IoU and F1 on the validation chips every epoch, and
keeps the best epoch.
"""

from __future__ import annotations

import math
import pickle
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from geovision.backends.smp import STAGED_DECODERS
from geovision.config import ModelConfig, SmpOptions, VectorizeOptions
from geovision.errors import TrainingError
from geovision.labels import ImageShapes, LabelReport
from geovision.training.chips import IGNORE, SegChips, chip_segmentation_dataset
from geovision.training.common import aerial_augmentations, package_run, start_weights
from geovision.training.pretrained import Pretrained, load_imagenet_encoder, smp_encoder
from geovision.training.run import Trainer, chip_options, read_polygons, vectorize_options


@dataclass(frozen=True)
class SegTrainOptions:
    """Settings of an smp training run."""

    epochs: int = 40
    batch: int = 8
    lr: float = 1e-3
    device: str | None = None
    seed: int = 0
    class_weights: tuple[float, ...] | None = None
    augment: str = "aerial"
    #: a state dict of the same network to start from (a package's weights.pt); None: from scratch
    weights: Path | None = None
    #: seconds the epochs may take; the run stops before an epoch that would end past it
    time_s: float | None = None


def augmentation(aerial: bool = True, seed: int | None = None) -> Any:
    """Augmentations for nadir imagery: no 'up', so all eight square symmetries are fair.

    With ``aerial``, also a random ground resolution (scale 0.7-1.4) and the
    colour, haze, blur and sensor changes of :func:`.common.aerial_augmentations`.
    Pixels moved in from outside the chip are left out of the loss. ``seed`` makes the draws
    repeatable (albumentations keeps its own random generator, which torch's seed does not reach).
    """
    import albumentations as A

    if aerial:
        geometry = A.Affine(scale=(0.7, 1.4), rotate=(-15, 15), fill_mask=IGNORE, p=0.6)
        pixels = aerial_augmentations()
    else:
        geometry = A.Affine(scale=(0.85, 1.15), rotate=(-10, 10), fill_mask=IGNORE, p=0.5)
        pixels = [
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.7),
            A.GaussNoise(std_range=(0.0, 0.03), p=0.2),
        ]
    return A.Compose([A.SquareSymmetry(p=1.0), geometry, *pixels], seed=seed)


def as_tensor(images: Sequence[np.ndarray], mean: np.ndarray, std: np.ndarray) -> Any:
    """uint8 NHWC chips as a normalised float NCHW tensor."""
    import torch

    x = np.stack(images).astype(np.float32) / 255
    return torch.from_numpy(((x - mean) / std).transpose(0, 3, 1, 2).copy())


def pixel_scores(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[str, float]:
    """Foreground IoU and F1 averaged over classes (pixels of class c against the rest).

    Pixels without data are left out; a boundary band in the truth counts as background.
    """
    seen = truth != IGNORE
    pred, truth = pred[seen], np.where(truth[seen] > n_classes, 0, truth[seen])
    ious, f1s = [], []
    for c in range(1, n_classes + 1):
        p, t = pred == c, truth == c
        tp = float((p & t).sum())
        fp, fn = float((p & ~t).sum()), float((~p & t).sum())
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else 1.0)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return {"iou": round(float(np.mean(ious)), 4), "f1": round(float(np.mean(f1s)), 4)}


def start_network(
    cfg: ModelConfig, images: Sequence[np.ndarray], opts: SegTrainOptions, log: Callable[[str], None]
) -> tuple[Any, ModelConfig, Pretrained | None]:
    """``cfg``'s smp network on its start: ``opts.weights``, else an ImageNet encoder where one is
    packaged, else random. Returns the network, ``cfg`` with the input statistics it takes (the
    encoder's ImageNet ones, or those of the training ``images``), and the ImageNet entry used."""
    import torch

    from geovision.backends.smp import build_network, network_outputs

    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    net = build_network(cfg)
    imagenet = None if opts.weights is not None else load_imagenet_encoder(net, cfg.smp.encoder, log)
    if imagenet is not None:  # the input statistics the encoder learned ImageNet with
        mean, std = np.asarray(imagenet.mean, np.float32), np.asarray(imagenet.std, np.float32)
    else:
        stacked = np.stack(images).astype(np.float32) / 255
        mean = stacked.mean(axis=(0, 1, 2))
        std = np.maximum(stacked.std(axis=(0, 1, 2)), 1e-3)
        del stacked
    rounded = (tuple(round(float(m), 5) for m in mean), tuple(round(float(s), 5) for s in std))
    cfg = replace(cfg, smp=replace(cfg.smp, mean=rounded[0], std=rounded[1]))
    if opts.weights is not None:
        try:  # weights_only: a state dict of tensors, never a pickle that runs code
            start = torch.load(opts.weights, map_location="cpu", weights_only=True)
            net.load_state_dict({k: v.float() for k, v in start.items()})
        except (RuntimeError, AttributeError, pickle.UnpicklingError) as e:
            raise TrainingError(
                f"{opts.weights}: not weights of this network ({cfg.smp.arch}, {cfg.smp.encoder}, "
                f"{cfg.smp.encoder_depth or 5} stages, {network_outputs(cfg)} outputs)"
            ) from e
    return net, cfg, imagenet


@dataclass(frozen=True)
class Fitted:
    """The best epoch of a run: its weights (fp16), validation scores and number; and the run's length."""

    state: dict[str, Any]
    scores: dict[str, float]
    epoch: int
    epochs_run: int
    seconds: float


def fit(
    net: Any,
    n_train: int,
    loss_of: Callable[[list[int]], Any],
    validate: Callable[[], dict[str, float]],
    key: str,
    opts: SegTrainOptions,
    log: Callable[[str], None],
) -> Fitted:
    """Train ``net`` for ``opts.epochs`` (AdamW, one-cycle schedule) or until ``opts.time_s``: each step
    minimises ``loss_of(chip indices)``; each epoch ends with ``validate()``, and the epoch with the
    highest ``key`` is kept."""
    import torch

    optimizer = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=1e-4)
    steps = max(1, n_train // opts.batch) * opts.epochs
    started = time.perf_counter()

    def progress(step: int) -> float:  # of the steps, or of the time when that runs out first
        spent = (time.perf_counter() - started) / opts.time_s if opts.time_s else 0.0
        return min(1.0, max(step / steps, spent))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: one_cycle(progress(step)))
    order = list(range(n_train))
    best: tuple[dict[str, Any], dict[str, float], int] | None = None  # weights, scores, epoch
    epochs_run = 0
    for epoch in range(opts.epochs):
        elapsed = time.perf_counter() - started
        if opts.time_s is not None and epoch and elapsed * (epoch + 1) / epoch > opts.time_s:
            log(f"time: {elapsed / 60:.1f} of {opts.time_s / 60:g} minutes used; stopping after {epoch} epochs")
            break
        epochs_run = epoch + 1
        net.train()
        random.shuffle(order)
        losses = []
        for i in range(0, max(1, len(order) - opts.batch + 1), opts.batch):  # the last partial batch is left out
            loss = loss_of(order[i : i + opts.batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        net.eval()
        scores = validate()
        log(f"epoch {epoch + 1}/{opts.epochs} loss {np.mean(losses):.3f} val {scores}")
        if best is None or scores[key] > best[1][key]:
            best = ({k: v.detach().cpu().half().clone() for k, v in net.state_dict().items()}, scores, epoch + 1)
    assert best is not None
    return Fitted(*best, epochs_run, time.perf_counter() - started)


def one_cycle(done: float, warm: float = 0.3, low: float = 0.04) -> float:
    """The share of the top learning rate at ``done`` (0-1) of a run: up from ``low`` over the first
    ``warm`` of it, then down to nearly nothing, both along a half cosine (Smith's one cycle)."""
    if done < warm:
        return low + (1 - low) * (1 - math.cos(math.pi * done / warm)) / 2
    return 1e-3 + (1 - 1e-3) * (1 + math.cos(math.pi * (done - warm) / (1 - warm))) / 2


def write_package(
    cfg: ModelConfig,
    fitted: Fitted,
    out_dir: Path,
    opts: SegTrainOptions,
    imagenet: Pretrained | None,
    metrics: dict[str, float],
    info: dict[str, Any] | None,
) -> ModelConfig:
    """Write the best weights (fp16 state dict) and model.yaml with how they were made."""
    import torch

    from geovision.backends.device import pick_device

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / "weights.pt"
    torch.save(fitted.state, weights_path)
    run = {
        "epochs": fitted.epochs_run,
        "best_epoch": fitted.epoch,
        "seconds": round(fitted.seconds, 1),
        "device": pick_device(opts.device),
    }
    return package_run(cfg, weights_path, _base(opts.weights, imagenet), run, metrics, info)


class SmpTrainer(Trainer):
    """What the smp trainers (segmenters, centre detectors) share: their network and fit settings."""

    backend = "smp"

    def network(self) -> str:
        return f"{self.spec.arch} ({self.spec.encoder})"

    def smp_options(self, boundary: bool) -> SmpOptions:
        """The network of the package, as the spec gives it."""
        spec, depth = self.spec, self.spec.encoder_depth
        return SmpOptions(
            arch=spec.arch,
            encoder=smp_encoder(spec.encoder),
            encoder_depth=depth,
            decoder_channels=(256, 128, 64, 32, 16)[5 - depth :] if spec.arch in STAGED_DECODERS else None,
            output_stride=spec.output_stride,
            activation="sigmoid" if len(spec.classes) == 1 and not boundary else "softmax",
            boundary=boundary,
        )

    def options(self) -> SegTrainOptions:
        spec = self.spec
        return SegTrainOptions(
            epochs=spec.epochs,
            batch=spec.batch,
            lr=spec.lr,
            device=spec.device,
            seed=spec.seed,
            class_weights=spec.class_weights,
            augment=spec.augment,
            weights=spec.weights,
            time_s=spec.time * 60 if spec.time is not None else None,
        )


class SegmenterTrainer(SmpTrainer):
    """Semantic segmenters: masks of the classes (and an outline band that splits touching objects)."""

    def read(self, report: LabelReport) -> Sequence[ImageShapes]:
        return read_polygons(self.spec, report)

    def cut(self, items: Sequence[Any], staging: Path, val_fraction: float) -> SegChips:
        spec = self.spec
        return chip_segmentation_dataset(items, chip_options(spec, val_fraction), spec.boundary_px, len(spec.classes))

    def config(self) -> ModelConfig:
        spec, res = self.spec, self.spec.resolution or 0.0
        return replace(
            super().config(),
            overlap=spec.overlap if spec.overlap is not None else spec.tile_size // 4,
            confidence=spec.confidence if spec.confidence is not None else 0.5,
            iou=0.5,
            smp=self.smp_options(boundary=spec.boundary_px > 0),
            vectorize=vectorize_options(spec, VectorizeOptions(simplify_m=res, grow_m=spec.boundary_px * res)),
        )

    def fit(self, chips: SegChips, cfg: ModelConfig, package: Path, info: dict[str, Any]) -> ModelConfig:
        """Dice + cross-entropy (or per-class BCE) on the chips; the epoch of the best validation pixel IoU."""
        import segmentation_models_pytorch as smp
        import torch

        from geovision.backends.device import pick_device
        from geovision.backends.smp import activation, network_outputs

        opts, log = self.options(), self.log
        net, cfg, imagenet = start_network(cfg, chips.train_images, opts, log)
        mean, std = np.asarray(cfg.smp.mean, np.float32), np.asarray(cfg.smp.std, np.float32)
        device = pick_device(opts.device)
        net = net.to(device)
        n_classes = len(cfg.classes)
        sigmoid = activation(cfg) == "sigmoid"
        n_net = network_outputs(cfg)
        weights = torch.tensor(opts.class_weights, device=device, dtype=torch.float32) if opts.class_weights else None
        if sigmoid:
            dice = smp.losses.DiceLoss("multilabel", from_logits=True)
            bce = torch.nn.BCEWithLogitsLoss(pos_weight=weights, reduction="none")
        else:
            if weights is not None and len(weights) != n_net:
                raise TrainingError(
                    f"class_weights needs {n_net} values (background, classes, boundary), not {len(weights)}"
                )
            dice = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=IGNORE)
            ce = torch.nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE)
        aug = augmentation(opts.augment == "aerial", opts.seed)

        def loss_of(batch: list[int]) -> Any:
            pairs = [aug(image=chips.train_images[k], mask=chips.train_masks[k]) for k in batch]
            x = as_tensor([p["image"] for p in pairs], mean, std).to(device)
            y = torch.from_numpy(np.stack([p["mask"] for p in pairs]).astype(np.int64)).to(device)
            logits = net(x)
            if sigmoid:  # no data counts for nothing: masked out of both losses
                keep = (y != IGNORE).unsqueeze(1).float()
                target = torch.nn.functional.one_hot(y.clamp(max=n_classes), n_classes + 1)[..., 1:]
                target = target.permute(0, 3, 1, 2).float()
                per_pixel = bce(logits, target) * keep
                return dice(logits * keep - 20 * (1 - keep), target * keep) + per_pixel.sum() / keep.sum().clamp(min=1)
            return dice(logits, y) + ce(logits, y)

        fitted = fit(net, chips.train, loss_of, lambda: _validate(net, chips, mean, std, cfg, device), "iou", opts, log)
        metrics = {"pixel_iou": fitted.scores["iou"], "pixel_f1": fitted.scores["f1"]}
        return write_package(cfg, fitted, package, opts, imagenet, metrics, info)


def _base(weights: Path | None, imagenet: Pretrained | None) -> str:
    """Where a run started, for the package's record."""
    if weights is not None:
        return start_weights(weights)
    if imagenet is not None:
        return f"encoder from ImageNet: {imagenet.package} ({imagenet.licence}, sha256 {imagenet.sha256})"
    return "from scratch"


def _validate(
    net: Any, chips: SegChips, mean: np.ndarray, std: np.ndarray, cfg: ModelConfig, device: str
) -> dict[str, float]:
    import torch

    from geovision.backends.smp import activation

    preds = []
    with torch.inference_mode():
        for i in range(0, len(chips.val_images), 8):
            logits = net(as_tensor(chips.val_images[i : i + 8], mean, std).to(device)).float()
            if activation(cfg) == "softmax":
                best = logits.argmax(1).cpu().numpy()
                preds.append(np.where(best > len(cfg.classes), 0, best))  # the boundary band is background
            else:
                p = logits.sigmoid()
                best = p.max(1)
                preds.append(np.where(best.values.cpu().numpy() >= cfg.confidence, best.indices.cpu().numpy() + 1, 0))
    return pixel_scores(np.concatenate(preds), np.stack(chips.val_masks), len(cfg.classes))
