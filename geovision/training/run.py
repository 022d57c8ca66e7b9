"""A training run from start to package: the skeleton the YOLO and smp trainers fill in.

:func:`train` checks the inputs, reads the labels, cuts chips
(:mod:`geovision.training.chips`), hands them to the trainer of the task
(:mod:`geovision.training.yolo` or :mod:`geovision.training.smp`) and renames
the finished package into place, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import shapely
import yaml

from geovision.backends.smp import STAGED_DECODERS
from geovision.config import DEFAULT_CONFIDENCE, ModelConfig, SmpOptions, VectorizeOptions, load_config, settings
from geovision.errors import GeovisionError, OutputError, TrainingError, require
from geovision.labels import (
    ImageLabels,
    ImageShapes,
    LabelReport,
    read_areas,
    read_pixel_labels,
    read_vector_labels,
    read_vector_shapes,
)
from geovision.raster import ground_pixel_size_m, open_raster
from geovision.registry import MODEL_NAME, resolve_model
from geovision.training.centres import train_centres
from geovision.training.chips import ChipOptions, chip_detection_dataset, chip_segmentation_dataset
from geovision.training.common import write_model_yaml
from geovision.training.pretrained import smp_encoder
from geovision.training.scoring import MIN_BOXES, chips_confidence
from geovision.training.smp import SegTrainOptions, train_smp
from geovision.training.yolo import DetectTrainOptions, train_yolo

_Item = TypeVar("_Item", bound=ImageLabels | ImageShapes)
_File = TypeVar("_File", Path, Path | None)


@dataclass(frozen=True)
class TrainSpec:
    """A whole training run, as given on the command line or in configs/training/*.yaml.

    ``labels`` holds one file per image, or one file for all images (vector
    layers, or a DeepForest CSV with an image_path column). Pixel labels
    (Pascal VOC .xml, DeepForest .csv) need ``image_resolution`` when the
    image has no georeference and the model's resolution differs.
    """

    task: Literal["detect", "segment", "instance"]
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
    #: duplicate-removal IoU of the model (boxes, or outlines for instance segmenters); None: 0.5
    iou: float | None = None
    overwrite: bool = False
    # segmentation
    arch: str = "Unet"
    encoder: str = "resnet34"
    encoder_depth: int = 5
    #: input pixels per heatmap pixel of a centre detector (FPN: 4, CenterNet's; 1: full resolution)
    output_stride: int = 1
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
    #: where the labels are complete: a polygon layer for all images, or one per image (None: the whole
    #: image); outside, pixels are no data, so objects nobody labelled are not taught as background
    areas: tuple[Path | None, ...] | None = None
    #: minutes the training loop may run (``--time 10m``); it ends with the best weights so far
    time: float | None = None
    #: box detectors: ``yolo`` (ultralytics YOLO11), or ``centres``: a centre heatmap on an smp network
    #: (``arch``, ``encoder``; an ImageNet encoder where one is packaged)
    detector: Literal["yolo", "centres"] = "yolo"
    #: the confidence of the model a run fine-tunes (``--weights trees``): kept when the validation chips
    #: hold too few boxes to choose one on
    start_confidence: float | None = None


TRAIN_SPEC_FIELDS = {f for f in TrainSpec.__dataclass_fields__}


def load_train_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training YAML as a mapping; relative paths in it are resolved against the file.

    Besides flat ``images``/``labels`` lists, a config may list ``datasets``,
    each with a ``site`` name, an ``images`` glob pattern (or list) and
    ``labels``: one layer for all its images, or a folder holding one labels
    file per image, named like the image (``PLOT.tif`` -> ``PLOT.xml``).
    Images with no labels file in such a folder are unlabelled and left out.
    A dataset's optional ``area`` is a polygon layer of where its labels are
    complete (``areas``, one per image, in the flat form).
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TrainingError(f"{p}: cannot read training config ({e})") from e
    if not isinstance(raw, dict):
        raise TrainingError(f"{p}: training config must be a mapping")
    base = p.resolve().parent
    for key in ("images", "labels", "output", "weights", "areas"):
        v = raw.get(key)
        if key == "weights" and isinstance(v, str) and MODEL_NAME.fullmatch(v):
            continue  # a named model (weights: trees), not a path
        if isinstance(v, str):
            raw[key] = os.path.normpath(base / v)
        elif isinstance(v, list):
            raw[key] = [os.path.normpath(base / x) for x in v]
    if "datasets" in raw:
        if raw.get("images") or raw.get("labels"):
            raise TrainingError(f"{p}: give either datasets or images/labels, not both")
        images, labels, sites, areas = expand_datasets(raw.pop("datasets"), base)
        raw["images"], raw["labels"], raw["sites"] = images, labels, sites
        if any(areas):
            raw["areas"] = areas
    return raw


LABEL_SUFFIXES = (".xml", ".csv", ".geojson", ".gpkg", ".shp", ".json")


def expand_datasets(datasets: Any, base: Path) -> tuple[list[str], list[str], list[str], list[str | None]]:
    """(images, labels, sites, areas), one entry per image, from a config's ``datasets`` list."""
    if not isinstance(datasets, list) or not datasets:
        raise TrainingError("datasets must be a list of {site, images, labels}")
    images: list[str] = []
    labels: list[str] = []
    sites: list[str] = []
    areas: list[str | None] = []
    for n, d in enumerate(datasets):
        if not isinstance(d, dict) or not d.get("images") or not d.get("labels"):
            raise TrainingError(f"datasets[{n}] needs images and labels")
        site = str(d.get("site", f"dataset{n}"))
        patterns = d["images"] if isinstance(d["images"], list) else [d["images"]]
        found = sorted({os.path.normpath(f) for pat in patterns for f in glob.glob(str(base / pat))})
        if not found:
            raise TrainingError(f"datasets[{n}] ({site}): no image matches {', '.join(map(str, patterns))}")
        lab = Path(os.path.normpath(base / d["labels"]))
        area = os.path.normpath(base / d["area"]) if d.get("area") else None
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
            areas.append(area)
        if site not in sites:
            raise TrainingError(f"datasets[{n}] ({site}): no image has a labels file in {lab}")
    return images, labels, sites, areas


#: the kinds of training run, as a user names them
KINDS = {
    "yolo": "YOLO box detectors",
    "instance": "YOLO-seg instance segmenters",
    "segmenter": "segmenters",
    "centres": "centre detectors",
}
#: settings only some kinds of run read, and a word on where they belong; the others refuse them
#: rather than drop them silently
APPLIES: dict[str, tuple[set[str], str]] = {
    "model_size": ({"yolo", "instance"}, "YOLO networks only"),
    "options": ({"yolo", "instance"}, "ultralytics' trainer options, for YOLO networks only"),
    "trust_weights": ({"yolo", "instance"}, "pickled ultralytics checkpoints only"),
    "detector": ({"yolo", "centres"}, "box detectors only (task detect)"),
    "arch": ({"segmenter", "centres"}, "segmentation-models-pytorch networks only"),
    "encoder": ({"segmenter", "centres"}, "segmentation-models-pytorch networks only"),
    "encoder_depth": ({"segmenter", "centres"}, "segmentation-models-pytorch networks only"),
    "lr": ({"segmenter", "centres"}, "YOLO networks take ultralytics' lr0 in options"),
    "class_weights": ({"segmenter"}, "segmenters only"),
    "boundary_px": ({"segmenter"}, "segmenters only"),
    "output_stride": ({"centres"}, "centre detectors only"),
    "vectorize": ({"segmenter", "instance"}, "polygon clean-up, for models that output outlines"),
}


def run_kind(raw: dict[str, Any]) -> str:
    """The kind of run a training mapping describes (a key of :data:`KINDS`)."""
    task = raw.get("task")
    if task == "detect":
        return "centres" if raw.get("detector") == "centres" else "yolo"
    return "segmenter" if task == "segment" else "instance"


def inapplicable(raw: dict[str, Any]) -> list[str]:
    """The settings of a training mapping that its kind of run would not read (a default value, as a
    start model's settings carry, is no request and passes)."""
    kind = run_kind(raw)
    return [k for k, (kinds, _) in APPLIES.items() if kind not in kinds and _given(k, raw.get(k))]


def _given(key: str, value: Any) -> bool:
    """Whether ``value`` asks for something other than TrainSpec's default for ``key``."""
    f = TrainSpec.__dataclass_fields__[key]
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    return value is not None and value != default


def train_spec(config: str | os.PathLike[str] | None = None, **settings: Any) -> TrainSpec:
    """The run a training YAML describes (``config``, paths in it relative to the file), with
    ``settings`` (TrainSpec's fields; None leaves the config's) over it."""
    raw: dict[str, Any] = load_train_config(config) if config is not None else {}
    raw.update({k: v for k, v in settings.items() if v is not None})
    return spec_from_mapping(raw)


def spec_from_mapping(raw: dict[str, Any]) -> TrainSpec:
    """A TrainSpec from a config mapping (YAML keys use - or _ alike)."""
    raw = {k.replace("-", "_"): v for k, v in raw.items() if v is not None}
    unknown = set(raw) - TRAIN_SPEC_FIELDS
    if unknown:
        raise TrainingError(f"unknown training settings: {', '.join(sorted(unknown))}")
    if raw.get("weights") and is_model_reference(str(raw["weights"])):
        raw = with_start_model(raw)
    if raw.get("time") is not None:
        raw["time"] = minutes(raw["time"])
    missing = [k for k in ("task", "images", "labels", "output", "classes") if not raw.get(k)]
    if missing:
        raise TrainingError(f"training needs {', '.join(f'`{m}`' for m in missing)}")
    refused = inapplicable(raw)
    if refused:
        kind = run_kind(raw)
        raise TrainingError(
            f"{', '.join(f'`{k}`' for k in refused)}: not a setting of {KINDS[kind]} ({APPLIES[refused[0]][1]})"
        )
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
    if raw.get("areas"):
        areas = [raw["areas"]] if isinstance(raw["areas"], (str, Path)) else raw["areas"]
        raw["areas"] = tuple(Path(a) if a else None for a in areas)
        if len(raw["areas"]) not in (1, len(raw["images"])):
            raise TrainingError(
                f"give one labelled-area layer, or one per image ({len(raw['images'])}), not {len(raw['areas'])}"
            )
    return TrainSpec(**raw)


#: Fine-tuning a trained model on a user's labels: a small step without a warm-up that would shake
#: the start loose, one optimiser step per batch, and a time bound when no --epochs or --time is given.
FINE_TUNE_YOLO = {"optimizer": "AdamW", "lr0": 0.001, "warmup_bias_lr": 0.0, "warmup_epochs": 1}
FINE_TUNE_MINUTES = 8.0
FINE_TUNE_EPOCHS = 300


def is_model_reference(weights: str) -> bool:
    """Whether ``--weights`` names a model (a shipped name, a package folder, a model YAML) rather
    than a bare weights file."""
    return Path(weights).suffix.lower() not in {".pt", ".pth", ".onnx"}


def with_start_model(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` starting from the model its ``weights`` names: that model's weights, and its task,
    classes, resolution, tile size, duplicate-removal IoU and outline settings wherever ``raw`` gives
    none, with fine-tuning settings (a small step, a time bound) for a run that adapts it to new
    imagery. A box detector's confidence is chosen anew on the validation chips; an outline model
    keeps its own."""
    try:
        model = resolve_model(str(raw["weights"]))
    except GeovisionError as e:
        raise TrainingError(f"`weights`: {e}") from e
    if model.backend not in ("yolo", "smp"):
        raise TrainingError(f"`weights` {raw['weights']}: a {model.backend} model cannot be trained further")
    out = dict(raw, weights=model.weights)
    defaults: dict[str, Any] = {
        "task": model.task,
        "classes": list(model.classes),
        "resolution": model.resolution_m,
        "tile_size": model.tile_size,
        "overlap": model.overlap,
        "iou": model.iou,
        "grayscale": model.accept_grayscale,
        "batch": 8,
    }
    if model.task == "detect":  # box detectors choose their confidence on the validation chips
        defaults.update(detector="centres" if model.backend == "smp" else "yolo", start_confidence=model.confidence)
    else:
        defaults.update(confidence=model.confidence, vectorize=dict(vars(model.vectorize)))
    if model.backend == "smp":
        defaults.update(
            arch=model.smp.arch,
            encoder=model.smp.encoder,
            encoder_depth=model.smp.encoder_depth or 5,
            output_stride=model.smp.output_stride,
            boundary_px=1.0 if model.smp.boundary else 0.0,
            lr=1e-4,
        )
    else:
        defaults["options"] = dict(FINE_TUNE_YOLO, nbs=int(out.get("batch", 8)))
    if out.get("epochs") is None and out.get("time") is None:
        defaults.update(time=FINE_TUNE_MINUTES, epochs=FINE_TUNE_EPOCHS)
    for key, value in defaults.items():
        out.setdefault(key, value)
    return out


def minutes(value: Any) -> float:
    """A duration as minutes: ``90s``, ``10m``, ``1.5h``, or a plain number of minutes."""
    text = str(value).strip().lower()
    unit = {"s": 1 / 60, "m": 1.0, "h": 60.0}.get(text[-1:], None)
    number = text[:-1] if unit is not None else text
    try:
        result = float(number) * (unit or 1.0)
    except ValueError:
        raise TrainingError(f"time {value!r}: give a duration such as 90s, 10m or 1.5h") from None
    if result <= 0:
        raise TrainingError(f"time {value!r}: must be more than zero")
    return result


def without_sites(spec: TrainSpec, sites: Sequence[str], output: Path) -> TrainSpec:
    """``spec`` less the images of ``sites``: the model scored on them in leave-one-site-out."""
    all_sites = spec.sites or ()
    unknown = [s for s in sites if s not in all_sites]
    if unknown:
        raise TrainingError(f"no site {', '.join(map(repr, unknown))} in this training config")
    keep = [i for i, s in enumerate(all_sites) if s not in sites]
    labels = spec.labels if len(spec.labels) == 1 else tuple(spec.labels[i] for i in keep)
    areas = spec.areas if not spec.areas or len(spec.areas) == 1 else tuple(spec.areas[i] for i in keep)
    areas = areas if areas and any(areas) else None  # no image left with an area: all labelled whole
    return replace(
        spec,
        images=tuple(spec.images[i] for i in keep),
        labels=labels,
        areas=areas,
        sites=tuple(all_sites[i] for i in keep),
        output=output,
    )


def train(spec: TrainSpec, log: Callable[[str], None] = lambda s: None) -> ModelConfig:
    """Run ``spec``: read labels, cut chips, train, and write the model package.

    The package is built in a temporary folder beside ``spec.output`` and
    renamed into place at the end, so a failed run leaves nothing behind.
    """
    smp_network = spec.task == "segment" or spec.detector == "centres"
    network = "segmentation_models_pytorch" if smp_network else "ultralytics"
    require("training", "torch", "torch", "albumentations", network)
    out = spec.output
    if out.exists() and not spec.overwrite:
        raise OutputError(f"{out} already exists; pass `overwrite=True` to replace it")
    if not out.parent.resolve().is_dir():
        raise OutputError(f"{out}: folder {out.parent} does not exist")
    for p in (*spec.images, *spec.labels, *(a for a in spec.areas or () if a)):
        if not p.is_file():
            raise TrainingError(f"{p}: no such file")
    if len(spec.labels) not in (1, len(spec.images)):
        raise TrainingError(f"give one labels file, or one per image ({len(spec.images)}), not {len(spec.labels)}")
    if not smp_network and spec.weights and spec.weights.suffix == ".pt" and not spec.trust_weights:
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
    return load_config(out / "model.yaml")


def training_resolution(
    images: Sequence[Path], image_resolution: float | None, log: Callable[[str], None] = lambda s: None
) -> float:
    """The model resolution when none is given: the training rasters' ground resolution (metres on the
    ground, also for rasters in degrees or Web Mercator); their median when they differ, said in ``log``."""
    sizes = []
    for image in images:
        with open_raster(image) as ds:
            if ds.crs is None:
                if image_resolution is None:
                    raise TrainingError(f"{image}: no georeference; give `resolution` (or `image_resolution`)")
                sizes.append(image_resolution)
            else:
                dx, dy = ground_pixel_size_m(ds.crs, ds.transform, ds.width, ds.height)
                sizes.append(math.sqrt(dx * dy))
    chosen = round(float(np.median(sizes)), 3)
    lo, hi = min(sizes), max(sizes)
    if hi / lo > 1.05:
        log(f"resolution: the rasters range from {lo:.3g} to {hi:.3g} m per pixel; training at their median, "
            f"{chosen:g} m (give `resolution` to choose)")  # fmt: skip
    else:
        log(f"resolution: {chosen:g} m per pixel, that of the rasters")
    return chosen


def _check_labels(report: LabelReport, log: Callable[[str], None]) -> None:
    log(f"labels: {report.summary()}")
    if report.used == 0:
        raise TrainingError(f"no usable labels ({report.summary()}); check the labels' CRS, classes and `class_field`")


def _data_summary(spec: TrainSpec) -> str:
    """A few words on the training data for a model's description."""
    if spec.sites:
        return f"{len(spec.images)} images of {', '.join(sorted(set(spec.sites)))}"
    names = [p.name for p in spec.images]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _data_info(spec: TrainSpec, report: LabelReport, **counts: int) -> dict[str, Any]:
    """What the model was trained on, recorded in its model.yaml.

    Paths are relative to the package, so that the record holds in any clone of a project.
    """
    return {
        "images": [_relative(p, spec.output) for p in spec.images],
        "labels": [_relative(p, spec.output) for p in spec.labels],
        "areas": [_relative(p, spec.output) if p else None for p in spec.areas] if spec.areas else None,
        "sites": sorted(set(spec.sites)) if spec.sites else None,
        "labels_used": report.used,
        "labels_dropped": dict(report.dropped),
        **counts,
        "split": f"spatial blocks of {spec.tile_size} px, {spec.val_fraction:.0%} held out, seed {spec.seed}",
    }


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to the folder ``start``, or as given where it cannot be (another drive)."""
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:
        return str(path)


def _regions_yaml(regions: list[tuple[str, tuple[float, float, float, float]]]) -> list[dict[str, Any]]:
    return [{"image": name, "bounds": [round(float(v), 3) for v in b]} for name, b in regions]


def _chip_options(spec: TrainSpec, val_fraction: float | None = None) -> ChipOptions:
    return ChipOptions(
        tile_size=spec.tile_size,
        resolution_m=spec.resolution,
        val_fraction=spec.val_fraction if val_fraction is None else val_fraction,
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
    instance = spec.task == "instance"
    items: Sequence[ImageLabels | ImageShapes]
    items = read_polygons(spec, report) if instance else read_labels(spec, report)
    items = _with_areas(spec, items, report)
    _check_labels(report, log)
    overlap = spec.overlap if spec.overlap is not None else spec.tile_size // 10
    cfg = ModelConfig(
        name=spec.name or spec.output.name,
        task=spec.task,
        backend="yolo",
        weights=Path("weights.pt"),
        classes=spec.classes,
        tile_size=spec.tile_size,
        overlap=overlap,
        resolution_m=spec.resolution,
        confidence=next(c for c in (spec.confidence, spec.start_confidence, DEFAULT_CONFIDENCE) if c is not None),
        iou=spec.iou if spec.iou is not None else 0.5,
        accept_grayscale=spec.grayscale,
        description=f"YOLO11{spec.model_size}{'-seg' * instance} trained by geovision on {_data_summary(spec)}",
        vectorize=_vectorize_options(spec, VectorizeOptions(simplify_m=spec.resolution or 0.0)),
    )
    chips = chip_detection_dataset(items, staging / "chips", _chip_options(spec), spec.classes)
    if chips.train == 0 and chips.val:  # the one labelled block went to validation: train on it instead
        shutil.rmtree(staging / "chips")
        chips = chip_detection_dataset(items, staging / "chips", _chip_options(spec, 0.0), spec.classes)
    log(f"chips: {chips.train} train ({chips.boxes_train} boxes), {chips.val} validation ({chips.boxes_val} boxes)")
    _log_no_chip(chips.labels_in_no_chip, log)
    if chips.train == 0:
        raise _no_chips(chips.train, chips.boxes_val)
    if chips.boxes_val == 0:  # one small raster, or --val-fraction 0: nothing held out to choose the best epoch on
        _validate_on_training_chips(staging / "chips" / "data.yaml", log)
    info = _data_info(
        spec,
        report,
        chips_train=chips.train,
        chips_val=chips.val,
        val_boxes=chips.boxes_val,
        labels_in_no_chip=chips.labels_in_no_chip,
    )
    info["val_regions"] = _regions_yaml(chips.split.val_regions)
    if spec.detector == "centres":
        smp_cfg = replace(
            cfg,
            backend="smp",
            description=f"centre heatmap on {spec.arch} ({spec.encoder}) trained by geovision on {_data_summary(spec)}",
            smp=_smp_options(spec, boundary=False),
        )
        train_centres(
            staging / "chips", smp_cfg, package, _smp_train_options(spec), log, {"data": info}, spec.confidence is None
        )
        return
    network = f"yolo11{spec.model_size}{'-seg' * instance}.yaml"
    base = str(spec.weights) if spec.weights else network
    opts = DetectTrainOptions(
        epochs=spec.epochs,
        batch=spec.batch,
        model=base,
        device=spec.device,
        seed=spec.seed,
        augment=spec.augment,
        extra=_with_time(spec.options, spec.time),
        trusted=spec.trust_weights,
        network=network,
    )
    packaged = train_yolo(staging / "chips" / "data.yaml", cfg, package, opts, log, info={"data": info})
    if spec.task == "detect" and spec.confidence is None:
        _confidence_from_chips(packaged, staging / "chips", spec, package / "model.yaml", log)


def _confidence_from_chips(
    cfg: ModelConfig, chip_dir: Path, spec: TrainSpec, yaml_path: Path, log: Callable[[str], None]
) -> None:
    """Make a trained YOLO detector's default confidence the one of its best box F1 on the validation
    chips; with too few boxes there to choose on, it keeps the one it has (a fine-tuned model's, or 0.25)."""
    from geovision.backends.yolo import YoloDetector

    detector = YoloDetector(cfg, device=spec.device)
    best = chips_confidence(lambda images, conf: detector.detect(images, conf), chip_dir)
    chosen = best["threshold"]
    if best["boxes"] < MIN_BOXES:
        chosen = cfg.confidence
        log(f"confidence: {chosen:g}, as it was: {best['boxes']} boxes on the validation chips are too few to "
            f"choose one on (give `confidence` to detect, or label more)")  # fmt: skip
    else:
        log(f"confidence: {chosen:g}, where box F1 on the validation chips is best ({best['f1']:.2f})")
    metrics = {**cfg.record.get("metrics", {}), "box_f1_iou_0.4": best["f1"], "at_confidence": best["threshold"]}
    write_model_yaml(replace(cfg, confidence=chosen, record={**cfg.record, "metrics": metrics}), yaml_path)


def _validate_on_training_chips(data_yaml: Path, log: Callable[[str], None]) -> None:
    """Point a chip dataset's validation at its training chips, and say so."""
    data = yaml.safe_load(data_yaml.read_text())
    data["val"] = data["train"]
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    log(_NO_HELD_OUT)


_NO_HELD_OUT = (
    "validation: no held-out chip holds a label (too few labelled blocks to split, or `val_fraction=0`); "
    "the best epoch is chosen on the training chips"
)


def _with_time(options: dict[str, Any], time_min: float | None) -> dict[str, Any]:
    """ultralytics' options with ``--time`` as its ``time`` (hours), unless the options set one."""
    out = dict(options)
    if time_min is not None and "time" not in out:
        out["time"] = time_min / 60
    return out


def _log_no_chip(n: int, log: Callable[[str], None]) -> None:
    """Tell the user how many of the labels used were never taught (the package records it too)."""
    if n:
        log(f"labels: {n} of those used lie in no chip (on no data, only in chips dropped at the "
            "validation split's edges, or too little of each on imagery in any chip), so were not taught")  # fmt: skip


def _train_segmenter(spec: TrainSpec, report: LabelReport, package: Path, log: Callable[[str], None]) -> None:
    items = _with_areas(spec, read_polygons(spec, report), report)
    _check_labels(report, log)
    chips = chip_segmentation_dataset(items, _chip_options(spec), spec.boundary_px, len(spec.classes))
    if not chips.train_images and chips.val_images:  # as for detectors: train on the one labelled block
        chips = chip_segmentation_dataset(items, _chip_options(spec, 0.0), spec.boundary_px, len(spec.classes))
    n_val_fg = sum(int(m.any()) for m in chips.val_masks)
    log(f"chips: {len(chips.train_images)} train, {len(chips.val_images)} validation ({n_val_fg} with labels)")
    _log_no_chip(chips.labels_in_no_chip, log)
    if not chips.train_images:
        raise _no_chips(len(chips.train_images), n_val_fg)
    if n_val_fg == 0:
        chips = replace(chips, val_images=chips.train_images, val_masks=chips.train_masks)
        log(_NO_HELD_OUT)
    res = spec.resolution or 0.0
    vectorize = _vectorize_options(spec, VectorizeOptions(simplify_m=res, grow_m=spec.boundary_px * res))
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
        smp=_smp_options(spec, boundary=spec.boundary_px > 0),
        vectorize=vectorize,
    )
    opts = _smp_train_options(spec)
    info = _data_info(
        spec,
        report,
        chips_train=len(chips.train_images),
        chips_val=len(chips.val_images),
        labels_in_no_chip=chips.labels_in_no_chip,
    )
    info["val_regions"] = _regions_yaml(chips.split.val_regions)
    train_smp(chips, cfg, package, opts, log, info={"data": info})


def _smp_options(spec: TrainSpec, boundary: bool) -> SmpOptions:
    """The network of an smp model (segmenter or centre detector) as ``spec`` gives it."""
    depth = spec.encoder_depth
    return SmpOptions(
        arch=spec.arch,
        encoder=smp_encoder(spec.encoder),
        encoder_depth=depth,
        decoder_channels=(256, 128, 64, 32, 16)[5 - depth :] if spec.arch in STAGED_DECODERS else None,
        output_stride=spec.output_stride,
        activation="sigmoid" if len(spec.classes) == 1 and not boundary else "softmax",
        boundary=boundary,
    )


def _smp_train_options(spec: TrainSpec) -> SegTrainOptions:
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


def _vectorize_options(spec: TrainSpec, default: VectorizeOptions) -> VectorizeOptions:
    """The config's ``vectorize`` mapping, or ``default`` without one."""
    try:
        return settings(VectorizeOptions, spec.vectorize, "vectorize") if spec.vectorize else default
    except ValueError as e:
        raise TrainingError(str(e)) from e


def read_polygons(spec: TrainSpec, report: LabelReport) -> list[ImageShapes]:
    """Outline labels (segmenters, instance segmenters) of each image, in its pixel coordinates."""
    if any(p.suffix.lower() in {".xml", ".csv"} for p in spec.labels):
        raise TrainingError(f"task {spec.task} needs polygon labels (GeoJSON, GeoPackage, Shapefile), not boxes")
    pairs = list(zip(spec.images, per_image(spec.labels, len(spec.images))))
    shapes = _read_vector_files(pairs, read_vector_shapes, spec, report)
    return [shapes[pair] for pair in pairs]


def per_image(files: Sequence[_File], n: int) -> tuple[_File, ...]:
    """One file per image of ``n``: ``files`` as given, or its one file for every image."""
    return tuple(files) * n if len(files) == 1 else tuple(files)


def _with_areas(spec: TrainSpec, items: Sequence[_Item], report: LabelReport) -> list[_Item]:
    """Each image's labels with the area where they are complete (``spec.areas``), in its pixels;
    labels centred outside it are reported as not used (chips teach none there)."""
    if not spec.areas:
        return list(items)
    layer_of = dict(zip(spec.images, per_image(spec.areas, len(spec.images))))
    area_of: dict[Path, Any] = {}
    for layer in dict.fromkeys(a for a in layer_of.values() if a):  # each layer read once
        images = [image for image, a in layer_of.items() if a == layer]
        area_of.update(zip(images, read_areas(layer, images)))
    out = []
    for item in items:
        area = area_of.get(item.image)
        if area is None:
            out.append(item)
            continue
        if isinstance(item, ImageShapes):
            centres = np.asarray([(c.x, c.y) for c in shapely.point_on_surface(item.geoms)]).reshape(-1, 2)
        else:
            centres = np.c_[(item.boxes[:, 0] + item.boxes[:, 2]) / 2, (item.boxes[:, 1] + item.boxes[:, 3]) / 2]
        outside = int((~shapely.contains_xy(area, centres[:, 0], centres[:, 1])).sum()) if len(centres) else 0
        report.used -= outside
        report.drop("outside the labelled area", outside)
        out.append(replace(item, area=area))
    return out


def read_labels(spec: TrainSpec, report: LabelReport) -> list[ImageLabels]:
    """Labels for each image of ``spec``, by the labels files' kind."""
    pixel_kinds = {".xml", ".csv"}
    pairs = list(zip(spec.images, per_image(spec.labels, len(spec.images))))
    vector = [(image, labels) for image, labels in pairs if labels.suffix.lower() not in pixel_kinds]
    boxes = _read_vector_files(vector, read_vector_labels, spec, report)
    return [
        boxes[(image, labels)] if (image, labels) in boxes else read_pixel_labels(labels, image, spec.classes, report)
        for image, labels in pairs
    ]


def _read_vector_files(
    pairs: Sequence[tuple[Path, Path]], read: Callable[..., list[_Item]], spec: TrainSpec, report: LabelReport
) -> dict[tuple[Path, Path], _Item]:
    """Labels of each (image, vector labels file) pair, each file read once for all its images: a
    footprint layer over many tiles is read (and reprojected) once, and a label is counted as
    outside every image only when it is outside all of them, not once for each other tile."""
    images_of: dict[Path, list[Path]] = {}
    for image, labels in pairs:
        images_of.setdefault(labels, []).append(image)
    out = {}
    for labels, images in images_of.items():
        items = read(labels, images, spec.classes, report, spec.class_field)
        out.update({(image, labels): item for image, item in zip(images, items)})
    return out
