"""What a training run is asked to do: its settings (:class:`TrainSpec`), read from the command
line, a Python call or a training YAML, with those a kind of run does not read refused, and those a
start model gives (``--weights trees``) filled in for fine-tuning."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from geovision.errors import GeovisionError, TrainingError
from geovision.registry import MODEL_NAME, resolve_model

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
    #: the median object size (metres across) of the labels the start model learned on, when the run
    #: fine-tunes one and no ``resolution`` is given: the run reads the user's imagery so that their
    #: objects appear at that size (:func:`geovision.config.matched_resolution`)
    start_object_size_m: float | None = None


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
    if out.get("resolution") is None and model.object_size_m:
        defaults["start_object_size_m"] = model.object_size_m
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


def per_image(files: Sequence[_File], n: int) -> tuple[_File, ...]:
    """One file per image of ``n``: ``files`` as given, or its one file for every image."""
    return tuple(files) * n if len(files) == 1 else tuple(files)
