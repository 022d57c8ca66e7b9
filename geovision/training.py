"""Training detectors from rasters and labels into model packages.

Chips are cut with the same reader, resampling and normalisation as
inference (:mod:`geovision.raster`), so the model sees at training time the
very pixels it will see in ``geovision detect``. The validation split is
spatial: whole blocks of each raster are held out, and a chip that touches a
held-out block and a training block is dropped, so no pixel is in both.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import yaml

from geovision.errors import OutputError, TrainingError, require
from geovision.labels import ImageLabels, LabelReport, read_pixel_labels, read_vector_labels, read_vector_shapes
from geovision.models import ModelConfig, config_to_dict, resolve_model, sha256_file
from geovision.raster import Normalization, ReadPlan, TileData, open_raster, plan_read, read_tile
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
class SplitLog:
    """Where the validation blocks are, and how many chips straddled the split and were dropped."""

    val_regions: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)
    dropped_straddling: int = 0


@dataclass
class ChipSet:
    """Counts of what chipping wrote."""

    train: int = 0
    val: int = 0
    boxes_train: int = 0
    boxes_val: int = 0
    split: SplitLog = field(default_factory=SplitLog)


def chip_plan(ds: rasterio.io.DatasetReader, opts: ChipOptions) -> ReadPlan:
    """The read plan for chipping: inference's, accepting rasters without georeference."""
    return plan_read(
        ds,
        opts.resolution_m,
        opts.in_channels,
        opts.bands,
        opts.normalization,
        opts.accept_grayscale,
        pixel_coords=True,
        native_resolution_m=opts.native_resolution_m,
    )


def cut_chips(
    ds: rasterio.io.DatasetReader,
    plan: ReadPlan,
    label_centres: np.ndarray,
    opts: ChipOptions,
    rng: random.Random,
    log: SplitLog,
) -> Iterator[tuple[str, TileData]]:
    """Chips of one raster as ('train' | 'val', tile), the split by held-out blocks.

    ``label_centres`` (n, 2) are label centres in model-grid pixels: held-out
    blocks are drawn among blocks holding labels, or validation would
    measure nothing. Chips touching both splits, and chips without a valid
    pixel, are left out.
    """
    t = opts.tile_size
    blocks = TileGrid(plan.width, plan.height, t, 0)
    cells = np.asarray(label_centres, dtype=np.float64).reshape(-1, 2) // t
    labelled = {(int(r), int(c)) for c, r in cells if 0 <= r < blocks.n_rows and 0 <= c < blocks.n_cols}
    held = val_blocks(list(labelled), opts.val_fraction, rng)
    log.val_regions += [(Path(plan.path).name, b) for b in held_regions(plan, blocks, held)]
    stride = opts.stride or t // 2
    for r, y0 in enumerate(chip_starts(plan.height, t, stride)):
        for c, x0 in enumerate(chip_starts(plan.width, t, stride)):
            tile = Tile(r, c, x0, y0, t)
            split = _split_of(tile, blocks, held)
            if split is None:
                log.dropped_straddling += 1
                continue
            td = read_tile(ds, plan, tile)
            if td.valid.any():
                yield split, td


