"""ONNX Runtime backend: YOLO detectors and instance segmenters without torch or ultralytics.

The session runs with every graph optimisation on and as many intra-op
threads as there are cores; CUDA is used when ONNX Runtime has its provider
and a GPU is there, the CPU otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from geovision.backends import Detections
from geovision.backends.yolo_output import decode, decode_instances
from geovision.device import DeviceError
from geovision.errors import WeightsError
from geovision.models import ModelConfig


class OnnxDetector:
    """Batched ONNX Runtime inference on uint8 RGB tiles of the model's input size."""

    def __init__(self, cfg: ModelConfig, device: str | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wants_cuda = device is not None and device.startswith("cuda")
        if wants_cuda and "CUDAExecutionProvider" not in available:
            raise DeviceError(
                f"device '{device}' requested but ONNX Runtime has no CUDA provider here; use --device cpu"
            )
        use_cuda = "CUDAExecutionProvider" in available and device in (None, "auto") or wants_cuda
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        )
        try:
            self.session = ort.InferenceSession(str(cfg.weights), options, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            raise WeightsError(f"{cfg.weights.name}: not a loadable ONNX model ({str(e).splitlines()[0]})") from e
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.dtype = np.float16 if "float16" in inp.type else np.float32
        self.cfg = cfg
        self.end2end = bool(cfg.extra.get("end2end", False))

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        x = np.multiply(np.stack(images).transpose(0, 3, 1, 2), 1 / 255, dtype=self.dtype)
        outputs = self.session.run(None, {self.input_name: x})
        c = self.cfg
        if c.task == "instance":  # (predictions, prototypes)
            return [decode_instances(o, p, c.confidence, c.iou, c.tile_size) for o, p in zip(*outputs[:2])]
        return [decode(o, c.confidence, c.iou, c.tile_size, self.end2end) for o in outputs[0]]
