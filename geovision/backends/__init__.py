"""Model backends: turn batches of uint8 tiles into detections or class scores.

:mod:`.base` says what a backend is, :mod:`.loader` picks and loads one,
:mod:`.yolo` and :mod:`.smp` run on torch, :mod:`.onnx` on ONNX Runtime,
:mod:`.export` makes and caches the ONNX files, and :mod:`.device` picks the
device. These are the only modules that import torch, ultralytics or
onnxruntime (training aside).
"""

from geovision.backends.base import Detections, Detector, Segmenter
from geovision.backends.loader import choose_runtime, load_backend, runtime_config

__all__ = ["Detections", "Detector", "Segmenter", "choose_runtime", "load_backend", "runtime_config"]
