"""geovision against the bare model forward and against its peers, on one large raster.

Run on demand (not part of the tests); GeoDeep and SAHI are installed just for it:

    pip install geodeep sahi
    python benchmarks/bench_peers.py --model trees --size 10000
    python benchmarks/bench_peers.py --model buildings --size 10000 --sample sample_tiles/spacenet_atlanta.tif

Every entry runs in a process of its own, timed from the shell with its peak
RSS (so start-up and imports count, as they do for a user):

* ``geovision``: ``geovision detect`` as a user types it (ONNX Runtime on the
  CPU), then with ``--backend torch`` and with ``--quantize int8``;
* ``bare ORT forward`` / ``bare torch forward``: the network alone over the
  same tiles, read and batched beforehand; the time is of the forward calls
  only (reported beside the process's whole time and memory, which include
  holding every tile);
* ``GeoDeep`` (detectors): ``geodeep.run`` on the same weights exported for it
  (static 1-tile ONNX with its metadata: YOLO_v8 head, same resolution, tile,
  overlap and thresholds);
* ``SAHI`` (detectors): ``get_sliced_prediction`` with the same ultralytics
  weights, slices and overlap, on the raster read into memory as SAHI needs.

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import SAMPLE, bare_forward, load_tiles, make_raster, time_command


def geodeep_model(cfg: Any, folder: Path) -> Path:
    """The package's YOLO weights as GeoDeep wants them: a static one-tile ONNX with its metadata."""
    import onnx

    from geovision.backends.yolo import load_yolo

    work = folder / "geodeep.pt"
    shutil.copyfile(cfg.weights, work)
    path = Path(load_yolo(work).export(format="onnx", imgsz=cfg.tile_size, dynamic=False, batch=1, verbose=False))
    proto = onnx.load(str(path))
    meta = {
        "model_type": json.dumps("Detector"),
        "det_type": json.dumps("YOLO_v8"),  # YOLO11's head has the v8 layout
        "det_conf": str(cfg.confidence),
        "det_iou_thresh": str(cfg.iou),
        "resolution": str(cfg.resolution_m * 100),  # cm/px
        "tiles_overlap": str(100 * cfg.overlap / cfg.tile_size),
        "class_names": json.dumps({str(i): c for i, c in enumerate(cfg.classes)}),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    return path


def child(args: argparse.Namespace) -> None:
    """One measured entry, in its own process; prints the seconds it reports on the last line."""
    import geovision

    cfg = geovision.resolve_model(args.model)
    if args.child in ("ort-forward", "torch-forward", "int8-forward"):
        runtime = "torch" if args.child == "torch-forward" else "onnx"
        images = load_tiles(cfg, args.raster)
        seconds = bare_forward(cfg, images, runtime, "int8" if args.child == "int8-forward" else None)
        print(f"{seconds} {len(images)}")
    elif args.child == "geodeep":
        import geodeep

        t0 = time.perf_counter()
        out = geodeep.run(str(args.raster), str(args.geodeep_model), output_type="geojson", max_threads=os.cpu_count())
        features = json.loads(out)["features"] if isinstance(out, str) else out["features"]
        print(f"{time.perf_counter() - t0} {len(features)}")
    elif args.child == "sahi":
        import rasterio
        from sahi import AutoDetectionModel
        from sahi.predict import get_sliced_prediction

        t0 = time.perf_counter()
        with rasterio.open(args.raster) as ds:
            image = np.ascontiguousarray(ds.read([1, 2, 3]).transpose(1, 2, 0))
        model = AutoDetectionModel.from_pretrained(
            model_type="ultralytics",
            model_path=str(cfg.weights),
            confidence_threshold=cfg.confidence,
            device="cpu",
            image_size=cfg.tile_size,
        )
        ratio = cfg.overlap / cfg.tile_size
        result = get_sliced_prediction(
            image,
            model,
            slice_height=cfg.tile_size,
            slice_width=cfg.tile_size,
            overlap_height_ratio=ratio,
            overlap_width_ratio=ratio,
            perform_standard_pred=False,
            verbose=0,
        )
        print(f"{time.perf_counter() - t0} {len(result.object_prediction_list)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="trees")
    ap.add_argument("--sample", type=Path, default=SAMPLE, help="real tile the benchmark raster is made of")
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip", nargs="*", default=[], help="entries to leave out, e.g. sahi geodeep")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--raster", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--geodeep-model", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import geovision

    cfg = geovision.resolve_model(args.model)
    detector = cfg.task != "segment"
    exe = str(Path(sys.executable).with_name("geovision"))
    me = [sys.executable, __file__, "--model", args.model]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        raster = make_raster(Path(tmp) / "raster.tif", args.size, args.sample)
        geovision.detect(args.sample, cfg, quantize="int8")  # exports (float and int8) into the cache first
        out = str(Path(tmp) / "out.gpkg")
        entries: list[tuple[str, list[str], bool]] = [
            (
                "geovision detect (ONNX Runtime, default)",
                [exe, "detect", str(raster), "-m", args.model, "-o", out],
                False,
            ),
            (
                "geovision detect --backend torch",
                [exe, "detect", str(raster), "-m", args.model, "-o", out, "--backend", "torch"],
                False,
            ),
            (
                "geovision detect --quantize int8",
                [exe, "detect", str(raster), "-m", args.model, "-o", out, "--quantize", "int8"],
                False,
            ),
            ("bare ORT forward", [*me, "--child", "ort-forward", "--raster", str(raster)], True),
            ("bare ORT int8 forward", [*me, "--child", "int8-forward", "--raster", str(raster)], True),
            ("bare torch forward", [*me, "--child", "torch-forward", "--raster", str(raster)], True),
        ]
        if detector and "geodeep" not in args.skip:
            gd = geodeep_model(cfg, Path(tmp))
            entries.append(
                ("GeoDeep", [*me, "--child", "geodeep", "--raster", str(raster), "--geodeep-model", str(gd)], False)
            )
        if detector and "sahi" not in args.skip:
            entries.append(("SAHI sliced prediction", [*me, "--child", "sahi", "--raster", str(raster)], False))
        mp = args.size * args.size / 1e6
        print(f"model: {args.model}; raster: {args.size} x {args.size} px ({mp:.0f} MP)")
        print("| run | command (s) | timed part (s) | objects or tiles | peak RSS (MB) |")
        print("|---|---|---|---|---|")
        for name, cmd, _ in entries:
            if any(s in name.lower() for s in args.skip):
                continue
            seconds, rss, last = time_command(cmd)
            timed, count = (last.split() + ["-", "-"])[:2] if last else ("-", "-")
            timed = f"{float(timed):.1f}" if timed != "-" else "-"
            if count == "-" and name.startswith("geovision"):
                import geopandas as gpd

                count = str(len(gpd.read_file(out)))
                os.unlink(out)
            print(f"| {name} | {seconds:.1f} | {timed} | {count} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
