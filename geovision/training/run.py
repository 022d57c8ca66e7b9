"""A training run from start to package: the skeleton every trainer fills in.

:func:`train` checks the inputs and hands the run to the trainer the backend
registry (:mod:`geovision.backends.registry`) names for its kind: a
:class:`Trainer`, whose :meth:`~Trainer.run` takes the steps every run takes
(labels, chips, network, package) and leaves what differs to the kind (YOLO
detectors and YOLO-seg in :mod:`.yolo`, segmenters in :mod:`.smp`, centre
detectors in :mod:`.centres`). The package is built in a temporary folder and
renamed into place, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import shapely

from geovision.backends.registry import backend, resolve
from geovision.config import (
    DEFAULT_CONFIDENCE,
    ModelConfig,
    VectorizeOptions,
    load_config,
    matched_resolution,
    settings,
)
from geovision.errors import OutputError, TrainingError, require
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
from geovision.training.chips import ChipOptions, ChipSet, SegChips, chip_detection_dataset
from geovision.training.spec import TrainSpec, per_image, run_kind

_Item = TypeVar("_Item", bound=ImageLabels | ImageShapes)


def train(spec: TrainSpec, log: Callable[[str], None] = lambda s: None) -> ModelConfig:
    """Run ``spec``: read labels, cut chips, train, and write the model package.

    The package is built in a temporary folder beside ``spec.output`` and
    renamed into place at the end, so a failed run leaves nothing behind.
    """
    trainer = trainer_for(spec, log)
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
    trainer.check()
    pixel_m = pixel_sizes_m(spec.images, spec.image_resolution)
    resolution = spec.resolution or training_resolution(pixel_m, log)
    trainer.spec = replace(spec, resolution=resolution)
    # an image with neither georeference nor ``image_resolution`` is read at the model's resolution
    trainer.pixel_m = {image: size or resolution for image, size in pixel_m.items()}
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        package = staging / "package"
        trainer.run(staging, package)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(package, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_config(out / "model.yaml")


def trainer_for(spec: TrainSpec, log: Callable[[str], None] = lambda s: None) -> Trainer:
    """The trainer the backend registry names for ``spec``'s kind of run; one line naming the extra to
    install when the modules it needs are not there."""
    entry = backend("smp" if run_kind(vars(spec)) in ("segmenter", "centres") else "yolo", "training")
    require("training", "torch", *entry.torch_modules, "albumentations")
    trainer: Trainer = resolve(entry.trainers[spec.task])(spec, log)
    return trainer


class Trainer:
    """One kind of training run (TorchGeo's BaseTask is the model). :meth:`run` takes the steps of
    every run in order; a kind fills in its fit and the words for its network, and may change what
    it reads (boxes by default), the chips it cuts (a YOLO-format dataset on disk) and its model
    config (a box detector's)."""

    #: the backend that runs the package
    backend = "yolo"

    def __init__(self, spec: TrainSpec, log: Callable[[str], None]) -> None:
        self.spec, self.log = spec, log
        #: metres on the ground per pixel of each image (set by :func:`train`)
        self.pixel_m: dict[Path, float] = {}

    def check(self) -> None:
        """Refuse a start that must not be loaded, before any work (nothing to check by default)."""

    def network(self) -> str:
        """The network in a few words, for the model's description."""
        raise NotImplementedError

    def fit(self, chips: Any, cfg: ModelConfig, package: Path, info: dict[str, Any]) -> ModelConfig:
        """Train on ``chips``, and write the package (weights and model.yaml, recording ``info``)."""
        raise NotImplementedError

    def read(self, report: LabelReport) -> Sequence[ImageLabels | ImageShapes]:
        """The labels of each image, as the chips need them."""
        return read_labels(self.spec, report)

    def cut(self, items: Sequence[Any], staging: Path, val_fraction: float) -> ChipSet | SegChips:
        """Chips of ``items``, ``val_fraction`` of their blocks held out."""
        folder = staging / "chips"
        shutil.rmtree(folder, ignore_errors=True)
        return chip_detection_dataset(items, folder, chip_options(self.spec, val_fraction), self.spec.classes)

    def config(self) -> ModelConfig:
        """The package's model config, but for its weights."""
        spec = self.spec
        return ModelConfig(
            name=spec.name or spec.output.name,
            task=spec.task,
            backend=self.backend,
            weights=Path("weights.pt"),
            classes=spec.classes,
            tile_size=spec.tile_size,
            overlap=spec.overlap if spec.overlap is not None else spec.tile_size // 10,
            resolution_m=spec.resolution,
            confidence=next(c for c in (spec.confidence, spec.start_confidence, DEFAULT_CONFIDENCE) if c is not None),
            iou=spec.iou if spec.iou is not None else 0.5,
            accept_grayscale=spec.grayscale,
            description=f"{self.network()} trained by geovision on {_data_summary(spec)}",
            vectorize=vectorize_options(spec, VectorizeOptions(simplify_m=spec.resolution or 0.0)),
        )

    def run(self, staging: Path, package: Path) -> ModelConfig:
        """Labels, chips, network, package: the steps of every run."""
        spec, log = self.spec, self.log
        report = LabelReport()
        items = _with_areas(spec, self.read(report), report)
        log(f"labels: {report.summary()}")
        if report.used == 0:
            raise TrainingError(
                f"no usable labels ({report.summary()}); check the labels' CRS, classes and `class_field`"
            )
        size = object_size_m(items, self.pixel_m)
        if spec.start_object_size_m and size and spec.resolution:
            matched = matched_resolution(spec.resolution, spec.start_object_size_m, size)
            if matched != spec.resolution:
                log(f"resolution: the labelled objects are {size:.1f} m across (median), the start model's "
                    f"{spec.start_object_size_m:.1f} m; reading at {matched:g} m, not {spec.resolution:g}, so that "
                    "they look the size it learned (give `resolution` to choose)")  # fmt: skip
            self.spec = spec = replace(spec, resolution=matched)
        chips = self.cut(items, staging, spec.val_fraction)
        if not chips.train and chips.val:  # the one labelled block went to validation: train on it instead
            chips = self.cut(items, staging, 0.0)
        log(f"chips: {chips.describe()}")
        if chips.labels_in_no_chip:  # the package records it too
            log(f"labels: {chips.labels_in_no_chip} of those used lie in no chip (on no data, only in chips "
                "dropped at the validation split's edges, or too little of each on imagery in any chip), so were "
                "not taught")  # fmt: skip
        if not chips.train:
            raise TrainingError(
                f"no training chips with labels (0 train, {chips.labelled_val} validation); the images are too "
                "small for this tile size and resolution, or hold too few labelled blocks to split"
            )
        if not chips.labelled_val:  # one small raster, or val_fraction 0: nothing held out to choose the best epoch on
            chips = chips.validating_on_training()
            log("validation: no held-out chip holds a label (too few labelled blocks to split, or `val_fraction=0`); "
                "the best epoch is chosen on the training chips")  # fmt: skip
        info = {**_data_info(spec, report, **chips.record()), "val_regions": _regions_yaml(chips.split.val_regions)}
        if size:
            info["object_size_m"] = round(size, 2)
        return self.fit(chips, self.config(), package, {"data": info})


def chip_options(spec: TrainSpec, val_fraction: float) -> ChipOptions:
    """How ``spec``'s chips are cut."""
    return ChipOptions(
        tile_size=spec.tile_size,
        resolution_m=spec.resolution,
        val_fraction=val_fraction,
        native_resolution_m=spec.image_resolution,
        seed=spec.seed,
        accept_grayscale=spec.grayscale,
        stride=spec.chip_stride,
    )


def pixel_sizes_m(images: Sequence[Path], image_resolution: float | None) -> dict[Path, float | None]:
    """Metres on the ground per pixel of each image (also for rasters in degrees or Web Mercator);
    ``image_resolution`` where one has no georeference, None where that is not given either (it is then
    read at the model's resolution)."""
    sizes: dict[Path, float | None] = {}
    for image in images:
        with open_raster(image) as ds:
            geo = ds.crs is not None
            sizes[image] = (
                math.sqrt(math.prod(ground_pixel_size_m(ds.crs, ds.transform, ds.width, ds.height)))
                if geo
                else image_resolution
            )
    return sizes


def training_resolution(pixel_m: dict[Path, float | None], log: Callable[[str], None] = lambda s: None) -> float:
    """The model resolution when none is given: the training rasters' ground resolution
    (:func:`pixel_sizes_m`); their median when they differ, said in ``log``."""
    unknown = next((image for image, size in pixel_m.items() if size is None), None)
    if unknown is not None:
        raise TrainingError(f"{unknown}: no georeference; give `resolution` (or `image_resolution`)")
    sizes = [size for size in pixel_m.values() if size is not None]
    chosen = round(float(np.median(sizes)), 3)
    lo, hi = min(sizes), max(sizes)
    if hi / lo > 1.05:
        log(f"resolution: the rasters range from {lo:.3g} to {hi:.3g} m per pixel; training at their median, "
            f"{chosen:g} m (give `resolution` to choose)")  # fmt: skip
    else:
        log(f"resolution: {chosen:g} m per pixel, that of the rasters")
    return chosen


def object_size_m(items: Sequence[ImageLabels | ImageShapes], pixel_m: dict[Path, float]) -> float | None:
    """The median size of the labelled objects in metres across (the side of a square of their area;
    ``pixel_m``: each image's metres per pixel), recorded in the package so that fine-tuning on other
    imagery can match it; None without labels."""
    sides = []
    for item in items:
        if isinstance(item, ImageShapes):
            px = np.sqrt(shapely.area(np.asarray(item.geoms, dtype=object)))
        else:
            px = np.sqrt((item.boxes[:, 2] - item.boxes[:, 0]) * (item.boxes[:, 3] - item.boxes[:, 1]))
        if len(px):
            sides.append(px * pixel_m[item.image])
    return float(np.median(np.concatenate(sides))) if sides else None


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


def vectorize_options(spec: TrainSpec, default: VectorizeOptions) -> VectorizeOptions:
    """The config's ``vectorize`` mapping, or ``default`` without one."""
    try:
        return settings(VectorizeOptions, spec.vectorize, "vectorize") if spec.vectorize else default
    except ValueError as e:
        raise TrainingError(str(e)) from e


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


def read_polygons(spec: TrainSpec, report: LabelReport) -> list[ImageShapes]:
    """Outline labels (segmenters, instance segmenters) of each image, in its pixel coordinates."""
    if any(p.suffix.lower() in {".xml", ".csv"} for p in spec.labels):
        raise TrainingError(f"task {spec.task} needs polygon labels (GeoJSON, GeoPackage, Shapefile), not boxes")
    pairs = list(zip(spec.images, per_image(spec.labels, len(spec.images))))
    shapes = _read_vector_files(pairs, read_vector_shapes, spec, report)
    return [shapes[pair] for pair in pairs]


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
