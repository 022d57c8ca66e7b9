"""``batch``: a whole survey through one model, resumable, on one machine or a Dask cluster.

Every scene goes through :func:`geovision.detect` into its own layer under
``out/scenes/``; a manifest (``out/manifest.json``, rewritten atomically after
each scene) records status, object count, megapixels, seconds and any error.
A re-run skips scenes whose manifest entry says done and whose output is
still there with the recorded size, for the same input file, model and
settings (confidence, reading resolution); a
scene interrupted half-way has no output (detect writes to a temporary file)
and is redone. At the end all scenes' objects go into ``out/merged.gpkg``
with a ``source`` field; with ``dedupe`` an object found in two overlapping
scenes is kept once, by the same seam logic as tiles within one raster, the
scenes' footprints playing the part of tiles.

Scenes run in worker processes (``workers``) or as tasks on an existing
dask.distributed cluster (``scheduler``); each worker loads the model once.
Local workers share the cores; on a machine with several GPUs each takes
its own, round robin.
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geovision.backends.device import cuda_devices, cuda_present, usable_cores
from geovision.backends.loader import load_backend
from geovision.cluster import connect, worker_threads
from geovision.config import ModelConfig
from geovision.errors import GeovisionError, OutputError, RasterError, installed
from geovision.labels import feature_layer
from geovision.raster import is_raster_path
from geovision.registry import resolve_model
from geovision.writers import atomic_output

MANIFEST = "manifest.json"
MERGED = "merged.gpkg"


@dataclass
class SceneResult:
    """One scene's outcome, as recorded in the manifest."""

    input: str
    output: str
    status: str  # "done" | "failed"
    objects: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    error: str = ""
    input_size: int = 0
    input_mtime: float = 0.0
    output_size: int = 0
    model_sha256: str = ""
    #: what else decides the objects (:func:`scene_settings`): another value redoes the scene
    settings: str = ""
    worker: str = ""  # host:pid of the process that ran it
    threads: int = 0  # CPU threads the model was given there (its share of the cores)


@dataclass
class BatchResult:
    """All scenes' results and the merged layer."""

    scenes: list[SceneResult]
    merged: Path | None
    skipped: int = 0
    failed: list[SceneResult] = field(default_factory=list)

    @property
    def objects(self) -> int:
        return sum(s.objects for s in self.scenes if s.status == "done")


BatchProgress = Callable[[int, int, SceneResult], None]


