"""Choosing and loading the backend a model runs on: torch (GPU, fp16) or ONNX Runtime.

Each backend is imported lazily, so a user who never runs a YOLO model never
imports ultralytics (AGPL-3.0), and the ONNX path needs neither it nor torch.
"""

from __future__ import annotations

from typing import Any

from geovision.backends.base import Detector, Segmenter
from geovision.backends.registry import BACKENDS, backend, resolve
from geovision.config import ModelConfig, verify_weights
from geovision.errors import ModelError, installed, require


def choose_runtime(cfg: ModelConfig, device: str | None = None, runtime: str | None = "auto") -> str:
    """'onnx' or 'torch' for running ``cfg`` on ``device``.

    ``auto`` takes ONNX Runtime on the CPU (no torch import: faster to start
    and a third of the memory; docs/benchmarks.md) and torch on a GPU (fp16);
    a model that is an ONNX file always runs on ONNX Runtime.
    """
    runtime = runtime or "auto"
    if runtime not in ("auto", "torch", "onnx"):
        raise ModelError(f"unknown backend '{runtime}'; use auto, torch or onnx")
    if cfg.backend == "onnx":
        if runtime == "torch":
            raise ModelError(f"model '{cfg.name}' is an ONNX file; it runs on the onnx backend only")
        return "onnx"
    if runtime != "auto":
        return runtime
    if device and device != "auto":
        return "onnx" if device == "cpu" else "torch"
    from geovision.backends.device import cuda_present

    # without the torch extra a GPU machine still runs the model, on ONNX Runtime
    return "torch" if cuda_present() and installed("torch") else "onnx"


def runtime_config(
    cfg: ModelConfig, device: str | None = None, runtime: str | None = "auto", quantize: str | None = None
) -> ModelConfig:
    """``cfg`` as it will run, once its weights' hash is checked: itself for torch, its cached
    ONNX export for ONNX Runtime."""
    if choose_runtime(cfg, device, runtime) == "torch":
        if quantize:
            raise ModelError("`quantize` needs the onnx runtime (`runtime='onnx'`)")
        require("the torch backend", "torch", *(backend(cfg.backend, cfg.name).torch_modules or ("torch",)))
        verify_weights(cfg)
        return cfg
    from geovision.backends.export import cached_onnx

    return cached_onnx(cfg, quantize)


def load_segmenter(cfg: ModelConfig, device: str | None = None, threads: int | None = None) -> Segmenter:
    """The segmentation backend named by ``cfg.backend``, loaded on ``device``."""
    if cfg.task != "segment":
        raise ModelError(f"model '{cfg.name}' is a {cfg.task} model, not a segmenter")
    return _load(cfg, device, threads)  # type: ignore[no-any-return]


def load_detector(cfg: ModelConfig, device: str | None = None, threads: int | None = None) -> Detector:
    """The detector backend named by ``cfg.backend``, loaded on ``device``."""
    if cfg.task not in ("detect", "instance"):
        raise ModelError(f"model '{cfg.name}' is a {cfg.task} model, not a detector")
    return _load(cfg, device, threads)  # type: ignore[no-any-return]


def _load(cfg: ModelConfig, device: str | None, threads: int | None) -> Any:
    entry = backend(cfg.backend, cfg.name)
    if cfg.task not in entry.loaders:
        known = ", ".join(n for n, b in BACKENDS.items() if cfg.task in b.loaders)
        raise ModelError(f"model '{cfg.name}': the '{cfg.backend}' backend runs no {cfg.task} models (known: {known})")
    return resolve(entry.loaders[cfg.task])(cfg, device=device, threads=threads)


#: Models loaded in this process with ``reuse``, so that a worker loads each model once for all
#: its scenes or bands.
_LOADED: dict[tuple[Any, ...], Detector | Segmenter] = {}


def load_backend(
    cfg: ModelConfig,
    device: str | None = None,
    runtime: str | None = "auto",
    quantize: str | None = None,
    threads: int | None = None,
    reuse: bool = False,
) -> Detector | Segmenter:
    """The backend ``cfg`` runs on (see :func:`choose_runtime`), loaded on ``device`` once its
    weights' hash is checked; ``threads`` caps ONNX Runtime's CPU threads (a worker's share).
    ``reuse``: the one this process loaded before for the same model and settings (a worker's)."""
    key = (str(cfg.weights), cfg.sha256 or "", cfg.task, device, runtime, quantize, threads)
    if reuse and key in _LOADED:
        return _LOADED[key]
    cfg = runtime_config(cfg, device, runtime, quantize)
    loaded = load_segmenter(cfg, device, threads) if cfg.task == "segment" else load_detector(cfg, device, threads)
    if reuse:
        _LOADED[key] = loaded
    return loaded
