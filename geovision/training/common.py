"""What the YOLO and smp trainers share: augmentations, and the package a finished run becomes.

Every trainer's fit (:class:`geovision.training.run.Trainer`) starts a network
(from scratch, from ImageNet, or from a model's weights), fits it, and hands its
best weights to :func:`package_run`, which records how they were made in the
model YAML. The YOLO trainer fits with ultralytics' loop, the smp trainers
(segmenters and centre detectors) with :func:`geovision.training.smp.fit`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from geovision.config import ModelConfig, config_to_dict, sha256_file


def aerial_augmentations() -> list[Any]:
    """Pixel-level augmentations for imagery from other sensors, seasons and flights.

    Coarser sensors (an aerial at 0.3 m read by a 0.1 m model) are mimicked by
    downscaling and upscaling back; haze, blur, contrast, gamma and colour
    balance vary as they do between flights. Geometry is left to the trainer
    (flips, 90-degree turns, random scale, which varies the ground resolution).
    """
    import albumentations as A

    return [
        A.Downscale(scale_range=(0.3, 0.9), p=0.3),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5))], p=0.15),
        A.RandomFog(fog_coef_range=(0.05, 0.25), alpha_coef=0.3, p=0.1),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.3, p=0.5),
        A.RandomGamma(gamma_limit=(70, 150), p=0.3),
        A.RGBShift(r_shift_limit=15, g_shift_limit=15, b_shift_limit=15, p=0.3),
        A.CLAHE(p=0.05),
        A.ToGray(p=0.05),
        A.GaussNoise(std_range=(0.0, 0.04), p=0.15),
    ]


def start_weights(path: Path) -> str:
    """The weights a run started from, by file name and content (the path is this machine's)."""
    return f"{path.parent.name}/{path.name} (sha256 {sha256_file(path)})"


def write_model_yaml(cfg: ModelConfig, path: Path) -> None:
    """Write ``cfg`` as a model YAML whose weights path is relative to it."""
    data = config_to_dict(cfg, relative_to=path.parent.resolve())
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def package_run(
    cfg: ModelConfig,
    weights: Path,
    base: str,
    run: dict[str, Any],
    metrics: dict[str, Any],
    info: dict[str, Any] | None = None,
) -> ModelConfig:
    """The package of a finished run, whose ``weights`` lie in its folder: ``cfg`` with their sha256,
    where the run started (``base``), how it ran (epochs, seconds, device ...; ``info``: the data) and
    its validation ``metrics``, written as the folder's model.yaml."""
    packaged = replace(
        cfg,
        weights=weights.resolve(),
        sha256=sha256_file(weights),
        record={**cfg.record, "training": {"base": base, **run, **(info or {})}, "metrics": metrics},
    )
    write_model_yaml(packaged, weights.parent / "model.yaml")
    return packaged
