"""Choosing the compute device: CUDA when there is one, the CPU otherwise."""

from __future__ import annotations

from geovision.errors import GeovisionError


class DeviceError(GeovisionError, ValueError):
    """The requested device does not exist on this machine."""


def pick_device(requested: str | None = None) -> str:
    """A torch device string: ``requested`` if usable, else ``cuda`` if present, else ``cpu``."""
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    assert requested is not None
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{requested}' requested but CUDA is not available here; use --device cpu")
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device '{requested}' does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
            )
        return requested
    if requested == "cpu":
        return "cpu"
    raise DeviceError(f"unknown device '{requested}'; use auto, cpu, cuda or cuda:N")
