"""Exporting a model package to ONNX, with its model YAML embedded as metadata.

The exported file describes itself: ``geovision detect --model model.onnx``
reads classes, tile size, resolution, bands and thresholds from the
``geovision`` metadata entry and runs it through ONNX Runtime, with neither
torch nor ultralytics needed.

:func:`cached_onnx` is what ``detect`` uses on the CPU: the package's weights
exported once into a user cache folder under the name of their sha256 (and
quantised to int8 on request), so later runs import neither torch nor
ultralytics.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import yaml

from geovision.backends.registry import BACKENDS, backend, resolve
from geovision.config import ModelConfig, config_from_dict, config_to_dict, sha256_file, verify_weights
from geovision.errors import ModelError, OutputError, WeightsError, first_line, require
from geovision.writers import atomic_output

METADATA_KEY = "geovision"
log = logging.getLogger("geovision")


def export_onnx(
    cfg: ModelConfig,
    output: str | os.PathLike[str] | None = None,
    opset: int = 17,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as ONNX (dynamic batch) and return its path.

    The default output is the weights' path with an ``.onnx`` suffix. YOLO
    models take float NCHW tiles scaled to 0-1; segmenters take the uint8
    NHWC tiles themselves and hand back probabilities (background first),
    their normalisation and activation being part of the graph.
    """
    entry = backend(cfg.backend, cfg.name)
    if entry.exporter is None:
        known = ", ".join(n for n, b in BACKENDS.items() if b.exporter)
        raise ModelError(f"model '{cfg.name}': cannot export the '{cfg.backend}' backend (known: {known})")
    require(f"exporting model '{cfg.name}' to ONNX", "torch", *entry.torch_modules)
    exporter = resolve(entry.exporter)
    verify_weights(cfg)
    out = Path(output) if output else cfg.weights.with_suffix(".onnx")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} already exists; pass `overwrite=True` to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder {out.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix="geovision-export-") as tmp:
        exported = exporter(cfg, Path(tmp), opset)
        embed_config(exported, cfg)
        _publish(exported, out)
    return out


def export_yolo_graph(cfg: ModelConfig, tmp: Path, opset: int) -> Path:
    """A YOLO model's ONNX graph, written by ultralytics into ``tmp``."""
    from geovision.backends.yolo import load_yolo

    work = tmp / cfg.weights.name  # ultralytics writes the export beside the weights: not in the package
    shutil.copyfile(cfg.weights, work)
    try:
        yolo = load_yolo(work, cfg.trusted)
    except WeightsError as e:
        raise WeightsError(str(e).replace(str(work), str(cfg.weights))) from e
    return Path(
        yolo.export(
            format="onnx", imgsz=cfg.tile_size, dynamic=True, simplify=False, opset=opset, device="cpu", verbose=False
        )
    )


