"""YOLO detection through ultralytics (AGPL-3.0; imported only here and in training).

Tiles go through the network in batches as one tensor, under
``torch.inference_mode``, in half precision on CUDA. The raw head output is
decoded by :mod:`geovision.backends.base` (shared with the ONNX
backend), which skips the per-image letterboxing of ultralytics' predictor:
our tiles already have the model's input size.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geovision.backends.base import Detections, decode, decode_instances
from geovision.config import ModelConfig
from geovision.errors import WeightsError, first_line, require


def batched_nms_torchvision(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """:func:`batched_nms` by torchvision.ops (the torch backend's choice)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    import torch
    from torchvision.ops import batched_nms as tv_batched_nms

    kept = tv_batched_nms(
        torch.as_tensor(boxes, dtype=torch.float64),
        torch.as_tensor(scores, dtype=torch.float64),
        torch.as_tensor(classes, dtype=torch.int64),
        iou,
    )
    return kept.numpy()


#: what ultralytics reads once, when it is imported: no network (update checks, analytics), no banner
_IMPORT_ENV = {"YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False"}


@contextlib.contextmanager
def _import_environment() -> Iterator[None]:
    """The one place geovision sets environment variables: for the length of ultralytics' import.

    Variables the user set are left as they are; every variable is as it was
    afterwards (ultralytics also sets OMP_NUM_THREADS=1 when it is unset, which
    every process started from this one would inherit, so inference would run
    on one core).
    """
    names = [*_IMPORT_ENV, "OMP_NUM_THREADS"]
    saved = {k: os.environ.get(k) for k in names}
    for k, v in _IMPORT_ENV.items():
        if saved[k] is None:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, before in saved.items():
            if before is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = before


def import_ultralytics() -> Any:
    """Import ultralytics with every network call switched off, and the environment left as it was.

    ``YOLO_OFFLINE`` (read once, at import) stops its update checks and
    analytics without touching the user's own ultralytics settings file (which
    ``settings.update`` would rewrite). torch is loaded first, so that its
    OpenMP never sees ultralytics' OMP_NUM_THREADS=1.
    """
    require("YOLO .pt weights", "torch", "torch", "ultralytics")
    try:
        with _import_environment():
            import torch  # noqa: F401 - before ultralytics changes OMP_NUM_THREADS
            import ultralytics
    except ImportError as e:  # pragma: no cover - installed, yet broken
        raise WeightsError(f"ultralytics is installed but cannot be imported ({first_line(e)})") from e
    return ultralytics


#: modules whose classes an ultralytics checkpoint may name: network layers and model classes
SAFE_MODULES = ("torch.nn.modules.", "ultralytics.nn.modules.", "ultralytics.nn.tasks.")


def check_checkpoint(path: Path) -> None:
    """Refuse a pickled checkpoint that names anything but network classes.

    ultralytics loads ``.pt`` files with a full unpickler, which runs whatever
    function the file names. Before that, the file is read by torch's
    restricted unpickler with only the torch and ultralytics ``nn.Module``
    classes that it names allowed; anything else (``os.system``, ``eval``, a
    function of any module) is refused without being called.
    """
    import importlib

    import torch
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    def allowed(name: str) -> type | None:
        module, _, attr = name.rpartition(".")
        if not name.startswith(SAFE_MODULES):
            return None
        obj = getattr(importlib.import_module(module), attr, None)
        return obj if isinstance(obj, type) and issubclass(obj, torch.nn.Module) else None

    try:
        names = get_unsafe_globals_in_checkpoint(str(path))
        classes = {n: allowed(n) for n in names}
        refused = sorted(n for n, c in classes.items() if c is None)
        if refused:
            raise WeightsError(
                f"{path.name}: loading it would call {refused[0]}, which is not part of a network; refused "
                "(pass `trust=True` if you know where the file comes from)"
            )
        with safe_globals([c for c in classes.values() if c is not None]):
            torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - torch and pickle raise many kinds for a bad file
        raise WeightsError(f"{path.name}: not a loadable YOLO weights file ({first_line(e)})") from e


def load_yolo(path: Path, trusted: bool = False) -> Any:
    """An ultralytics YOLO object for ``path``; a bad or unsafe file becomes a WeightsError."""
    ultralytics = import_ultralytics()
    if not trusted:
        check_checkpoint(path)
    try:
        return ultralytics.YOLO(str(path))
    except Exception as e:  # noqa: BLE001 - torch/pickle raise many kinds for a bad file
        raise WeightsError(f"{path.name}: not a loadable YOLO weights file ({first_line(e)})") from e


def read_checkpoint_meta(path: Path, trusted: bool = False) -> tuple[list[str], int, str]:
    """Class names, training image size and task stored in an ultralytics checkpoint."""
    model = load_yolo(path, trusted)
    names = [model.names[i] for i in sorted(model.names)]
    imgsz = model.overrides.get("imgsz", 640)
    if isinstance(imgsz, (list, tuple)):
        imgsz = max(imgsz)
    return names, int(imgsz), str(model.task)


class YoloDetector:
    """Batched YOLO inference on uint8 RGB tiles of the model's input size."""

    def __init__(self, cfg: ModelConfig, device: str | None = None, threads: int | None = None) -> None:
        import torch

        from geovision.backends.device import pick_device, torch_threads

        self.cfg = cfg
        self.device = pick_device(device)
        torch_threads(self.device, threads)
        yolo = load_yolo(cfg.weights, cfg.trusted)
        expected = "segment" if cfg.task == "instance" else "detect"
        if yolo.task != expected:
            raise WeightsError(f"{cfg.weights.name}: a YOLO '{yolo.task}' model; the model YAML says {cfg.task}")
        self.instances = cfg.task == "instance"
        n_classes = len(yolo.names)
        if n_classes != len(cfg.classes):
            raise WeightsError(
                f"{cfg.weights.name}: weights have {n_classes} classes, the model YAML lists {len(cfg.classes)}"
            )
        net = yolo.model
        net = net.fuse() if hasattr(net, "fuse") else net
        net.eval().to(self.device)
        self.half = self.device.startswith("cuda")
        if self.half:
            net.half()
        head = net.model[-1] if hasattr(net, "model") else None
        self.end2end = bool(getattr(head, "end2end", False))
        self.net = net
        self.torch = torch

    def fit_batch(self, base: int) -> int:
        """On CUDA, the batch size that fits half of the free GPU memory (measured on blank tiles)."""
        from geovision.backends.device import cuda_batch_size

        return cuda_batch_size(self.detect, self.cfg, base, self.device)

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, iou: float | None = None
    ) -> list[Detections]:
        conf = self.cfg.confidence if confidence is None else confidence
        iou = self.cfg.iou if iou is None else iou
        if not images:
            return []
        torch = self.torch
        batch = torch.from_numpy(np.stack(images))
        if self.half:  # on CUDA: copy from page-locked memory, without waiting for it
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True)
        with torch.inference_mode():
            x = batch.permute(0, 3, 1, 2)
            x = x.half() if self.half else x.float()
            x = x / 255.0
            out = self.net(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            if self.instances:  # ((predictions, prototypes), raw)
                preds, proto = (t.float().cpu().numpy() for t in out)
                size = self.cfg.tile_size
                return [decode_instances(o, p, conf, iou, size, batched_nms_torchvision) for o, p in zip(preds, proto)]
            if isinstance(out, dict):  # end-to-end heads may return a dict of branches
                out = out.get("one2one", next(iter(out.values())))
                out = out[0] if isinstance(out, (list, tuple)) else out
            raw = out.float().cpu().numpy()
        return [decode(o, conf, iou, self.cfg.tile_size, self.end2end, batched_nms_torchvision) for o in raw]
