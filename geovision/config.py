"""A model's description: the ModelConfig value type and its YAML form.

A model YAML is the single description of a model: task, backend, weights
and their sha256, classes, tile size, overlap, ground resolution, bands,
normalisation, thresholds, and the settings of its backend (typed here:
:class:`SmpOptions`, :class:`VectorizeOptions`). Finding a model by name is
:mod:`geovision.registry`'s job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from geovision.errors import ModelError, WeightsError
from geovision.raster import Normalization

#: libyaml's safe loader where PyYAML has it: a package YAML with its training record loads ten times faster
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
log = logging.getLogger("geovision")

#: detect: boxes; segment: per-pixel classes (semantic); instance: one outline per object (YOLO-seg).
Task = Literal["detect", "segment", "instance"]


#: The confidence threshold of a model that names none (YOLO's own default).
DEFAULT_CONFIDENCE = 0.25


@dataclass(frozen=True)
class SmpOptions:
    """How an smp segmenter's network is built and fed (the YAML's ``arch``, ``encoder`` ... keys)."""

    arch: str = "Unet"
    encoder: str = "resnet34"
    encoder_depth: int | None = None
    decoder_channels: tuple[int, ...] | None = None
    #: input pixels per output pixel (FPN only: 1, 2 or 4); a centre detector's heatmap at a quarter of
    #: the resolution, as CenterNet's, has 16 times fewer background pixels to learn
    output_stride: int = 1
    #: None: sigmoid for one class without an outline band, softmax otherwise
    activation: Literal["sigmoid", "softmax"] | None = None
    #: the network also marks a band along every outline, so touching objects come out apart
    boundary: bool = False
    #: per-channel mean and std of 0-1 pixel values it was trained with (None: 0.5 and 0.25)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class VectorizeOptions:
    """Polygon clean-up for segmenters (the YAML's ``vectorize`` mapping); lengths in metres, areas in m²."""

    simplify_m: float = 0.0
    min_area_m2: float = 0.0
    fill_holes: bool = False
    #: outward growth, for models whose objects come out shrunk by an outline band (negative: inward)
    grow_m: float = 0.0
    #: square outlines up (:mod:`geovision.regularize`), for buildings
    regularize: bool = False
    #: instance outlines: each less the better-scoring ones it overlaps, so none overlap (footprints)
    disjoint: bool = False


@dataclass(frozen=True)
class PackagedOnnx:
    """The ONNX export a package carries beside its weights (the YAML's ``onnx`` and ``onnx_sha256``)."""

    file: str
    sha256: str


@dataclass(frozen=True)
class ModelConfig:
    """A model as described by its YAML file; paths are absolute."""

    name: str
    task: Task
    backend: str
    weights: Path
    classes: tuple[str, ...]
    tile_size: int
    overlap: int
    resolution_m: float | None
    sha256: str | None = None
    in_channels: int = 3
    bands: tuple[int, ...] | None = None
    accept_grayscale: bool = False
    normalization: Normalization = field(default_factory=Normalization)
    confidence: float = DEFAULT_CONFIDENCE
    iou: float = 0.5
    batch_size: int = 8
    description: str = ""
    source: Path | None = None
    smp: SmpOptions = field(default_factory=SmpOptions)
    vectorize: VectorizeOptions = field(default_factory=VectorizeOptions)
    packaged_onnx: PackagedOnnx | None = None
    #: an ONNX detector whose graph ends in its own NMS (one row per object)
    end2end: bool = False
    #: of an exported ONNX file: the backend it was exported from
    source_backend: str | None = None
    #: what the package records of how it was made (``training``, ``metrics``); code reads only
    #: :attr:`object_size_m` from it
    record: dict[str, Any] = field(default_factory=dict)
    #: the user vouches for a pickled weights file (``--trust-model``); never read from or written to YAML
    trusted: bool = False

    def to_summary(self) -> dict[str, Any]:
        """The machine-readable description printed by ``geovision models --json``."""
        return {
            "name": self.name,
            "task": self.task,
            "backend": self.backend,
            "weights": str(self.weights),
            "sha256": self.sha256,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "resolution": self.resolution_m,
            "object_size_m": self.object_size_m,
            "classes": list(self.classes),
            "bands": list(self.bands) if self.bands else None,
            "in_channels": self.in_channels,
            "confidence": self.confidence,
            "iou": self.iou,
            "description": self.description,
            "config": str(self.source) if self.source else None,
        }

    def with_overrides(self, **kw: Any) -> ModelConfig:
        """A copy with the given fields replaced; ``None`` values are ignored."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    @property
    def object_size_m(self) -> float | None:
        """The median size, in metres across, of the objects the model learned on (where recorded)."""
        size = self.record.get("training", {}).get("data", {}).get("object_size_m")
        return float(size) if size else None

    def for_objects_of(self, size_m: float) -> ModelConfig:
        """This model on imagery whose objects are ``size_m`` metres across (median): read at the
        resolution where they look the size it learned on (:func:`matched_resolution`)."""
        if size_m <= 0:
            raise ModelError(f"object size {size_m:g}: give the objects' typical size in metres, more than zero")
        if self.object_size_m is None or self.resolution_m is None:
            why = "reads rasters at their own resolution" if self.resolution_m is None else "records no object size"
            raise ModelError(f"model '{self.name}' {why}; `object_size` cannot be matched")
        resolution = matched_resolution(self.resolution_m, self.object_size_m, size_m)
        if resolution != self.resolution_m:
            log.info(
                "reading at %g m, not %g: objects of %.1f m look the size of those '%s' learned on (%.1f m)",
                resolution, self.resolution_m, size_m, self.name, self.object_size_m,
            )  # fmt: skip
        else:
            log.info(
                "reading at %g m, as '%s' does: objects of %.1f m are not much larger than those it learned on "
                "(%.1f m), and it never reads finer", resolution, self.name, size_m, self.object_size_m,
            )  # fmt: skip
        return replace(self, resolution_m=resolution)


#: the most a model's resolution is coarsened to match larger objects
MAX_COARSENING = 4.0


def matched_resolution(resolution: float, learned_m: float, size_m: float) -> float:
    """The resolution at which objects ``size_m`` across (median) look as large in pixels as those a model
    read at ``resolution`` learned on (``learned_m``): a model that learned 3 m conifers reads 7 m oaks at
    twice its metres per pixel, instead of cutting each oak into conifer-sized pieces. Objects up to
    1.25x the learned size keep the resolution, smaller ones are not read finer (that was never measured
    to help), and it coarsens at most :data:`MAX_COARSENING` times."""
    ratio = size_m / learned_m
    return resolution if ratio <= 1.25 else round(resolution * min(ratio, MAX_COARSENING), 3)


def load_config(path: Path) -> ModelConfig:
    """Parse and validate a model YAML; relative weights paths are resolved against it."""
    path = Path(path).resolve()
    try:
        text = path.read_text()
        raw = yaml.load(text, Loader=_SAFE_LOADER)
    except (OSError, yaml.YAMLError) as e:
        raise ModelError(f"{path}: cannot read model YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: model YAML must be a mapping")
    if isinstance(raw.get("sha256"), int):  # unquoted digits: YAML made a number of them; take them as written
        written = re.search(r"^sha256:\s*([0-9]+)\s*(#.*)?$", text, re.MULTILINE)
        raw["sha256"] = written.group(1) if written else str(raw["sha256"])
    return config_from_dict(raw, path)


def config_from_dict(raw: dict[str, Any], path: Path) -> ModelConfig:
    """Build a ModelConfig from the YAML mapping ``raw`` read from ``path``."""
    required = ["task", "backend", "weights", "classes", "tile_size"]
    missing = [k for k in required if k not in raw]
    if missing:
        raise ModelError(f"{path}: model YAML lacks {', '.join(missing)}")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ModelError(f"{path}: unknown model YAML key(s) {', '.join(unknown)} (a typo? docs/models.md lists them)")
    if raw["task"] not in ("detect", "segment", "instance"):
        raise ModelError(f"{path}: task must be 'detect', 'segment' or 'instance', not {raw['task']!r}")
    weights = Path(raw["weights"])
    if not weights.is_absolute():
        weights = (path.parent / weights).resolve()
    norm_raw = raw.get("normalization") or {}
    try:
        norm = Normalization(
            method=norm_raw.get("method", "auto"),
            low=float(norm_raw.get("low", 2.0)),
            high=float(norm_raw.get("high", 98.0)),
            min=_floats(norm_raw.get("min")),
            max=_floats(norm_raw.get("max")),
        )
        bands = raw.get("bands")
        cfg = ModelConfig(
            name=str(raw.get("name", path.stem if path.name != "model.yaml" else path.parent.name)),
            task=raw["task"],
            backend=str(raw["backend"]),
            weights=weights,
            classes=tuple(str(c) for c in raw["classes"]),
            tile_size=int(raw["tile_size"]),
            overlap=int(raw.get("overlap", 0)),
            resolution_m=float(raw["resolution"]) if raw.get("resolution") is not None else None,
            sha256=_sha256(raw.get("sha256"), path),
            in_channels=int(raw.get("in_channels", 3)),
            bands=tuple(int(b) for b in bands) if bands else None,
            accept_grayscale=bool(raw.get("accept_grayscale", False)),
            normalization=norm,
            confidence=float(raw.get("confidence", DEFAULT_CONFIDENCE)),
            iou=float(raw.get("iou", 0.5)),
            batch_size=int(raw.get("batch_size", 8)),
            description=str(raw.get("description", "")),
            source=path,
            smp=_smp_options(raw),
            vectorize=settings(VectorizeOptions, raw.get("vectorize") or {}, "vectorize"),
            packaged_onnx=PackagedOnnx(str(raw["onnx"]), str(raw.get("onnx_sha256", ""))) if raw.get("onnx") else None,
            end2end=bool(raw.get("end2end", False)),
            source_backend=str(raw["source_backend"]) if raw.get("source_backend") else None,
            record={k: raw[k] for k in RECORD_KEYS if k in raw},
        )
    except (TypeError, ValueError) as e:
        raise ModelError(f"{path}: invalid model YAML ({e})") from e
    if not 0 <= cfg.overlap < cfg.tile_size:
        raise ModelError(f"{path}: overlap must be in [0, tile_size)")
    return cfg


#: what a package records of its making: kept as written, read by no code
RECORD_KEYS = ("training", "metrics")

_KNOWN_KEYS = {
    "name",
    "task",
    "backend",
    "weights",
    "classes",
    "tile_size",
    "overlap",
    "resolution",
    "sha256",
    "in_channels",
    "bands",
    "accept_grayscale",
    "normalization",
    "confidence",
    "iou",
    "batch_size",
    "description",
    *(f.name for f in fields(SmpOptions)),
    "vectorize",
    "onnx",
    "onnx_sha256",
    "end2end",
    "source_backend",
    *RECORD_KEYS,
}


def _smp_options(raw: dict[str, Any]) -> SmpOptions:
    """The smp settings, kept at the top level of a model YAML."""
    depth, channels = raw.get("encoder_depth"), raw.get("decoder_channels")
    act = raw.get("activation")
    if act not in (None, "sigmoid", "softmax"):
        raise ValueError(f"activation must be sigmoid or softmax, not {act!r}")
    return SmpOptions(
        arch=str(raw.get("arch", "Unet")),
        encoder=str(raw.get("encoder", "resnet34")),
        encoder_depth=int(depth) if depth else None,
        decoder_channels=tuple(int(c) for c in channels) if channels else None,
        output_stride=int(raw.get("output_stride", 1)),
        activation=act,
        boundary=bool(raw.get("boundary", False)),
        mean=_floats(raw.get("mean")),
        std=_floats(raw.get("std")),
    )


def settings(kind: type[Any], raw: Any, key: str) -> Any:
    """A settings dataclass of scalars from its YAML mapping ``key``: unknown keys are refused
    (a typo would go unnoticed otherwise), values converted to the defaults' types (ValueError)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{key} must be a mapping")
    known = [f.name for f in fields(kind)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"unknown {key} setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    defaults = kind()
    return kind(**{k: type(getattr(defaults, k))(v) for k, v in raw.items()})


def _sha256(value: Any, path: Path) -> str | None:
    """A model YAML's sha256 as 64 lower-case hex characters, quoted or not.

    (:func:`load_config` takes an unquoted all-digit hash as written, not as YAML's integer.)
    Anything that is not 64 hex characters is refused, never skipped.
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ModelError(f"{path}: sha256 must be 64 hexadecimal characters, not {str(value)[:70]!r}")
    return text


def _floats(v: Any) -> tuple[float, ...] | None:
    if v is None:
        return None
    return tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))


def config_to_dict(cfg: ModelConfig, relative_to: Path | None = None) -> dict[str, Any]:
    """The YAML mapping for ``cfg``; weights relative to ``relative_to`` when given."""
    weights = cfg.weights
    if relative_to is not None:
        weights = Path(os.path.relpath(cfg.weights, relative_to))
    norm = asdict(cfg.normalization)
    out: dict[str, Any] = {
        "name": cfg.name,
        "task": cfg.task,
        "backend": cfg.backend,
        "weights": str(weights),
        "sha256": cfg.sha256,
        "classes": list(cfg.classes),
        "tile_size": cfg.tile_size,
        "overlap": cfg.overlap,
        "resolution": cfg.resolution_m,
        "in_channels": cfg.in_channels,
        "bands": list(cfg.bands) if cfg.bands else None,
        "accept_grayscale": cfg.accept_grayscale,
        "normalization": {k: (list(v) if isinstance(v, tuple) else v) for k, v in norm.items() if v is not None},
        "confidence": cfg.confidence,
        "iou": cfg.iou,
        "batch_size": cfg.batch_size,
        "description": cfg.description,
    }
    if cfg.task == "segment" or cfg.backend == "smp":  # segmenters, and centre detectors on an smp network
        smp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg.smp).items() if v is not None}
        if smp["output_stride"] == 1:  # the usual case; older packages do not name it
            del smp["output_stride"]
        out.update(smp)
    if cfg.task != "detect":
        out["vectorize"] = asdict(cfg.vectorize)
    if cfg.packaged_onnx is not None:
        out.update(onnx=cfg.packaged_onnx.file, onnx_sha256=cfg.packaged_onnx.sha256)
    if cfg.end2end:
        out["end2end"] = True
    if cfg.source_backend:
        out["source_backend"] = cfg.source_backend
    out.update(cfg.record)
    return out


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_weights(cfg: ModelConfig) -> str:
    """The weights' sha256; refuses missing weights or weights whose sha256 differs from the YAML's."""
    if not cfg.weights.is_file():
        raise WeightsError(f"model '{cfg.name}': weights file {cfg.weights} does not exist")
    actual = sha256_file(cfg.weights)
    if cfg.sha256:
        if actual != cfg.sha256.lower():
            raise WeightsError(
                f"model '{cfg.name}': weights {cfg.weights.name} have sha256 {actual[:12]}…, "
                f"the model YAML expects {cfg.sha256[:12]}…; the file is corrupt or was replaced"
            )
    elif cfg.source is not None and cfg.source.suffix.lower() in (".yaml", ".yml"):
        log.warning(
            f"model '{cfg.name}': {cfg.source.name} gives no sha256, so {cfg.weights.name} is loaded unchecked; "
            f"add 'sha256: {actual}' once you trust the file"
        )
    return actual