def export_smp_graph(cfg: ModelConfig, tmp: Path, opset: int) -> Path:
    """An smp network's ONNX graph (a segmenter's probabilities, or a centre detector's boxes) in ``tmp``."""
    import torch

    from geovision.backends.centres import CentreDetector
    from geovision.backends.smp import SmpSegmenter

    if cfg.task == "detect":  # a centre detector: every pixel's box and peak score, as a YOLO head gives
        wrapped, output = CentreDetector(cfg, device="cpu").module.eval(), "boxes"
    else:
        wrapped, output = SmpSegmenter(cfg, device="cpu").as_module().eval(), "probs"
    example = torch.zeros(1, cfg.tile_size, cfg.tile_size, cfg.in_channels, dtype=torch.uint8)
    path = tmp / "model.onnx"
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; the new one needs onnxscript
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=["images"],
            output_names=[output],
            dynamic_axes={"images": {0: "batch"}, output: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def _publish(src: Path, out: Path) -> None:
    """Copy ``src`` to ``out`` through a temporary name, so ``out`` is never half written."""
    with atomic_output(out) as tmp:
        shutil.copyfile(src, tmp)


def cache_dir() -> Path:
    """Where exported models are kept: ``$GEOVISION_CACHE``, else the user's cache folder."""
    env = os.environ.get("GEOVISION_CACHE")
    if env:
        return Path(env)
    base = (
        os.environ.get("XDG_CACHE_HOME")
        or (os.environ.get("LOCALAPPDATA") if os.name == "nt" else None)
        or Path.home() / ".cache"
    )
    return Path(base) / "geovision" / "onnx"


def cached_onnx(cfg: ModelConfig, quantize: str | None = None) -> ModelConfig:
    """``cfg`` as an ONNX model: exported on first use, found by the weights' sha256 afterwards.

    An ONNX model is returned as it is (quantised on request).
    """
    digest = verify_weights(cfg)
    packaged = packaged_onnx(cfg) if cfg.backend != "onnx" else None
    if cfg.backend == "onnx":
        source = cfg.weights
    elif packaged is not None:
        source = packaged
    else:
        source = cache_dir() / f"{digest}.onnx"
        if not _intact(source):
            _make_cache_dir()
            started = time.perf_counter()
            export_onnx(cfg, source, overwrite=True)
            _seal(source)
            log.info(
                "exported model '%s' to ONNX once (%.1f s), cached as %s",
                cfg.name,
                time.perf_counter() - started,
                source,
            )
    if quantize is None:
        return _running_on(cfg, source)
    if quantize != "int8":
        raise ModelError(f"unknown quantisation '{quantize}' (known: int8)")
    target = cache_dir() / f"{digest}.int8.onnx"
    if not _intact(target):
        _make_cache_dir()
        quantize_int8(source, target)
        _seal(target)
        log.info("quantised model '%s' to int8 once, cached as %s", cfg.name, target)
    return _running_on(cfg, target)


def packaged_onnx(cfg: ModelConfig) -> Path | None:
    """The ONNX export a model package carries (``onnx:`` in its YAML), checked against ``onnx_sha256``.

    Shipped packages carry one, so that detection runs on ONNX Runtime with
    neither torch nor ultralytics installed and nothing to export first.
    """
    packaged = cfg.packaged_onnx
    if packaged is None or cfg.source is None:
        return None
    path = cfg.source.parent / packaged.file
    if not path.is_file():
        raise WeightsError(f"model '{cfg.name}': its ONNX export {path} does not exist")
    if not packaged.sha256 or sha256_file(path) != packaged.sha256.lower():
        raise WeightsError(
            f"model '{cfg.name}': {path.name} does not match the model YAML's onnx_sha256; "
            "the file is corrupt or was replaced (`package_onnx(MODEL)` makes it again)"
        )
    return path


def package_onnx(cfg: ModelConfig, overwrite: bool = False) -> Path:
    """Export a model package's weights to ``model.onnx`` beside them and record it in its YAML.

    The package then runs on machines without torch (``pip install geovision``).
    """
    if cfg.source is None or cfg.source.suffix.lower() not in (".yaml", ".yml"):
        raise ModelError(f"model '{cfg.name}': `package_onnx` needs a model described by a YAML file")
    out = cfg.source.parent / "model.onnx"
    export_onnx(cfg, out, overwrite=overwrite)
    raw = yaml.safe_load(cfg.source.read_text())
    raw.update(onnx=out.name, onnx_sha256=sha256_file(out))
    with atomic_output(cfg.source) as tmp:
        Path(tmp).write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def _intact(cached: Path) -> bool:
    """Whether a cached export is there and is the file that was written (its sha256 beside it).

    A damaged or altered export would run and quietly find nothing; it is
    made again instead.
    """
    if not cached.is_file():
        return False
    seal = cached.with_name(cached.name + ".sha256")
    recorded = seal.read_text().strip() if seal.is_file() else None
    if recorded == sha256_file(cached):
        return True
    log.warning("cached export %s does not match its recorded sha256; exporting it again", cached)
    return False


def _seal(cached: Path) -> None:
    """Record the sha256 of a new cached export beside it."""
    with atomic_output(cached.with_name(cached.name + ".sha256")) as tmp:
        Path(tmp).write_text(sha256_file(cached) + "\n")


def _running_on(cfg: ModelConfig, onnx_file: Path) -> ModelConfig:
    """``cfg`` (thresholds, bands and batch size as the user set them) run from ``onnx_file``."""
    return replace(cfg, backend="onnx", weights=onnx_file.resolve(), sha256=None)


def _make_cache_dir() -> None:
    """Make the cache folder, or refuse before an export is wasted on a folder that cannot take it."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the model cache {folder} ({e.strerror}); set GEOVISION_CACHE") from e
    if not os.access(folder, os.W_OK):
        raise OutputError(f"the model cache {folder} is not writable; set GEOVISION_CACHE to a folder that is")


class _FromOnnxRuntime(logging.Filter):
    """Lets through every record but those logged by onnxruntime's own modules."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in Path(record.pathname).parts


def quantize_int8(source: Path, out: Path) -> Path:
    """Dynamic int8 quantisation of the weights (activations stay float), metadata kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="geovision-int8-") as tmp:
        work = Path(tmp) / "int8.onnx"
        # The quantiser warns through logging.warning() about the uint8 input. Its records alone
        # are dropped, for this call alone (logging.disable would silence every logger of the
        # process meanwhile), and a handler held on the root logger keeps logging.warning() from
        # calling basicConfig(), which would print every later log line of the process twice.
        quiet, placeholder = _FromOnnxRuntime(), logging.NullHandler()
        logging.root.addFilter(quiet)
        logging.root.addHandler(placeholder)
        try:
            quantize_dynamic(str(source), str(work), weight_type=QuantType.QUInt8)
        finally:
            logging.root.removeHandler(placeholder)
            logging.root.removeFilter(quiet)
        _copy_metadata(source, work)
        _publish(work, out)
    return out


def _copy_metadata(source: Path, target: Path) -> None:
    import onnx

    src, dst = onnx.load(str(source)), onnx.load(str(target))
    kept = {p.key for p in dst.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in kept:
            entry = dst.metadata_props.add()
            entry.key, entry.value = prop.key, prop.value
    onnx.save(dst, str(target))


def embed_config(onnx_path: Path, cfg: ModelConfig) -> None:
    """Add the model YAML to an ONNX file's metadata (weights: the file itself)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    # the package's own export (packaged_onnx) is not a setting of the export itself
    data = config_to_dict(replace(cfg, packaged_onnx=None))
    data.update(weights=".", sha256=None, backend="onnx", source_backend=cfg.backend)
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, yaml.safe_dump(data, sort_keys=False)
    onnx.save(proto, str(onnx_path))


def read_onnx_config(path: Path) -> ModelConfig:
    """The model config embedded in an ONNX file exported by geovision."""
    try:
        import onnxruntime as ort

        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise WeightsError(f"{path.name}: not a loadable ONNX model ({first_line(e)})") from e
    text = meta.custom_metadata_map.get(METADATA_KEY)
    if not text:
        raise ModelError(f"{path.name}: ONNX file has no geovision metadata; export it with `export_onnx`")
    raw = yaml.safe_load(text)
    raw["weights"] = str(path.resolve())
    return config_from_dict(raw, path.resolve())