def chip_starts(length: int, tile: int, stride: int) -> list[int]:
    """Chip offsets along one axis: evenly spaced, at most ``stride`` apart, the last one
    ending at the image's edge, so no chip holds padding unless the image is smaller than a chip."""
    if length <= tile:
        return [0]
    n = -(-(length - tile) // stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def val_blocks(cells: Sequence[tuple[int, int]], fraction: float, rng: random.Random) -> set[tuple[int, int]]:
    """Blocks (row, col) held out for validation: at least one when there are two or more.

    An image of one labelled block (a small plot) goes to validation whole with
    probability ``fraction``, so that sets of many small plots are split by plot.
    """
    cells = sorted(cells)
    if len(cells) == 1 and fraction > 0:
        return set(cells) if rng.random() < fraction else set()
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
            plan = chip_plan(ds, opts)
            boxes = item.boxes.copy()
            boxes[:, [0, 2]] /= plan.scale_x
            boxes[:, [1, 3]] /= plan.scale_y
            centres = np.c_[(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2]
            for split, td in cut_chips(ds, plan, centres, opts, rng, stats.split):
                tile = td.tile
                lines = _yolo_lines(boxes, item.classes, tile, opts.min_visible)
                name = f"{n:03d}_{item.image.stem}_{tile.y0}_{tile.x0}"
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


def held_regions(
    plan: ReadPlan, blocks: TileGrid, held: set[tuple[int, int]]
) -> list[tuple[float, float, float, float]]:
    """Bounds (minx, miny, maxx, maxy) of held-out blocks in the raster's CRS (or pixels without one)."""
    t = blocks.tile_size
    out = []
    for r, c in sorted(held):
        x0, y0 = plan.transform @ (c * t, r * t)
        x1, y1 = plan.transform @ (min((c + 1) * t, plan.width), min((r + 1) * t, plan.height))
        out.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    return out


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
    augment: Literal["aerial", "none"] = "aerial"
    extra: dict[str, Any] = field(default_factory=dict)
    #: load a ``.pt`` start even if it names more than network classes (see backends.yolo.check_checkpoint)
    trusted: bool = False


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


def train_yolo(
    data_yaml: Path,
    cfg: ModelConfig,
    out_dir: Path,
    opts: DetectTrainOptions,
    log: Callable[[str], None] = lambda s: None,
    info: dict[str, Any] | None = None,
) -> ModelConfig:
    """Train a YOLO detector on a chip dataset and write a model package to ``out_dir``.

    ``cfg`` carries everything but the weights (classes, tile size, resolution,
    bands, normalisation); the returned config is the package's model.yaml.
    """
    from geovision.backends.yolo import import_ultralytics, load_yolo
    from geovision.device import pick_device

    ultralytics = import_ultralytics()
    device = pick_device(opts.device)
    start = Path(opts.model) if opts.model.endswith(".pt") else None  # weights to start from, else a network YAML
    model = load_yolo(start, opts.trusted) if start else ultralytics.YOLO(opts.model)

    ran = {"epochs": 0}  # a time limit (options: time) changes the number of epochs on the way

    def on_epoch(trainer: Any) -> None:
        m = {k.split("/")[-1]: round(float(v), 3) for k, v in (trainer.metrics or {}).items() if "mAP" in k}
        done = trainer.epoch + 1
        ran["epochs"] = min(done, trainer.epochs)
        log(f"epoch {done}/{trainer.epochs} {m}" if done <= trainer.epochs else f"best weights {m}")

    model.add_callback("on_fit_epoch_end", on_epoch)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geovision-train-") as tmp:
        args: dict[str, Any] = dict(
            data=str(data_yaml),
            epochs=opts.epochs,
            imgsz=cfg.tile_size,
            batch=opts.batch,
            device=device,
            workers=opts.workers,
            seed=opts.seed,
            deterministic=True,
            project=tmp,
            name="run",
            exist_ok=True,
            plots=False,
            verbose=False,
            # a .pt start is used only with pretrained left on (False rebuilds the network from its YAML)
            pretrained=start is not None,
            amp=device != "cpu",
            patience=opts.patience,
            lr0=opts.lr0,
            fliplr=0.5,
            flipud=0.5,
            degrees=0.0,
            scale=0.3,
            mosaic=1.0,
            hsv_v=0.3,
        )
        if device != "cpu":  # the GPU waits on chips otherwise: load them in worker processes
            args.update(workers=max(opts.workers, min(8, os.cpu_count() or 1)))
        if opts.augment == "aerial":
            # random ground resolution around the model's (+-50 %) and stronger colour changes
            args.update(scale=0.5, hsv_h=0.02, hsv_s=0.5, hsv_v=0.4, augmentations=aerial_augmentations())
        args.update(opts.extra)
        with _amp_check_offline():
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
            "training": {
                "base": start_weights(start) if start else opts.model,
                "epochs": ran["epochs"] or opts.epochs,
                "augment": opts.augment,
                "seconds": round(seconds, 1),
                "device": device,
                **(info or {}),
            },
            "metrics": metrics,
        },
    )
    write_model_yaml(packaged, out_dir / "model.yaml")
    log(f"validation: {json.dumps(metrics)}")
    return packaged


