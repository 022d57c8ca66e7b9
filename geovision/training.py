"""Training detectors from rasters and labels into model packages.

Chips are cut with the same reader, resampling and normalisation as
inference (:mod:`geovision.raster`), so the model sees at training time the
very pixels it will see in ``geovision detect``. The validation split is
spatial: whole blocks of each raster are held out, and a chip that touches a
held-out block and a training block is dropped, so no pixel is in both.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from geovision.labels import ImageLabels
from geovision.models import ModelConfig, config_to_dict, sha256_file
from geovision.raster import Normalization, open_raster, plan_read, read_tile
from geovision.tiling import Tile, TileGrid


@dataclass(frozen=True)
class ChipOptions:
    """How chips are cut; sizes in model-grid pixels."""

    tile_size: int
    resolution_m: float | None
    in_channels: int = 3
    bands: tuple[int, ...] | None = None
    normalization: Normalization = field(default_factory=Normalization)
    accept_grayscale: bool = False
    stride: int | None = None
    val_fraction: float = 0.2
    min_visible: float = 0.4
    max_empty_share: float = 0.1
    native_resolution_m: float | None = None
    seed: int = 0


@dataclass
class ChipSet:
    """Counts of what chipping wrote."""

    train: int = 0
    val: int = 0
    boxes_train: int = 0
    boxes_val: int = 0
    dropped_straddling: int = 0


def val_blocks(n_rows: int, n_cols: int, fraction: float, rng: random.Random) -> set[tuple[int, int]]:
    """Blocks (row, col) held out for validation: at least one when there are two or more."""
    cells = [(r, c) for r in range(n_rows) for c in range(n_cols)]
    if len(cells) < 2 or fraction <= 0:
        return set()
    k = max(1, round(fraction * len(cells)))
    return set(rng.sample(cells, k))


def chip_detection_dataset(
    items: Sequence[ImageLabels], out_dir: Path, opts: ChipOptions, class_names: Sequence[str]
) -> ChipSet:
    """Write a YOLO-format chip dataset (images/, labels/, data.yaml) under ``out_dir``.

    Each raster is cut into blocks of ``tile_size``; a seeded share of them is
    held out. Training chips overlap (``stride``), and each is also written
    transposed, which with YOLO's two flips gives all eight 90-degree
    orientations of nadir imagery.
    """
    from PIL import Image

    rng = random.Random(opts.seed)
    stats = ChipSet()
    empty_pool: dict[str, list[tuple[np.ndarray, str]]] = {"train": [], "val": []}
    for split in ("train", "val"):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "val": 0}

    def write(split: str, name: str, image: np.ndarray, lines: list[str]) -> None:
        Image.fromarray(image).save(out_dir / "images" / split / f"{name}.png")
        (out_dir / "labels" / split / f"{name}.txt").write_text("".join(lines))
        counts[split] += 1

    for n, item in enumerate(items):
        with open_raster(item.image) as ds:
            plan = plan_read(
                ds, opts.resolution_m, opts.in_channels, opts.bands, opts.normalization,
                opts.accept_grayscale, pixel_coords=True, native_resolution_m=opts.native_resolution_m,
            )
            boxes = item.boxes.copy()
            boxes[:, [0, 2]] /= plan.scale_x
            boxes[:, [1, 3]] /= plan.scale_y
            t = opts.tile_size
            blocks = TileGrid(plan.width, plan.height, t, 0)
            held = val_blocks(blocks.n_rows, blocks.n_cols, opts.val_fraction, rng)
            stride = opts.stride or t // 2
            for y0 in range(0, max(1, plan.height - t // 4), stride):
                for x0 in range(0, max(1, plan.width - t // 4), stride):
                    tile = Tile(y0 // stride, x0 // stride, x0, y0, t)
                    split = _split_of(tile, blocks, held)
                    if split is None:
                        stats.dropped_straddling += 1
                        continue
                    td = read_tile(ds, plan, tile)
                    if not td.valid.any():
                        continue
                    lines = _yolo_lines(boxes, item.classes, tile, opts.min_visible)
                    name = f"{n:03d}_{item.image.stem}_{y0}_{x0}"
                    if not lines:
                        empty_pool[split].append((td.image, name))
                        continue
                    write(split, name, td.image, lines)
                    if split == "train":
                        write(split, name + "_T", td.image.transpose(1, 0, 2), _transpose_lines(lines))
                        stats.boxes_train += 2 * len(lines)
                    else:
                        stats.boxes_val += len(lines)
    for split, pool in empty_pool.items():
        cap = int(opts.max_empty_share * counts[split] / max(1e-6, 1 - opts.max_empty_share))
        rng.shuffle(pool)
        for image, name in pool[:cap]:
            write(split, name, image, [])
    stats.train, stats.val = counts["train"], counts["val"]
    data = {
        "path": str(out_dir.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": {i: c for i, c in enumerate(class_names)},
    }
    (out_dir / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return stats


def _split_of(tile: Tile, blocks: TileGrid, held: set[tuple[int, int]]) -> str | None:
    """'val' if the chip lies only in held-out blocks, 'train' if in none, else None."""
    t = blocks.tile_size
    touched = {
        (r, c)
        for r in range(tile.y0 // t, (tile.y1 - 1) // t + 1)
        for c in range(tile.x0 // t, (tile.x1 - 1) // t + 1)
        if r < blocks.n_rows and c < blocks.n_cols
    }
    inside = touched & held
    if not inside:
        return "train"
    return "val" if inside == touched else None


def _yolo_lines(boxes: np.ndarray, classes: np.ndarray, tile: Tile, min_visible: float) -> list[str]:
    """YOLO label lines for the boxes enough of which is visible in ``tile``."""
    if len(boxes) == 0:
        return []
    x1 = np.clip(boxes[:, 0], tile.x0, tile.x1)
    y1 = np.clip(boxes[:, 1], tile.y0, tile.y1)
    x2 = np.clip(boxes[:, 2], tile.x0, tile.x1)
    y2 = np.clip(boxes[:, 3], tile.y0, tile.y1)
    full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    seen = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep = (seen > 0) & (seen >= min_visible * full)
    s = float(tile.size)
    return [
        f"{classes[i]} {((x1[i] + x2[i]) / 2 - tile.x0) / s:.6f} {((y1[i] + y2[i]) / 2 - tile.y0) / s:.6f} "
        f"{(x2[i] - x1[i]) / s:.6f} {(y2[i] - y1[i]) / s:.6f}\n"
        for i in np.flatnonzero(keep)
    ]


def _transpose_lines(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        c, x, y, w, h = line.split()
        out.append(f"{c} {y} {x} {h} {w}\n")
    return out


@dataclass(frozen=True)
class DetectTrainOptions:
    """Settings of a YOLO training run."""

    epochs: int = 100
    batch: int = 16
    model: str = "yolo11n.yaml"
    patience: int = 50
    device: str | None = None
    seed: int = 0
    workers: int = 0
    lr0: float = 0.01
    extra: dict[str, Any] = field(default_factory=dict)


def train_yolo(
    data_yaml: Path,
    cfg: ModelConfig,
    out_dir: Path,
    opts: DetectTrainOptions,
    log: Callable[[str], None] = lambda s: None,
) -> ModelConfig:
    """Train a YOLO detector on a chip dataset and write a model package to ``out_dir``.

    ``cfg`` carries everything but the weights (classes, tile size, resolution,
    bands, normalisation); the returned config is the package's model.yaml.
    """
    from geovision.backends.yolo import import_ultralytics
    from geovision.device import pick_device

    ultralytics = import_ultralytics()
    device = pick_device(opts.device)
    model = ultralytics.YOLO(opts.model)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geovision-train-") as tmp:
        args: dict[str, Any] = dict(
            data=str(data_yaml), epochs=opts.epochs, imgsz=cfg.tile_size, batch=opts.batch,
            device=device, workers=opts.workers, seed=opts.seed, deterministic=True,
            project=tmp, name="run", exist_ok=True, plots=False, verbose=False,
            pretrained=False, amp=device != "cpu", patience=opts.patience, lr0=opts.lr0,
            fliplr=0.5, flipud=0.5, degrees=0.0, scale=0.3, mosaic=1.0, hsv_v=0.3,
        )
        args.update(opts.extra)
        model.train(**args)
        seconds = time.perf_counter() - started
        run = Path(tmp) / "run"
        best = run / "weights" / "best.pt"
        if not best.exists():
            best = run / "weights" / "last.pt"
        metrics = _last_metrics(run / "results.csv")
        out_dir.mkdir(parents=True, exist_ok=True)
        weights = out_dir / "weights.pt"
        shutil.copyfile(best, weights)
    packaged = replace(
        cfg,
        weights=weights.resolve(),
        sha256=sha256_file(weights),
        backend="yolo",
        task="detect",
        extra={
            **cfg.extra,
            "training": {"base": opts.model, "epochs": opts.epochs, "seconds": round(seconds, 1), "device": device},
            "metrics": metrics,
        },
    )
    write_model_yaml(packaged, out_dir / "model.yaml")
    log(f"model package written to {out_dir} ({json.dumps(metrics)})")
    return packaged


def _last_metrics(results_csv: Path) -> dict[str, float]:
    """Best-epoch validation metrics from ultralytics' results.csv."""
    import csv

    if not results_csv.exists():
        return {}
    with open(results_csv) as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        return {}
    key = "metrics/mAP50-95(B)"
    best = max(rows, key=lambda r: float(r.get(key, 0) or 0))
    out = {"epoch": int(float(best["epoch"]))}
    for k in ("metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", key):
        if k in best:
            out[k.split("/")[1].replace("(B)", "")] = round(float(best[k]), 4)
    return out


def write_model_yaml(cfg: ModelConfig, path: Path) -> None:
    """Write ``cfg`` as a model YAML whose weights path is relative to it."""
    data = config_to_dict(cfg, relative_to=path.parent.resolve())
    path.write_text(yaml.safe_dump(data, sort_keys=False))