def find_inputs(spec: str | os.PathLike[str]) -> list[Path]:
    """Rasters named by a folder (searched recursively), a glob, or a text file of paths."""
    p = Path(spec)
    if p.is_dir():
        found = sorted(q for q in p.rglob("*") if is_raster_path(q) and q.is_file())
    elif p.is_file() and p.suffix.lower() in {".txt", ".lst", ".list"}:
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        found = [(p.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
    elif p.is_file():
        found = [p]
    else:
        found = sorted(Path(q) for q in glob.glob(str(spec), recursive=True) if Path(q).is_file())
    if not found:
        raise RasterError(f"{spec}: no rasters found; give a folder, a glob ('flights/**/*.tif') or a .txt list")
    return found


def scene_output(out_dir: Path, raster: Path, suffix: str = ".gpkg") -> Path:
    """Where a scene's layer goes: its name, made unique by a short hash of its full path."""
    digest = hashlib.sha1(str(raster.resolve()).encode()).hexdigest()[:8]
    return out_dir / "scenes" / f"{raster.stem}-{digest}{suffix}"


#: The GPU this local worker process was given (several GPUs, no --device), else None.
_WORKER_DEVICE: str | None = None
#: This local worker process's share of the CPU cores, else None (all of them).
_WORKER_THREADS: int | None = None


def process_scene(
    raster: str,
    cfg: ModelConfig,
    output: str,
    device: str | None = None,
    runtime: str | None = "auto",
    quantize: str | None = None,
    threads: int | None = None,
) -> SceneResult:
    """Run one scene into ``output``; errors become a failed result, never an exception.

    ``threads`` caps the model's CPU threads (default: this worker's share, else every core).
    """
    from geovision.detect import detect

    started = time.perf_counter()
    device = _WORKER_DEVICE if device in (None, "", "auto") and _WORKER_DEVICE else device
    threads = threads or _WORKER_THREADS
    src = Path(raster)
    stat = src.stat() if src.exists() else None
    result = SceneResult(
        input=str(src),
        output=str(output),
        status="failed",
        input_size=stat.st_size if stat else 0,
        input_mtime=stat.st_mtime if stat else 0.0,
        model_sha256=cfg.sha256 or "",
        settings=scene_settings(cfg),
        worker=f"{socket.gethostname()}:{os.getpid()}",
        threads=threads or usable_cores(),
    )
    try:
        backend = load_backend(cfg, device, runtime, quantize, threads, reuse=True)
        r = detect(src, cfg, output, overwrite=True, backend=backend)
    except GeovisionError as e:
        result.error = str(e)
    except Exception as e:  # noqa: BLE001 - one bad scene must not stop a survey
        result.error = f"unexpected failure: {type(e).__name__}: {e}"
    else:
        result.status = "done"
        result.objects = len(r.features)
        result.megapixels = round(r.stats.megapixels, 3)
        result.output_size = Path(output).stat().st_size
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def load_manifest(out_dir: Path) -> dict[str, SceneResult]:
    path = out_dir / MANIFEST
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text())["scenes"]
        return {r["input"]: SceneResult(**r) for r in rows}
    except (ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{path}: unreadable manifest ({e}); remove it to start the batch afresh") from e


def write_manifest(out_dir: Path, entries: dict[str, SceneResult], model: ModelConfig) -> None:
    """Rewrite the manifest atomically: a crash never leaves half a file."""
    data = {"model": model.name, "model_sha256": model.sha256, "scenes": [asdict(e) for e in entries.values()]}
    with atomic_output(out_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def is_complete(entry: SceneResult | None, raster: Path, cfg: ModelConfig) -> bool:
    """Done before, output still there and unchanged, same input file and model."""
    if entry is None or entry.status != "done":
        return False
    out, stat = Path(entry.output), raster.stat() if raster.exists() else None
    return (
        stat is not None
        and out.exists()
        and out.stat().st_size == entry.output_size
        and stat.st_size == entry.input_size
        and abs(stat.st_mtime - entry.input_mtime) < 1e-3
        and entry.model_sha256 == (cfg.sha256 or "")
        and entry.settings == scene_settings(cfg)
    )


def scene_settings(cfg: ModelConfig) -> str:
    """The settings besides the weights that decide a scene's objects, as the manifest records them."""
    return f"confidence {cfg.confidence:g}, resolution {cfg.resolution_m if cfg.resolution_m else 'native'}"


def run_batch(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    model: str | os.PathLike[str] | ModelConfig,
    out_dir: str | os.PathLike[str],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    dedupe: bool = False,
    device: str | None = None,
    confidence: float | None = None,
    runtime: str | None = "auto",
    quantize: str | None = None,
    object_size: float | None = None,
    progress: BatchProgress | None = None,
) -> BatchResult:
    """Run every input scene through ``model`` into ``out_dir``; see the module docstring.

    ``runtime``, ``quantize`` and ``object_size`` are those of :func:`geovision.detect`.
    """
    rasters = find_inputs(inputs) if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]
    cfg = model if isinstance(model, ModelConfig) else resolve_model(model)
    if object_size is not None:
        cfg = cfg.for_objects_of(object_size)
    cfg = cfg.with_overrides(confidence=confidence)
    out = Path(out_dir)
    try:
        (out / "scenes").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot create the output folder ({e.strerror})") from e
    manifest = load_manifest(out)
    todo = [r for r in rasters if not is_complete(manifest.get(str(r)), r, cfg)]
    skipped = len(rasters) - len(todo)
    done = 0

    def record(result: SceneResult) -> None:
        nonlocal done
        manifest[result.input] = result
        write_manifest(out, manifest, cfg)
        done += 1
        if progress:
            progress(done, len(todo), result)

    if todo:  # export the ONNX model here once, not in every worker at the same time
        from geovision.backends.loader import runtime_config

        runtime_config(cfg, device, runtime, quantize)
    jobs = [(str(r), cfg, str(scene_output(out, r)), device, runtime, quantize) for r in todo]
    if scheduler:
        _run_dask(jobs, scheduler, record)
    elif workers > 1 and len(jobs) > 1:
        # Spawned, not forked: a fork of a process whose torch/OpenMP threads have run deadlocks.
        context = multiprocessing.get_context("spawn")
        threads = max(1, usable_cores() // workers)
        counter = context.Value("i", 0)
        with ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=(threads, counter)) as pool:
            futures: list[Future[SceneResult]] = [pool.submit(process_scene, *job) for job in jobs]
            for f in as_completed(futures):
                record(f.result())
    else:
        for job in jobs:
            record(process_scene(*job))
    scenes = [manifest[str(r)] for r in rasters]
    names = source_names(rasters)
    merged = merge_scenes([s for s in scenes if s.status == "done"], out / MERGED, cfg, dedupe, names)
    return BatchResult(scenes, merged, skipped, [s for s in scenes if s.status == "failed"])


def _init_worker(threads: int, counter: Any) -> None:
    """Set up a local worker: its share of the cores, and its own GPU when there are several."""
    global _WORKER_DEVICE, _WORKER_THREADS
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _WORKER_THREADS = threads  # handed to the model (ONNX Runtime or torch) by process_scene

    if cuda_present() and installed("torch"):
        _WORKER_DEVICE = worker_device(index, cuda_devices())


def _dask_scene(
    raster: str, cfg: ModelConfig, output: str, device: str | None, runtime: str | None, quantize: str | None
) -> SceneResult:
    """:func:`process_scene` on a Dask worker, with the model given its share of the worker's cores."""
    return process_scene(raster, cfg, output, device, runtime, quantize, worker_threads())


def worker_device(index: int, gpus: int) -> str | None:
    """The device for local worker ``index`` when none was asked for: one GPU each, round robin."""
    return f"cuda:{index % gpus}" if gpus > 1 else None


def _run_dask(jobs: list[tuple[Any, ...]], scheduler: str, record: Callable[[SceneResult], None]) -> None:
    with connect(scheduler) as client:  # says which extra to install when dask is not there
        from dask.distributed import as_completed as dask_completed

        futures = [client.submit(_dask_scene, *job, pure=False) for job in jobs]
        for f in dask_completed(futures):
            record(f.result())


def source_names(rasters: list[Path]) -> dict[str, str]:
    """Each scene's ``source`` in the merged layer: its path below the folder all scenes share, so
    ``2023/a.tif`` and ``2024/a.tif`` stay apart (a lone scene: its file name)."""
    full = [os.path.abspath(r) for r in rasters]
    root = os.path.commonpath(full) if len(full) > 1 else os.path.dirname(full[0]) if full else ""
    return {str(r): Path(os.path.relpath(f, root)).as_posix() for r, f in zip(rasters, full)}


def merge_scenes(
    scenes: list[SceneResult], path: Path, cfg: ModelConfig, dedupe: bool, names: dict[str, str] | None = None
) -> Path | None:
    """All scenes' objects in one GeoPackage with a ``source`` field (see :func:`source_names`),
    optionally de-duplicated."""
    from geovision.vectorize import object_layer
    from geovision.writers import write_layer

    names = names or source_names([Path(s.input) for s in scenes])
    layers = []
    for s in scenes:
        g = gpd.read_file(s.output, layer=feature_layer(s.output))
        if g.crs is not None:
            g["source"] = names[s.input]
            layers.append(g)
    if not layers:
        return None
    crss = {g.crs.to_string() for g in layers}
    crs = layers[0].crs if len(crss) == 1 else "EPSG:4326"
    frames = [g.to_crs(crs) for g in layers if len(g)]
    if frames:
        merged = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)
    else:
        merged = object_layer(cfg.classes, np.zeros(0, np.int32), np.zeros(0), np.zeros(0), "", [], crs)
    if dedupe and len(merged) > 1:
        merged = dedupe_overlaps(merged, {names[s.input]: s.input for s in scenes}, cfg)
    return write_layer(merged, path, overwrite=True, classes=cfg.classes)


def dedupe_overlaps(merged: gpd.GeoDataFrame, inputs: dict[str, str], cfg: ModelConfig) -> gpd.GeoDataFrame:
    """One feature per object where scenes overlap, by the seam merger with scenes as tiles;
    ``inputs`` maps each ``source`` value to its raster."""
    import rasterio

    from geovision.merge import EDGE_PX, Boxes, cut_flags, merge_boxes

    work = merged.to_crs(merged.crs if merged.crs.is_projected else merged.estimate_utm_crs())
    footprints: dict[str, np.ndarray] = {}
    for source, path in inputs.items():
        with rasterio.open(path) as ds:
            fp = gpd.GeoSeries([shapely.box(*ds.bounds)], crs=ds.crs).to_crs(work.crs)
            footprints[source] = np.asarray(fp.total_bounds)
    tiles = np.stack([footprints[s] for s in work["source"]])
    xyxy = np.asarray(work.geometry.bounds.to_numpy(), dtype=np.float64)
    cut = cut_flags(xyxy, tiles, EDGE_PX * float(cfg.resolution_m or 1.0))  # the seam rule, in metres
    outlines = work.geometry.to_numpy() if cfg.task != "detect" else None
    boxes = Boxes(
        xyxy,
        work["score"].to_numpy(np.float32),
        work["class_id"].to_numpy(np.int64),
        tiles,
        cut,
        outlines,
        np.arange(len(work)),
    )
    kept = merge_boxes(boxes, nms_iou=cfg.iou)
    assert kept.ids is not None
    out = work.iloc[kept.ids].copy()
    geoms = list(kept.polys) if kept.polys is not None else [shapely.box(*b) for b in kept.xyxy]
    out = out.set_geometry(geoms, crs=work.crs)
    return out.to_crs(merged.crs).reset_index(drop=True)
