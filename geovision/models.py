"""Model registry: named models and model YAML files.

A model YAML is the single description of a model: task, backend, weights
and their sha256, classes, tile size, overlap, ground resolution, bands,
normalisation and thresholds. ``--model NAME`` looks for ``NAME.yaml`` or a
model package ``NAME/model.yaml`` (what ``geovision train`` writes) in the
model search path (``$GEOVISION_MODELS``, then the repository's
``configs/models``); ``--model PATH`` takes a YAML file, a package folder or a
weights file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from geovision.errors import ModelError, WeightsError
from geovision.raster import Normalization

#: detect: boxes; segment: per-pixel classes (semantic); instance: one outline per object (YOLO-seg).
Task = Literal["detect", "segment", "instance"]

#: the shipped packages: configs/models/ of a checkout, geovision/configs/models/ of an installed wheel
_IN_WHEEL = Path(__file__).resolve().parent / "configs" / "models"
BUILTIN_MODELS_DIR = _IN_WHEEL if _IN_WHEEL.is_dir() else Path(__file__).resolve().parent.parent / "configs" / "models"
WEIGHT_SUFFIXES = {".pt", ".pth", ".onnx"}
#: what a model name looks like: no folder separators, no "..", nothing that makes it a path
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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
    confidence: float = 0.25
    iou: float = 0.5
    batch_size: int = 8
    description: str = ""
    source: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
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


def model_dirs() -> list[Path]:
    """Folders searched for named models, first match wins."""
    env = os.environ.get("GEOVISION_MODELS", "")
    dirs = [Path(p) for p in env.split(os.pathsep) if p]
    return [*dirs, BUILTIN_MODELS_DIR]


def list_models() -> list[ModelConfig]:
    """Every named model in the search path (a name shadowed by an earlier folder is skipped)."""
    seen: dict[str, ModelConfig] = {}
    for d in model_dirs():
        for name in _names_in(d):
            if name not in seen:
                path = _named_model_file(d, name)
                if path is not None:
                    seen[name] = load_config(path)
    return [seen[n] for n in sorted(seen)]


def _names_in(folder: Path) -> set[str]:
    """Model names in one search folder: ``NAME.yaml`` files and ``NAME/model.yaml`` packages."""
    if not folder.is_dir():
        return set()
    files = {p.stem for p in folder.glob("*.yaml")}
    packages = {p.parent.name for p in folder.glob("*/model.yaml") if not p.parent.name.startswith(".")}
    return files | packages


def _named_model_file(folder: Path, name: str) -> Path | None:
    """The YAML for ``name`` in ``folder``: ``NAME.yaml`` first, then ``NAME/model.yaml``."""
    for candidate in (folder / f"{name}.yaml", folder / name / "model.yaml"):
        if candidate.is_file():
            return candidate
    return None


def resolve_model(spec: str | os.PathLike[str], trust: bool = False) -> ModelConfig:
    """A model from a name, a YAML path, or a weights path.

    ``trust`` lets a pickled ultralytics checkpoint that names more than
    network layers be loaded (it can run code): for files whose source the
    user knows, never the default.
    """
    p = Path(spec)
    if p.suffix.lower() in {".yaml", ".yml"}:
        if not p.is_file():
            raise ModelError(f"model file {p} does not exist")
        return replace(load_config(p), trusted=trust)
    if p.suffix.lower() in WEIGHT_SUFFIXES:
        if not p.is_file():
            raise WeightsError(f"weights file {p} does not exist")
        return config_from_weights(p, trust)
    if p.is_dir() and (p / "model.yaml").is_file():
        return replace(load_config(p / "model.yaml"), trusted=trust)
    if MODEL_NAME.fullmatch(str(spec)):  # a name, never a path that leaves the search folders
        for d in model_dirs():
            candidate = _named_model_file(d, str(spec))
            if candidate is not None:
                return replace(load_config(candidate), trusted=trust)
    known = ", ".join(m.name for m in list_models()) or "none"
    raise ModelError(f"unknown model '{spec}'; known models: {known} (or pass a model YAML or weights path)")


def load_config(path: Path) -> ModelConfig:
    """Parse and validate a model YAML; relative weights paths are resolved against it."""
    path = Path(path).resolve()
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
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
            confidence=float(raw.get("confidence", 0.25)),
            iou=float(raw.get("iou", 0.5)),
            batch_size=int(raw.get("batch_size", 8)),
            description=str(raw.get("description", "")),
            source=path,
            extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS},
        )
    except (TypeError, ValueError) as e:
        raise ModelError(f"{path}: invalid model YAML ({e})") from e
    if not 0 <= cfg.overlap < cfg.tile_size:
        raise ModelError(f"{path}: overlap must be in [0, tile_size)")
    return cfg


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
}


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
    out.update(cfg.extra)
    return out


def config_from_weights(path: Path, trust: bool = False) -> ModelConfig:
    """A config for a bare weights file: an ONNX file exported by geovision, or an
    ultralytics ``.pt`` read at the raster's own resolution."""
    path = path.resolve()
    if path.suffix.lower() == ".onnx":
        from geovision.export import read_onnx_config

        return read_onnx_config(path)
    if path.suffix.lower() != ".pt":
        raise ModelError(f"{path}: bare weights must be an ultralytics .pt file; use a model YAML otherwise")
    from geovision.backends.yolo import read_checkpoint_meta

    names, imgsz, task = read_checkpoint_meta(path, trust)
    return ModelConfig(
        name=path.stem,
        task="instance" if task == "segment" else "detect",
        backend="yolo",
        weights=path,
        classes=tuple(names),
        tile_size=imgsz,
        overlap=max(0, imgsz // 10),
        resolution_m=None,
        sha256=None,
        source=None,
        trusted=trust,
    )


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
        logging.getLogger("geovision").warning(
            f"model '{cfg.name}': {cfg.source.name} gives no sha256, so {cfg.weights.name} is loaded unchecked; "
            f"add 'sha256: {actual}' once you trust the file"
        )
    return actual
