"""What the YOLO and smp trainers share: augmentations and writing the package."""

from __future__ import annotations

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
