"""Named models: where ``--model NAME`` looks, and what a model argument resolves to.

``--model NAME`` looks for ``NAME.yaml`` or a model package ``NAME/model.yaml``
(what ``geovision train`` writes) in the model search path
(``$GEOVISION_MODELS``, then the shipped packages); ``--model PATH`` takes a
YAML file, a package folder or a weights file (an ONNX file exported by
geovision, or an ultralytics ``.pt``).
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from geovision.config import ModelConfig, load_config
from geovision.errors import ModelError, WeightsError

#: the shipped packages: configs/models/ of a checkout, geovision/configs/models/ of an installed wheel
_IN_WHEEL = Path(__file__).resolve().parent / "configs" / "models"
BUILTIN_MODELS_DIR = _IN_WHEEL if _IN_WHEEL.is_dir() else Path(__file__).resolve().parent.parent / "configs" / "models"
WEIGHT_SUFFIXES = {".pt", ".pth", ".onnx"}
#: what a model name looks like: no folder separators, no "..", nothing that makes it a path
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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


def config_from_weights(path: Path, trust: bool = False) -> ModelConfig:
    """A config for a bare weights file: an ONNX file exported by geovision, or an
    ultralytics ``.pt`` read at the raster's own resolution."""
    path = path.resolve()
    if path.suffix.lower() == ".onnx":
        from geovision.backends.export import read_onnx_config

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
