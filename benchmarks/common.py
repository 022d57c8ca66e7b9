"""What the benchmarks share: test rasters made from a sample tile, timing a command, the bare forward."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_tiles" / "OSBS_029.tif"


def make_raster(path: Path, size: int, sample: Path = SAMPLE) -> Path:
    """A size x size GeoTIFF like ``sample`` (bands, dtype, CRS, pixel size), tiled with mirrored copies of it."""
    with rasterio.open(sample) as src:
        tile = src.read()
        like = src.profile
    # mirror so neighbouring copies meet without a hard edge
    block = np.concatenate(
        [np.concatenate([tile, tile[:, :, ::-1]], 2), np.concatenate([tile[:, ::-1], tile[:, ::-1, ::-1]], 2)], 1
    )
    bh, bw = block.shape[1:]
    t = like["transform"]
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=like["count"],
        dtype=like["dtype"],
        crs=like["crs"],
        transform=Affine(t.a, 0, t.c, 0, t.e, t.f),
        nodata=like.get("nodata"),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, 512):
            h = min(512, size - y)
            rows = np.arange(y, y + h) % bh
            strip = block[:, rows][:, :, np.arange(size) % bw]
            dst.write(strip, window=Window(0, y, size, h))
    return path


def time_command(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and last stdout line of a command.

    It runs under a fresh Python wrapper so that the peak RSS of its children
    is this command's alone.
    """
    wrapper = (
        "import resource, subprocess, sys;"
        "r = subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True);"
        "lines = r.stdout.strip().splitlines();"
        "print(lines[-1] if lines else '');"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    *_, last, rss = out.stdout.splitlines()
    return seconds, int(rss) / 1024, last


def load_tiles(cfg: Any, raster: Path) -> list[np.ndarray]:
    """The uint8 tiles ``geovision detect`` feeds the model, read beforehand."""
    from geovision.raster import iter_tiles, open_raster, plan_read
    from geovision.tiling import TileGrid

    with open_raster(raster) as ds:
        plan = plan_read(ds, cfg.resolution_m, cfg.in_channels, cfg.bands, cfg.normalization, cfg.accept_grayscale)
    grid = TileGrid(plan.width, plan.height, cfg.tile_size, cfg.overlap)
    return [td.image for td in iter_tiles(plan, iter(grid)) if hasattr(td, "image")]


def bare_forward(cfg: Any, images: list[np.ndarray], runtime: str, quantize: str | None = None) -> float:
    """Seconds of the network alone over ``images`` in the model's batches, after one warm-up batch."""
    from geovision.backends import load_backend

    backend: Any = load_backend(cfg, "cpu", runtime, quantize)
    n = cfg.batch_size
    if runtime == "onnx":
        batches: list[Any] = [
            np.stack(images[i : i + n])
            if backend.raw_input
            else np.stack(images[i : i + n]).transpose(0, 3, 1, 2).astype(np.float32) / 255
            for i in range(0, len(images), n)
        ]
        name = backend.input_name

        def call(b: Any) -> Any:
            return backend.session.run(None, {name: b})

    else:
        import torch

        if cfg.task == "segment":
            batches = [torch.from_numpy(np.stack(images[i : i + n])) for i in range(0, len(images), n)]
            net = backend.module
        else:
            batches = [
                torch.from_numpy(np.stack(images[i : i + n])).permute(0, 3, 1, 2).float() / 255
                for i in range(0, len(images), n)
            ]
            net = backend.net

        def call(b: Any) -> Any:
            with torch.inference_mode():
                return net(b)

    call(batches[0])
    t0 = time.perf_counter()
    for b in batches:
        call(b)
    return time.perf_counter() - t0
