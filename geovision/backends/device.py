"""Choosing the compute device: CUDA when there is one, the CPU otherwise."""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from geovision.errors import DeviceError

if TYPE_CHECKING:
    from geovision.config import ModelConfig


def pick_device(requested: str | None = None) -> str:
    """A torch device string: ``requested`` if usable, else ``cuda`` if present, else ``cpu``."""
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    assert requested is not None
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{requested}' requested but CUDA is not available here; use `device='cpu'`")
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device '{requested}' does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
            )
        return requested
    if requested == "cpu":
        return "cpu"
    raise DeviceError(f"unknown device '{requested}'; use auto, cpu, cuda or cuda:N")


def cuda_present() -> bool:
    """Whether a CUDA GPU is usable."""
    return cuda_devices() > 0


@functools.cache
def cuda_devices() -> int:
    """CUDA GPUs this process may use (CUDA_VISIBLE_DEVICES counts), asked of the driver itself
    so that torch is not imported (importing it costs seconds, and the CPU path never needs it)."""
    names = ("nvcuda.dll",) if os.name == "nt" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        ok = lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0
        return count.value if ok else 0
    return 0


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def torch_threads(device: str, threads: int | None) -> None:
    """Give torch ``threads`` CPU threads on the CPU, when a caller hands out shares of the cores
    (a batch worker process); None leaves torch's own choice."""
    if threads and device == "cpu":
        import torch

        torch.set_num_threads(threads)


def fit_batch(base: int, bytes_per_tile: float, free_bytes: int, share: float = 0.5, cap: int = 64) -> int:
    """The largest batch, a multiple of ``base`` up to ``cap``, whose working memory takes at most
    ``share`` of the free GPU memory (never less than ``base``)."""
    if bytes_per_tile <= 0:
        return base
    fits = int(share * free_bytes // bytes_per_tile)
    return max(base, min(cap, fits) // base * base)


def cuda_batch_size(run: Callable[[list[np.ndarray]], object], cfg: ModelConfig, base: int, device: str) -> int:
    """A batch size for ``device`` measured, not guessed: ``run`` is given one batch of ``base``
    blank tiles of ``cfg``'s size, its peak memory per tile read back, and the batch grown to fit
    half of what is free."""
    import torch

    blank = np.zeros((cfg.tile_size, cfg.tile_size, cfg.in_channels), np.uint8)

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run([blank] * base)
    torch.cuda.synchronize(device)
    per_tile = (torch.cuda.max_memory_allocated(device) - before) / base
    free, _ = torch.cuda.mem_get_info(device)
    return fit_batch(base, per_tile, free)
