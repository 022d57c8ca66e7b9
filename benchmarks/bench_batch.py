"""Benchmark `geovision batch`: scenes per minute with 1 and N local workers and on a Dask cluster.

Run on demand (not part of the tests):

    python benchmarks/bench_batch.py --model trees-fast --scenes 8 --size 2000 --workers 1 2

Builds ``--scenes`` GeoTIFFs of ``--size`` px from a real sample tile (as
bench_detect.py does, each shifted so they cover different ground), then
times the whole ``geovision batch`` command from the shell for each worker
count, and once more with ``--scheduler`` against a dask.distributed
LocalCluster of ``max(workers)`` single-threaded worker processes started by
this script. Every run starts from an empty output folder. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from affine import Affine
from common import SAMPLE, make_raster


def make_scenes(folder: Path, n: int, size: int, sample: Path) -> list[Path]:
    """``n`` rasters side by side in a row, each ``size`` px square."""
    folder.mkdir(parents=True, exist_ok=True)
    first = make_raster(folder / "scene_00.tif", size, sample)
    with rasterio.open(first) as ds:
        data, profile = ds.read(), ds.profile
    t = profile["transform"]
    scenes = [first]
    for i in range(1, n):
        path = folder / f"scene_{i:02d}.tif"
        profile["transform"] = Affine(t.a, 0, t.c + i * size * t.a, 0, t.e, t.f)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        scenes.append(path)
    return scenes


def run_batch(inputs: Path, model: str, out: Path, extra: list[str]) -> tuple[float, int]:
    """Wall seconds of one ``geovision batch`` run and the objects it found."""
    exe = str(Path(sys.executable).with_name("geovision"))
    t0 = time.perf_counter()
    subprocess.run([exe, "batch", str(inputs), "-m", model, "-o", str(out), "-q", *extra], check=True)
    seconds = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    return seconds, sum(s["objects"] for s in manifest["scenes"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="trees-fast")
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-dask", action="store_true", help="skip the LocalCluster run")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; model {args.model}; "
        f"{args.scenes} scenes of {args.size} x {args.size} px"
    )
    print("| run | seconds | scenes/min | MP/s | objects |")
    print("|---|---|---|---|---|")
    mp = args.scenes * args.size**2 / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "survey"
        make_scenes(inputs, args.scenes, args.size, args.sample)

        def report(label: str, seconds: float, objects: int) -> None:
            rate = args.scenes / seconds * 60
            print(f"| {label} | {seconds:.1f} | {rate:.1f} | {mp / seconds:.2f} | {objects} |", flush=True)

        for w in args.workers:
            seconds, objects = run_batch(inputs, args.model, Path(tmp) / f"out-w{w}", ["--workers", str(w)])
            report(f"--workers {w}", seconds, objects)
        if not args.no_dask:
            from dask.distributed import LocalCluster

            n = max(args.workers)
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
                seconds, objects = run_batch(
                    inputs, args.model, Path(tmp) / "out-dask", ["--scheduler", cluster.scheduler_address]
                )
            report(f"Dask LocalCluster, {n} workers x 1 thread", seconds, objects)


if __name__ == "__main__":
    main()