def start_weights(path: Path) -> str:
    """The weights a run started from, by file name and content (the path is this machine's)."""
    return f"{path.parent.name}/{path.name} (sha256 {sha256_file(path)})"


@contextlib.contextmanager
def _amp_check_offline() -> Iterator[None]:
    """Skip ultralytics' mixed-precision self-test for the length of one training run.

    On CUDA it downloads a pretrained model from GitHub to compare fp16 with
    fp32 output, which hangs or fails offline. Mixed precision is used as on
    any recent GPU; the patched name is restored when the run ends.
    """
    import ultralytics.engine.trainer as trainer

    saved = trainer.check_amp
    trainer.check_amp = lambda model: True
    try:
        yield
    finally:
        trainer.check_amp = saved


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
    out: dict[str, float] = {"epoch": int(float(best["epoch"]))}
    for k in ("metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", key):
        if k in best:
            out[k.split("/")[1].replace("(B)", "")] = round(float(best[k]), 4)
    return out


def write_model_yaml(cfg: ModelConfig, path: Path) -> None:
    """Write ``cfg`` as a model YAML whose weights path is relative to it."""
    data = config_to_dict(cfg, relative_to=path.parent.resolve())
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@dataclass(frozen=True)
class TrainSpec:
    """A whole training run, as given on the command line or in configs/training/*.yaml.

    ``labels`` holds one file per image, or one file for all images (vector
    layers, or a DeepForest CSV with an image_path column). Pixel labels
    (Pascal VOC .xml, DeepForest .csv) need ``image_resolution`` when the
    image has no georeference and the model's resolution differs.
    """

    task: Literal["detect", "segment"]
    images: tuple[Path, ...]
    labels: tuple[Path, ...]
    output: Path
    classes: tuple[str, ...]
    #: ground metres per model pixel; None: that of the training rasters (see :func:`training_resolution`)
    resolution: float | None = None
    tile_size: int = 640
    overlap: int | None = None
    epochs: int = 100
    batch: int = 16
    model_size: str = "n"
    weights: Path | None = None
    class_field: str | None = None
    image_resolution: float | None = None
    val_fraction: float = 0.2
    device: str | None = None
    seed: int = 0
    name: str | None = None
    confidence: float | None = None
    overwrite: bool = False
    # segmentation
    arch: str = "Unet"
    encoder: str = "resnet34"
    encoder_depth: int = 5
    lr: float = 1e-3
    class_weights: tuple[float, ...] | None = None
    grayscale: bool = False
    vectorize: dict[str, Any] = field(default_factory=dict)
    #: half-width in model pixels of the outline band a segmenter learns to separate touching objects (0: none)
    boundary_px: float = 0.0
    #: distance between training chips in model pixels (default: half a tile)
    chip_stride: int | None = None
    #: one site (forest, city, survey) per image: what leave-one-site-out evaluation holds out
    sites: tuple[str, ...] | None = None
    #: colour, haze, blur and ground-resolution augmentation for aerial imagery ("none" to turn off)
    augment: Literal["aerial", "none"] = "aerial"
    # passed on to ultralytics' trainer as they are
    options: dict[str, Any] = field(default_factory=dict)
    #: start from a pickled ``weights`` file that names more than network classes (``--trust-model``)
    trust_weights: bool = False


