"""The backends a model YAML may name, in one table: what loads each task, what exports it, what
it needs, what trains it.

Entries name their classes and functions as ``module:attribute`` strings,
imported only when used, so that naming ``yolo`` here imports no ultralytics
(AGPL-3.0) and a run on ONNX Runtime needs neither it nor torch. A new
backend is one entry here (and its module).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from geovision.errors import ModelError


@dataclass(frozen=True)
class Backend:
    """One backend: its loaders by task, its ONNX exporter, and the modules it runs on with torch."""

    loaders: dict[str, str]  # task -> "module:Class", called as Class(cfg, device=..., threads=...)
    exporter: str | None = None  # "module:function(cfg, folder, opset) -> ONNX path"
    torch_modules: tuple[str, ...] = field(default=())  # what running it on torch needs (the torch extra)
    trainers: dict[str, str] = field(default_factory=dict)  # task -> "module:Trainer" (training.run.Trainer)


BACKENDS: dict[str, Backend] = {
    "yolo": Backend(
        loaders={"detect": "geovision.backends.yolo:YoloDetector", "instance": "geovision.backends.yolo:YoloDetector"},
        exporter="geovision.backends.export:export_yolo_graph",
        torch_modules=("torch", "ultralytics"),
        trainers={"detect": "geovision.training.yolo:YoloTrainer", "instance": "geovision.training.yolo:YoloTrainer"},
    ),
    "smp": Backend(
        # segmenters, and centre detectors on an smp network
        loaders={
            "segment": "geovision.backends.smp:SmpSegmenter",
            "detect": "geovision.backends.centres:CentreDetector",
        },
        exporter="geovision.backends.export:export_smp_graph",
        torch_modules=("torch", "segmentation_models_pytorch"),
        trainers={
            "segment": "geovision.training.smp:SegmenterTrainer",
            "detect": "geovision.training.centres:CentreTrainer",
        },
    ),
    "onnx": Backend(
        loaders={
            "segment": "geovision.backends.onnx:OnnxSegmenter",
            "detect": "geovision.backends.onnx:OnnxDetector",
            "instance": "geovision.backends.onnx:OnnxDetector",
        }
    ),
}


def backend(name: str, model: str) -> Backend:
    """The entry for ``name``, or one line naming the backends there are."""
    if name not in BACKENDS:
        raise ModelError(f"model '{model}': unknown backend '{name}' (known: {', '.join(BACKENDS)})")
    return BACKENDS[name]


def resolve(target: str) -> Any:
    """The class or function a ``module:attribute`` string names, imported now."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
