"""ONNX Runtime backend: detectors and segmenters without torch or ultralytics.

Sessions run with every graph optimisation on and as many intra-op threads
as this process may use; CUDA is used when ONNX Runtime has its provider and
a GPU is there, the CPU otherwise. Input buffers are allocated once per batch
size and reused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from geovision.backends.base import Detections, decode, decode_instances
from geovision.backends.device import usable_cores
from geovision.config import ModelConfig
from geovision.errors import DeviceError, WeightsError, first_line


def open_session(cfg: ModelConfig, device: str | None, threads: int | None = None) -> tuple[Any, str]:
    """An ONNX Runtime session for ``cfg.weights`` and the device it runs on ('cpu' or 'cuda').

    ``threads``: CPU threads for the model (a batch worker's share of the cores); None: all usable.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    wants_cuda = device is not None and device.startswith("cuda")
    if wants_cuda and "CUDAExecutionProvider" not in available:
        raise DeviceError(f"device '{device}' requested but ONNX Runtime has no CUDA provider here; use `device='cpu'`")
    use_cuda = wants_cuda or (device in (None, "", "auto") and "CUDAExecutionProvider" in available)
    providers: list[Any] = ["CPUExecutionProvider"]
    if use_cuda:
        index = int(device.split(":")[1]) if device and ":" in device else 0
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cores()
    options.log_severity_level = 3  # errors only: ORT warns about unused initialisers on stderr
    try:
        session = ort.InferenceSession(os.fspath(cfg.weights), options, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise WeightsError(f"{cfg.weights.name}: not a loadable ONNX model ({first_line(e)})") from e
    return session, "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"


class _OnnxModel:
    """A session and the conversion of uint8 NHWC tiles to what its input wants."""

    def __init__(self, cfg: ModelConfig, device: str | None, threads: int | None = None) -> None:
        self.cfg = cfg
        self.session, self.device = open_session(cfg, device, threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        # geovision's segmenters take the uint8 tiles; YOLO graphs take float NCHW in 0-1.
        self.raw_input = "uint8" in inp.type
        self.dtype = np.float16 if "float16" in inp.type else np.float32
        self._buffer: np.ndarray | None = None

    def fit_batch(self, base: int) -> int:
        """The model's own batch: ONNX Runtime's GPU memory is not measured here."""
        return base

    def run(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.raw_input:
            x = np.stack(images)
        else:
            n, (h, w, c) = len(images), images[0].shape
            if self._buffer is None or self._buffer.shape[0] < n or self._buffer.shape[2:] != (h, w):
                self._buffer = np.empty((max(n, self.cfg.batch_size), c, h, w), self.dtype)
            x = self._buffer[:n]
            for slot, image in zip(x, images):
                np.multiply(image.transpose(2, 0, 1), 1 / 255, out=slot, dtype=self.dtype)
        return list(self.session.run(None, {self.input_name: x}))


class OnnxDetector(_OnnxModel):
    """Batched YOLO detection (boxes, or boxes with outlines) through ONNX Runtime."""

    def __init__(self, cfg: ModelConfig, device: str | None = None, threads: int | None = None) -> None:
        super().__init__(cfg, device, threads)
        self.end2end = cfg.end2end

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, iou: float | None = None
    ) -> list[Detections]:
        if not images:
            return []
        outputs = self.run(images)
        c = self.cfg
        conf = c.confidence if confidence is None else confidence
        iou = c.iou if iou is None else iou
        if c.task == "instance":  # (predictions, prototypes)
            return [decode_instances(o, p, conf, iou, c.tile_size) for o, p in zip(*outputs[:2])]
        return [decode(o, conf, iou, c.tile_size, self.end2end) for o in outputs[0]]


class OnnxSegmenter(_OnnxModel):
    """Batched semantic segmentation through ONNX Runtime: probabilities, background first."""

    def segment(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.run(images)[0]
