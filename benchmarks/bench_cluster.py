"""Benchmark one raster split over a Dask cluster: 1 process against a local cluster of N workers.

Run on demand (not part of the tests):

    python benchmarks/bench_cluster.py --model trees --size 20000 --workers 2

Builds a ``--size`` px square GeoTIFF (400 MP at 20000) from a real sample
tile (mirrored copies, written block by block, as bench_detect.py does), then runs ``geovision detect`` from the
shell: once in one process, once with ``--workers N``. While each runs, the
resident memory of the command (the driver) and of each of its child
processes (the workers) is sampled every 0.2 s. The driver's CPU seconds in
the cluster run are what it spends besides waiting: receiving and unpickling
the bands' objects and merging them; their share of the wall time is the
merge's share. Both layers are compared object for object. Prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import psutil
from common import SAMPLE, make_raster


def run(cmd: list[str]) -> dict[str, float]:
    """Wall seconds, the driver's peak RSS and CPU seconds, and the largest child's peak RSS (MB)."""
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd)
    driver_mb = child_mb = cpu = 0.0
    while proc.poll() is None:
        try:
            driver_mb = max(driver_mb, proc.memory_info().rss / 2**20)
            times = proc.cpu_times()
            cpu = times.user + times.system
            for child in proc.children(recursive=True):
                child_mb = max(child_mb, child.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return {"seconds": time.perf_counter() - t0, "driver_mb": driver_mb, "worker_mb": child_mb, "driver_cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="trees")
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--band-rows", type=int)
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("geovision"))
    mp = args.size**2 / 1e6
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; model {args.model}; {mp:.0f} MP raster\n")
    print("| run | seconds | MP/s | driver peak RSS MB | worker peak RSS MB | driver CPU s (share of wall) | objects |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        big = make_raster(Path(tmp) / "big.tif", args.size, args.sample)
        layers = []
        split = ["--workers", str(args.workers)] + (["--band-rows", str(args.band_rows)] if args.band_rows else [])
        for label, extra in (("1 process", []), (f"--workers {args.workers}", split)):
            out = Path(tmp) / f"{len(layers)}.gpkg"
            r = run([exe, "detect", str(big), "-m", args.model, "-o", str(out), "-q", *extra])
            layers.append(gpd.read_file(out, layer=out.stem))
            share = r["driver_cpu"] / r["seconds"]
            worker = f"{r['worker_mb']:.0f}" if extra else "-"
            print(
                f"| {label} | {r['seconds']:.1f} | {mp / r['seconds']:.2f} | {r['driver_mb']:.0f} | {worker} | "
                f"{r['driver_cpu']:.1f} ({share:.0%}) | {len(layers[-1])} |",
                flush=True,
            )
        one, two = layers
        same = len(one) == len(two) and bool(one.geometry.geom_equals_exact(two.geometry, 1e-9).all())
        print(f"\nthe two layers are {'the same, object for object' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
