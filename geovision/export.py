"""Exporting a model package to ONNX, with its model YAML embedded as metadata.

The exported file describes itself: ``geovision detect --model model.onnx``
reads classes, tile size, resolution, bands and thresholds from the
``geovision`` metadata entry and runs it through ONNX Runtime, with neither
torch nor ultralytics needed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import yaml

from geovision.errors import ModelError, OutputError
from geovision.models import ModelConfig, config_to_dict, resolve_model, verify_weights

METADATA_KEY = "geovision"


def export_onnx(
    model: str | os.PathLike[str] | ModelConfig,
    output: str | os.PathLike[str] | None = None,
    opset: int = 17,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as ONNX (dynamic batch) and return its path.

    The default output is the weights' path with an ``.onnx`` suffix.
    """
    cfg = model if isinstance(model, ModelConfig) else resolve_model(model)
    if cfg.backend != "yolo":
        raise ModelError(f"model '{cfg.name}': export supports the yolo backend, not '{cfg.backend}'")
    verify_weights(cfg)
    out = Path(output) if output else cfg.weights.with_suffix(".onnx")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder {out.parent} does not exist")
    from geovision.backends.yolo import load_yolo

    with tempfile.TemporaryDirectory(prefix="geovision-export-") as tmp:
        work = Path(tmp) / "model.pt"
        shutil.copyfile(cfg.weights, work)
        exported = Path(
            load_yolo(work).export(
                format="onnx",
                imgsz=cfg.tile_size,
                dynamic=True,
                simplify=False,
                opset=opset,
                device="cpu",
                verbose=False,
            )
        )
        embed_config(exported, cfg)
        tmp_out = out.with_name(f".{out.name}.tmp")
        shutil.copyfile(exported, tmp_out)
        os.replace(tmp_out, out)
    return out


def embed_config(onnx_path: Path, cfg: ModelConfig) -> None:
    """Add the model YAML to an ONNX file's metadata (weights: the file itself)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    data = config_to_dict(cfg)
    data.update(weights=".", sha256=None, backend="onnx", source_backend=cfg.backend)
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, yaml.safe_dump(data, sort_keys=False)
    onnx.save(proto, str(onnx_path))


def read_onnx_config(path: Path) -> ModelConfig:
    """The model config embedded in an ONNX file exported by geovision."""
    from geovision.models import config_from_dict

    try:
        import onnxruntime as ort

        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelError(f"{path.name}: not a loadable ONNX model ({str(e).splitlines()[0]})") from e
    text = meta.custom_metadata_map.get(METADATA_KEY)
    if not text:
        raise ModelError(f"{path.name}: ONNX file has no geovision metadata; export it with `geovision export`")
    raw = yaml.safe_load(text)
    raw["weights"] = str(path.resolve())
    return config_from_dict(raw, path.resolve())


ExportFormat = Literal["onnx"]