TRAIN_SPEC_FIELDS = {f for f in TrainSpec.__dataclass_fields__}


def load_train_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training YAML as a mapping; relative paths in it are resolved against the file.

    Besides flat ``images``/``labels`` lists, a config may list ``datasets``,
    each with a ``site`` name, an ``images`` glob pattern (or list) and
    ``labels``: one layer for all its images, or a folder holding one labels
    file per image, named like the image (``PLOT.tif`` -> ``PLOT.xml``).
    Images with no labels file in such a folder are unlabelled and left out.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TrainingError(f"{p}: cannot read training config ({e})") from e
    if not isinstance(raw, dict):
        raise TrainingError(f"{p}: training config must be a mapping")
    base = p.resolve().parent
    for key in ("images", "labels", "output", "weights"):
        v = raw.get(key)
        if isinstance(v, str):
            raw[key] = os.path.normpath(base / v)
        elif isinstance(v, list):
            raw[key] = [os.path.normpath(base / x) for x in v]
    if "datasets" in raw:
        if raw.get("images") or raw.get("labels"):
            raise TrainingError(f"{p}: give either datasets or images/labels, not both")
        images, labels, sites = expand_datasets(raw.pop("datasets"), base)
        raw["images"], raw["labels"], raw["sites"] = images, labels, sites
    return raw


LABEL_SUFFIXES = (".xml", ".csv", ".geojson", ".gpkg", ".shp", ".json")


def expand_datasets(datasets: Any, base: Path) -> tuple[list[str], list[str], list[str]]:
    """(images, labels, sites), one entry per image, from a config's ``datasets`` list."""
    import glob

    if not isinstance(datasets, list) or not datasets:
        raise TrainingError("datasets must be a list of {site, images, labels}")
    images: list[str] = []
    labels: list[str] = []
    sites: list[str] = []
    for n, d in enumerate(datasets):
        if not isinstance(d, dict) or not d.get("images") or not d.get("labels"):
            raise TrainingError(f"datasets[{n}] needs images and labels")
        site = str(d.get("site", f"dataset{n}"))
        patterns = d["images"] if isinstance(d["images"], list) else [d["images"]]
        found = sorted({os.path.normpath(f) for pat in patterns for f in glob.glob(str(base / pat))})
        if not found:
            raise TrainingError(f"datasets[{n}] ({site}): no image matches {', '.join(map(str, patterns))}")
        lab = Path(os.path.normpath(base / d["labels"]))
        folder = lab.is_dir()
        for image in found:
            match: Path | None = lab
            if folder:
                named = (lab / (Path(image).stem + suffix) for suffix in LABEL_SUFFIXES)
                match = next((q for q in named if q.is_file()), None)
            if match is None:
                continue  # unlabelled image of this site
            labels.append(str(match))
            images.append(image)
            sites.append(site)
        if site not in sites:
            raise TrainingError(f"datasets[{n}] ({site}): no image has a labels file in {lab}")
    return images, labels, sites


def spec_from_mapping(raw: dict[str, Any]) -> TrainSpec:
    """A TrainSpec from a config mapping (YAML keys use - or _ alike)."""
    raw = {k.replace("-", "_"): v for k, v in raw.items() if v is not None}
    unknown = set(raw) - TRAIN_SPEC_FIELDS
    if unknown:
        raise TrainingError(f"unknown training settings: {', '.join(sorted(unknown))}")
    missing = [k for k in ("task", "images", "labels", "output", "classes") if not raw.get(k)]
    if missing:
        raise TrainingError(f"training needs {', '.join('--' + m for m in missing)}")
    as_paths = lambda v: tuple(Path(p) for p in ([v] if isinstance(v, (str, Path)) else v))  # noqa: E731
    raw["images"], raw["labels"] = as_paths(raw["images"]), as_paths(raw["labels"])
    raw["output"] = Path(raw["output"])
    if raw.get("class_weights"):
        raw["class_weights"] = tuple(float(w) for w in raw["class_weights"])
    raw["classes"] = tuple(str(c) for c in ([raw["classes"]] if isinstance(raw["classes"], str) else raw["classes"]))
    if raw.get("weights"):
        raw["weights"] = Path(raw["weights"])
    if raw.get("sites"):
        raw["sites"] = tuple(str(x) for x in raw["sites"])
        if len(raw["sites"]) != len(raw["images"]):
            raise TrainingError(f"give one site per image ({len(raw['images'])}), not {len(raw['sites'])}")
    return TrainSpec(**raw)


