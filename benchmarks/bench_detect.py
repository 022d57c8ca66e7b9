"""Benchmark `geovision detect`: time against the bare model forward, and peak memory.

Run on demand (not part of the tests):

    python benchmarks/bench_detect.py --model trees --sizes 4000 10000 20000
    python benchmarks/bench_detect.py --model buildings --sample sample_tiles/spacenet_atlanta.tif

For each size it builds a tiled, compressed GeoTIFF from a real sample tile
(same bands, dtype, CRS and pixel size; mirrored to fill the extent), then
measures

* the whole ``geovision detect`` command as a user runs it (wall time from the
  shell, peak RSS of the process),
* for the sizes where the tiles fit in memory, in one warm process (model
  loaded, no start-up): ``geovision.detect`` against the bare forward of the
  same network over the same tiles (tiles read beforehand, one batched
  ``net(x)`` per batch, no reading, decoding or merging).

Results go to stdout as a Markdown table, to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from common import SAMPLE, bare_forward, load_tiles, make_raster, time_command


def in_process_seconds(model: str, raster: Path, out: Path, runtime: str) -> tuple[float, float, int]:
    """Seconds of ``geovision.detect`` and of the bare forward over its tiles, in one warm process.

    The model is loaded once and warmed up, so neither number includes start-up;
    the bare forward is the network alone on the run's tiles, read and batched
    beforehand, as a user of the bare model runs it (bench_peers.bare_forward).
    """

    import geovision
    from geovision.backends import load_backend
    from geovision.registry import resolve_model

    cfg = resolve_model(model)
    images = load_tiles(cfg, raster)
    forward = bare_forward(cfg, images, runtime)
    n_tiles = len(images)
    del images
    backend = load_backend(cfg, "cpu", runtime)
    geovision.detect(raster, cfg, backend=backend)  # warm-up
    t0 = time.perf_counter()
    geovision.detect(raster, cfg, out, overwrite=True, backend=backend)
    return time.perf_counter() - t0, forward, n_tiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="trees")
    ap.add_argument("--sample", type=Path, default=SAMPLE, help="real tile the benchmark rasters are made of")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 10000, 20000])
    ap.add_argument("--forward-max", type=int, default=6000, help="largest size for the bare-forward comparison")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--backend", default="onnx", choices=["onnx", "torch"])
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("geovision"))
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"model: {args.model}, backend: {args.backend}")
    print(
        "| raster (px) | MP | tiles | command (s) | MP/s | peak RSS (MB) "
        "| detect in-process (s) | bare forward (s) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for size in sorted(args.sizes):
            raster = make_raster(Path(tmp) / f"r{size}.tif", size, args.sample)
            out = Path(tmp) / f"o{size}.gpkg"
            cmd = [exe, "detect", str(raster), "-m", args.model, "-o", str(out), "-q", "--backend", args.backend]
            seconds, rss, _ = time_command(cmd)
            mp = size * size / 1e6
            row = f"| {size} x {size} | {mp:.0f} | {{tiles}} | {seconds:.1f} | {mp / seconds:.2f} | {rss:.0f} "
            if size <= args.forward_max:
                inproc, fwd, tiles = in_process_seconds(args.model, raster, out, args.backend)
                row = row.format(tiles=tiles) + f"| {inproc:.1f} | {fwd:.1f} | {inproc / fwd:.2f}x |"
            else:
                row = row.format(tiles="-") + "| - | - | - |"
            print(row, flush=True)
            raster.unlink()


if __name__ == "__main__":
    main()