def without_sites(spec: TrainSpec, sites: Sequence[str], output: Path) -> TrainSpec:
    """``spec`` less the images of ``sites``: the model scored on them in leave-one-site-out."""
    all_sites = spec.sites or ()
    unknown = [s for s in sites if s not in all_sites]
    if unknown:
        raise TrainingError(f"no site {', '.join(map(repr, unknown))} in this training config")
    keep = [i for i, s in enumerate(all_sites) if s not in sites]
    labels = spec.labels if len(spec.labels) == 1 else tuple(spec.labels[i] for i in keep)
    return replace(
        spec,
        images=tuple(spec.images[i] for i in keep),
        labels=labels,
        sites=tuple(all_sites[i] for i in keep),
        output=output,
    )


def train(spec: TrainSpec, log: Callable[[str], None] = lambda s: None) -> ModelConfig:
    """Run ``spec``: read labels, cut chips, train, and write the model package.

    The package is built in a temporary folder beside ``spec.output`` and
    renamed into place at the end, so a failed run leaves nothing behind.
    """
    network = "ultralytics" if spec.task == "detect" else "segmentation_models_pytorch"
    require("training", "torch", "torch", "albumentations", network)
    out = spec.output
    if out.exists() and not spec.overwrite:
        raise OutputError(f"{out} already exists; pass --overwrite to replace it")
    if not out.parent.resolve().is_dir():
        raise OutputError(f"{out}: folder {out.parent} does not exist")
    for p in (*spec.images, *spec.labels):
        if not p.is_file():
            raise TrainingError(f"{p}: no such file")
    if len(spec.labels) not in (1, len(spec.images)):
        raise TrainingError(f"give one labels file, or one per image ({len(spec.images)}), not {len(spec.labels)}")
    if spec.task == "detect" and spec.weights and spec.weights.suffix == ".pt" and not spec.trust_weights:
        from geovision.backends.yolo import check_checkpoint

        check_checkpoint(spec.weights)  # before any work: a start that would run code is refused
    if spec.resolution is None:
        spec = replace(spec, resolution=training_resolution(spec.images, spec.image_resolution, log))
    report = LabelReport()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        package = staging / "package"
        if spec.task == "segment":
            _train_segmenter(spec, report, package, log)
        else:
            _train_detector(spec, report, staging, package, log)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(package, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return resolve_model(out / "model.yaml")


def training_resolution(
    images: Sequence[Path], image_resolution: float | None, log: Callable[[str], None] = lambda s: None
) -> float:
    """The model resolution when none is given: the training rasters' ground resolution (metres on the
    ground, also for rasters in degrees or Web Mercator); their median when they differ, said in ``log``."""
    from geovision.raster import ground_pixel_size_m

    sizes = []
    for image in images:
        with open_raster(image) as ds:
            if ds.crs is None:
                if image_resolution is None:
                    raise TrainingError(f"{image}: no georeference; give --resolution (or image_resolution)")
                sizes.append(image_resolution)
            else:
                dx, dy = ground_pixel_size_m(ds.crs, ds.transform, ds.width, ds.height)
                sizes.append(math.sqrt(dx * dy))
    chosen = round(float(np.median(sizes)), 3)
    lo, hi = min(sizes), max(sizes)
    if hi / lo > 1.05:
        log(f"resolution: the rasters range from {lo:.3g} to {hi:.3g} m per pixel; training at their median, "
            f"{chosen:g} m (give --resolution to choose)")  # fmt: skip
    else:
        log(f"resolution: {chosen:g} m per pixel, that of the rasters")
    return chosen


def _check_labels(report: LabelReport, log: Callable[[str], None]) -> None:
    log(f"labels: {report.summary()}")
    if report.used == 0:
        raise TrainingError(f"no usable labels ({report.summary()}); check the labels' CRS, classes and --class-field")


def _data_summary(spec: TrainSpec) -> str:
    """A few words on the training data for a model's description."""
    if spec.sites:
        return f"{len(spec.images)} images of {', '.join(sorted(set(spec.sites)))}"
    names = [p.name for p in spec.images]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _data_info(spec: TrainSpec, report: LabelReport, **counts: int) -> dict[str, Any]:
    """What the model was trained on, recorded in its model.yaml."""
    return {
        "images": [str(p) for p in spec.images],
        "labels": [str(p) for p in spec.labels],
        "sites": sorted(set(spec.sites)) if spec.sites else None,
        "labels_used": report.used,
        "labels_dropped": dict(report.dropped),
        **counts,
        "split": f"spatial blocks of {spec.tile_size} px, {spec.val_fraction:.0%} held out, seed {spec.seed}",
    }


def _regions_yaml(regions: list[tuple[str, tuple[float, float, float, float]]]) -> list[dict[str, Any]]:
    return [{"image": name, "bounds": [round(float(v), 3) for v in b]} for name, b in regions]


def _chip_options(spec: TrainSpec) -> ChipOptions:
    return ChipOptions(
        tile_size=spec.tile_size,
        resolution_m=spec.resolution,
        val_fraction=spec.val_fraction,
        native_resolution_m=spec.image_resolution,
        seed=spec.seed,
        accept_grayscale=spec.grayscale,
        stride=spec.chip_stride,
    )


def _no_chips(train: int, val: int) -> TrainingError:
    which = "training" if train == 0 else "validation"
    return TrainingError(
        f"no {which} chips with labels ({train} train, {val} validation); the images are too small for "
        "this tile size and resolution, or hold too few labelled blocks to split"
    )


def _train_detector(
    spec: TrainSpec, report: LabelReport, staging: Path, package: Path, log: Callable[[str], None]
) -> None:
    items = read_labels(spec, report)
    _check_labels(report, log)
    overlap = spec.overlap if spec.overlap is not None else spec.tile_size // 10
    cfg = ModelConfig(
        name=spec.name or spec.output.name,
        task="detect",
        backend="yolo",
        weights=Path("weights.pt"),
        classes=spec.classes,
        tile_size=spec.tile_size,
        overlap=overlap,
        resolution_m=spec.resolution,
        confidence=spec.confidence if spec.confidence is not None else 0.25,
        accept_grayscale=spec.grayscale,
        description=f"YOLO11{spec.model_size} trained by geovision on {_data_summary(spec)}",
    )
    chips = chip_detection_dataset(items, staging / "chips", _chip_options(spec), spec.classes)
    log(f"chips: {chips.train} train ({chips.boxes_train} boxes), {chips.val} validation ({chips.boxes_val} boxes)")
    if chips.train == 0 or chips.boxes_val == 0:
        raise _no_chips(chips.train, chips.boxes_val)
    base = str(spec.weights) if spec.weights else f"yolo11{spec.model_size}.yaml"
    opts = DetectTrainOptions(
        epochs=spec.epochs,
        batch=spec.batch,
        model=base,
        device=spec.device,
        seed=spec.seed,
        augment=spec.augment,
        extra=dict(spec.options),
        trusted=spec.trust_weights,
    )
    info = _data_info(spec, report, chips_train=chips.train, chips_val=chips.val, val_boxes=chips.boxes_val)
    info["val_regions"] = _regions_yaml(chips.split.val_regions)
    train_yolo(staging / "chips" / "data.yaml", cfg, package, opts, log, info={"data": info})


def _train_segmenter(spec: TrainSpec, report: LabelReport, package: Path, log: Callable[[str], None]) -> None:
    from geovision.train_segment import SegTrainOptions, chip_segmentation_dataset, train_smp

    if any(p.suffix.lower() in {".xml", ".csv"} for p in spec.labels):
        raise TrainingError("segmentation needs polygon labels (GeoJSON, GeoPackage, Shapefile), not boxes")
    items = []
    for image, labels in zip(spec.images, spec.labels if len(spec.labels) > 1 else spec.labels * len(spec.images)):
        items += read_vector_shapes(labels, [image], spec.classes, report, spec.class_field)
    _check_labels(report, log)
    chips = chip_segmentation_dataset(items, _chip_options(spec), spec.boundary_px, len(spec.classes))
    n_val_fg = sum(int(m.any()) for m in chips.val_masks)
    log(f"chips: {len(chips.train_images)} train, {len(chips.val_images)} validation ({n_val_fg} with labels)")
    if not chips.train_images or n_val_fg == 0:
        raise _no_chips(len(chips.train_images), n_val_fg)
    depth = spec.encoder_depth
    cfg = ModelConfig(
        name=spec.name or spec.output.name,
        task="segment",
        backend="smp",
        weights=Path("weights.pt"),
        classes=spec.classes,
        tile_size=spec.tile_size,
        overlap=spec.overlap if spec.overlap is not None else spec.tile_size // 4,
        resolution_m=spec.resolution,
        confidence=spec.confidence if spec.confidence is not None else 0.5,
        accept_grayscale=spec.grayscale,
        description=f"{spec.arch} ({spec.encoder}) trained by geovision on {_data_summary(spec)}",
        extra={
            "arch": spec.arch,
            "encoder": spec.encoder,
            "encoder_depth": depth,
            "decoder_channels": [256, 128, 64, 32, 16][5 - depth :] if spec.arch in ("Unet", "UnetPlusPlus") else None,
            "activation": "sigmoid" if len(spec.classes) == 1 and not spec.boundary_px else "softmax",
            "boundary": spec.boundary_px > 0,
            "vectorize": dict(spec.vectorize)
            or {
                "simplify_m": spec.resolution or 0.0,
                "min_area_m2": 0.0,
                "grow_m": spec.boundary_px * (spec.resolution or 0.0),
            },
        },
    )
    opts = SegTrainOptions(
        epochs=spec.epochs,
        batch=spec.batch,
        lr=spec.lr,
        device=spec.device,
        seed=spec.seed,
        class_weights=spec.class_weights,
        augment=spec.augment,
        weights=spec.weights,
    )
    info = _data_info(spec, report, chips_train=len(chips.train_images), chips_val=len(chips.val_images))
    info["val_regions"] = _regions_yaml(chips.split.val_regions)
    train_smp(chips, cfg, package, opts, log, info={"data": info})


def read_labels(spec: TrainSpec, report: LabelReport) -> list[ImageLabels]:
    """Labels for each image of ``spec``, by the labels files' kind."""
    pixel_kinds = {".xml", ".csv"}
    if len(spec.labels) == 1 and spec.labels[0].suffix.lower() not in pixel_kinds:
        return read_vector_labels(spec.labels[0], spec.images, spec.classes, report, spec.class_field)
    pairs = zip(spec.images, spec.labels if len(spec.labels) > 1 else spec.labels * len(spec.images))
    items = []
    for image, labels in pairs:
        if labels.suffix.lower() in pixel_kinds:
            items.append(read_pixel_labels(labels, image, spec.classes, report))
        else:
            items.extend(read_vector_labels(labels, [image], spec.classes, report, spec.class_field))
    return items
