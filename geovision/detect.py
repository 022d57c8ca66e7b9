"""``detect``: a raster and a model in, one georeferenced feature per object out.

The raster streams through in rows of tiles: a background thread reads and
normalises tiles while the model runs on the previous batch. Each finished
row goes to the seam merger (detectors), or to the band blender and the strip
vectoriser (segmenters), which hand back the objects that are final. Nothing
proportional to the raster's size is ever held.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import shapely

from geovision.backends.base import Detections, Detector, Segmenter
from geovision.backends.device import usable_cores
from geovision.backends.loader import load_backend, runtime_config
from geovision.backends.tta import FlipTTA
from geovision.blend import BandBlender, Strip, warmup_rows
from geovision.cluster import check_readable, connect, in_order, worker_threads
from geovision.config import ModelConfig
from geovision.errors import GeovisionError, ModelError, OutputError, RasterError
from geovision.merge import Boxes, SeamMerger, largest_polygons, tile_boxes
from geovision.raster import (
    ReadPlan,
    TileData,
    is_remote,
    iter_tiles,
    open_raster,
    plan_read,
    prefetch,
    raster_name,
)
from geovision.registry import resolve_model
from geovision.tiling import Tile, TileGrid
from geovision.vectorize import (
    Shape,
    StripVectorizer,
    VectorizeOptions,
    carve_overlaps,
    clean,
    polygonize,
    vectorize_options,
)
from geovision.writers import RasterSink, check_output, check_qml, object_layer, write_layer

#: Called with (tiles done, tiles in total) as the run goes.
ProgressCallback = Callable[[int, int], None]


@dataclass
class RunStats:
    """What a run did, for the closing summary."""

    tiles: int = 0
    tiles_skipped: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    backend: str = ""  # what ran the model, e.g. "OnnxDetector on cpu"
    to_review: int = 0  # objects in the review band (``review_confidence``), counted in ``counts`` too

    @property
    def mp_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0


@dataclass
class DetectResult:
    """Objects found (one row each) and run statistics; ``output`` if written."""

    features: gpd.GeoDataFrame
    stats: RunStats
    model: ModelConfig
    output: Path | None = None


def default_output(raster: str | os.PathLike[str], model: ModelConfig, suffix: str = ".gpkg") -> Path:
    """Where a run writes when no output is named: ``<input stem>.<model name><suffix>`` in the current
    folder (``scene.tif`` with ``buildings`` -> ``scene.buildings.gpkg``; a folder of scenes: ``suffix=""``)."""
    name = raster_name(raster)
    if any(c in name for c in "*["):
        name = "scenes"
    stem = Path(name).stem if Path(name).suffix else name
    return Path.cwd() / f"{stem or 'scenes'}.{model.name}{suffix}"


def detect(
    raster: str | os.PathLike[str],
    model: str | os.PathLike[str] | ModelConfig,
    output: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    confidence: float | None = None,
    iou: float | None = None,
    bands: Sequence[int] | None = None,
    pixel_coords: bool = False,
    pixel_size: float | None = None,
    overwrite: bool = False,
    mask_out: str | os.PathLike[str] | None = None,
    prob_out: str | os.PathLike[str] | None = None,
    regularize: bool | None = None,
    review_confidence: float | None = None,
    tta: bool = False,
    qml: bool = False,
    progress: ProgressCallback | None = None,
    runtime: str | None = "auto",
    quantize: str | None = None,
    backend: Detector | Segmenter | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    band_rows: int | None = None,
) -> DetectResult:
    """Find objects in ``raster`` with ``model`` and optionally write them to ``output``.

    Works for detectors (one box per object) and segmenters (one polygon per
    connected region of a class). ``model`` is a name, a YAML or weights
    path, or a loaded config; options left as ``None`` come from the model's
    YAML. ``pixel_coords`` accepts a raster without georeference and gives
    pixel coordinates; ``pixel_size`` (metres) says how large its pixels are
    on the ground, so it is still read at the model's resolution.
    ``mask_out``/``prob_out`` (segmenters only) also write the class
    raster and the probabilities as GeoTIFFs in the raster's own grid;
    ``regularize`` squares outlines up (``True``) or keeps them as traced
    (``False``) instead of what the model YAML says. ``review_confidence``
    (detectors, below the confidence threshold) also keeps the objects
    scoring between it and the threshold, marked ``review`` = 1 (0 for the
    confident ones), for checking by eye.
    ``tta`` (detectors and instance segmenters) also runs each tile mirrored
    left-right and top-bottom and merges the three views: three times the
    model time.
    A GeoPackage ``output`` carries a default QGIS style (an outline per
    class, no fill); ``qml`` also writes it as a ``.qml`` beside the layer.
    ``runtime`` is ``auto`` (ONNX Runtime on the CPU, torch on a GPU),
    ``torch`` or ``onnx``; ``quantize="int8"`` runs an int8 ONNX model.
    ``backend`` replaces the backend the config names (for tests and custom
    backends).
    ``scheduler`` (a dask.distributed address) or ``workers`` (a local
    cluster of that many processes) splits the raster into bands of
    ``band_rows`` tile rows (default: four bands per worker thread), one task
    a band; the workers read and run their bands, and this process merges
    the bands' objects with the seam logic of tiles, so the layer is the one
    a single process writes. ``progress`` then counts bands.
    """
    started = time.perf_counter()
    cfg = model if isinstance(model, ModelConfig) else resolve_model(model)
    cfg = cfg.with_overrides(
        batch_size=batch_size, confidence=confidence, iou=iou, bands=tuple(bands) if bands else None
    )
    threshold = cfg.confidence
    if review_confidence is not None:
        if cfg.task == "segment":
            raise ModelError(f"model '{cfg.name}' is a segmenter; a review band needs a detector")
        if not 0 <= review_confidence < threshold:
            raise ModelError(f"--review-conf must be below the confidence threshold ({threshold:g})")
        cfg = cfg.with_overrides(confidence=review_confidence)
    if tta and cfg.task == "segment":
        raise ModelError(f"model '{cfg.name}' is a segmenter; --tta merges mirrored objects of detectors")
    if cfg.task != "segment" and (mask_out or prob_out):
        raise ModelError(f"model '{cfg.name}' is a detector; --mask-out and --prob-out need a segmentation model")
    distributed = scheduler is not None or workers is not None
    if distributed and (mask_out or prob_out):
        raise OutputError(
            "--mask-out and --prob-out are one GeoTIFF written by one process; run without a cluster for them"
        )
    if distributed and backend is not None:
        raise ModelError("a backend object runs in this process; a cluster loads the model on each worker")
    _check_distinct(raster, [p for p in (output, mask_out, prob_out) if p is not None])
    for path in (output, mask_out, prob_out):
        if path is not None:
            check_output(path, overwrite, raster=path is not output)
    if qml:
        if output is None:
            raise OutputError("a .qml style goes beside an output layer; give one")
        check_qml(output, overwrite)
    reading = _Reading(pixel_coords or pixel_size is not None, pixel_size)
    plan, source_name = _plan(raster, cfg, reading)
    if plan.crs is None and output is not None and Path(output).suffix.lower() in {".geojson", ".json"}:
        # GeoJSON is longitude/latitude by definition: pixel columns and rows would be read as degrees
        raise OutputError(f"{output}: pixel coordinates cannot be GeoJSON (always WGS84); use .gpkg or .shp")
    stats = RunStats(megapixels=plan.source_width * plan.source_height / 1e6)
    grid = TileGrid(plan.width, plan.height, cfg.tile_size, cfg.overlap)
    with contextlib.ExitStack() as stack:
        if distributed:
            # a local cluster's workers share this machine's cores; a remote worker takes its own
            threads = max(1, usable_cores() // workers) if scheduler is None and workers else None
            # workers need not share this process's working folder: a local path goes as an absolute one
            where = str(raster) if is_remote(raster) else str(Path(raster).resolve())
            job = _BandJob(where, cfg, reading, tta, device, runtime, quantize, batch_size is None, threads)
            client = stack.enter_context(connect(scheduler, workers))
            pieces = _band_pieces(client, job, grid, band_rows, stats, progress)
        else:
            if backend is None:
                backend = load_backend(cfg, device, runtime, quantize)
            cfg = _fit_batch(cfg, backend, batch_size is None)
            stats.backend = f"{type(backend).__name__} on {backend.device}"
            rows = _tile_rows(_model_call(backend, cfg, tta), plan, grid, cfg.batch_size, stats, progress)
            if cfg.task == "segment":
                sink = stack.enter_context(RasterSink(plan, mask_out, prob_out, cfg.classes, overwrite))
                pieces = _strip_shapes(_strips(rows, grid, cfg), sink.write)
            else:
                pieces = _row_boxes(rows, grid)
        opts = vectorize_options(cfg, regularize)
        if cfg.task == "segment":
            gdf = _shape_layer(_dissolve(pieces, grid), plan, grid, cfg, opts, source_name)
        else:
            gdf = _to_features(_merge_rows(pieces, grid, cfg), plan, cfg, source_name, opts)
    if stats.tiles_skipped == stats.tiles:
        raise RasterError(f"{source_name}: raster holds no valid pixels (all nodata)")
    stats.counts.update(gdf["class"].tolist())
    if review_confidence is not None:
        gdf["review"] = (gdf["score"] < threshold).astype(np.int32)
        stats.to_review = int(gdf["review"].sum())
        cfg = cfg.with_overrides(confidence=threshold)
    path = write_layer(gdf, output, overwrite, cfg.classes, qml) if output is not None else None
    stats.seconds = time.perf_counter() - started
    return DetectResult(gdf, stats, cfg, path)


def _check_distinct(raster: str | os.PathLike[str], outputs: list[str | os.PathLike[str]]) -> None:
    """Refuse an output that is the input raster (``--overwrite`` would destroy it) or another output."""
    seen: dict[Path, str] = {} if is_remote(raster) else {Path(raster).resolve(): "the input raster"}
    for out in outputs:
        key = Path(out).resolve()
        if key in seen:
            raise OutputError(f"{out}: is {seen[key]}; give each output its own name")
        seen[key] = "another output of this run"


TileRow = tuple[int, list[tuple[TileData, Any]]]


def _tile_rows(
    run: Callable[[list[np.ndarray]], Any],
    plan: ReadPlan,
    grid: TileGrid,
    batch_size: int,
    stats: RunStats,
    progress: ProgressCallback | None,
    rows: range | None = None,
) -> Iterator[TileRow]:
    """Run the model (``run``: a batch of tiles to one output each) over the grid's ``rows``
    (default: all); yield each row's (tile, output) pairs once the row is complete.

    Tiles are read ahead in a background thread and sent in batches that may
    span rows; rows come out in order, tiles with no valid pixel left out.
    """
    rows = range(grid.n_rows) if rows is None else rows
    total = len(rows) * grid.n_cols
    per_row: dict[int, list[tuple[TileData, Any]]] = {}
    remaining = {r: grid.n_cols for r in rows}
    next_row = rows.start
    batch: list[TileData] = []

    def flush() -> Iterator[TileRow]:
        nonlocal next_row, batch
        if batch:
            for td, out in zip(batch, run([td.image for td in batch])):
                per_row.setdefault(td.tile.row, []).append((td, out))
                remaining[td.tile.row] -= 1
                stats.tiles += 1
            batch = []
            if progress:
                progress(stats.tiles, total)
        while next_row < rows.stop and remaining[next_row] == 0:
            yield next_row, per_row.pop(next_row, [])
            next_row += 1

    tiles = (tile for r in rows for tile in grid.row(r))
    for item in prefetch(iter_tiles(plan, tiles), depth=2 * batch_size):
        if isinstance(item, Tile):
            remaining[item.row] -= 1
            stats.tiles += 1
            stats.tiles_skipped += 1
            continue
        batch.append(item)
        if len(batch) >= batch_size:
            yield from flush()
    yield from flush()


def _row_boxes(rows: Iterator[TileRow], grid: TileGrid) -> Iterator[tuple[int, Boxes]]:
    """Each row's detections in model-grid pixels, less those centred on nodata or padding."""
    for row, items in rows:
        yield row, Boxes.concat([_keep_on_data(td, dets, grid) for td, dets in items])


def _merge_rows(rows: Iterable[tuple[int, Boxes]], grid: TileGrid, cfg: ModelConfig) -> Boxes:
    """Rows of detections, in order, through the seam merger: one box per object."""
    merger = SeamMerger(grid, nms_iou=cfg.iou)
    return Boxes.concat([merger.add_row(row, boxes) for row, boxes in rows])


#: A polygonised strip: its first and end model-grid rows, and its shapes.
StripShapes = tuple[int, int, list[Shape]]


def _strips(rows: Iterator[TileRow], grid: TileGrid, cfg: ModelConfig, first_row: int = 0) -> Iterator[Strip]:
    """Tile probabilities blended band by band into final strips (rows from ``first_row`` on)."""
    blender = BandBlender(grid, len(cfg.classes) + 1, threshold=cfg.confidence, first_row=first_row)
    for _, items in rows:
        for td, probs in items:
            blender.add(td.tile.x0, probs, td.valid)
        yield blender.finish_row()


def _strip_shapes(strips: Iterator[Strip], on_strip: Callable[[Strip], None]) -> Iterator[StripShapes]:
    """Each strip handed to ``on_strip`` (the raster outputs), then polygonised."""
    for strip in strips:
        on_strip(strip)
        yield strip.y0, strip.y0 + strip.rows, list(polygonize(strip))


def _dissolve(pieces: Iterable[StripShapes], grid: TileGrid) -> list[Shape]:
    """Strips' shapes, in order, joined across strip seams into one shape per region."""
    vectorizer = StripVectorizer(grid.width, grid.height)
    shapes: list[Shape] = []
    for y_top, y_bottom, new in pieces:
        shapes.extend(vectorizer.add_shapes(new, y_top, y_bottom))
    shapes.extend(vectorizer.finish())
    return shapes


def _shape_layer(
    shapes: list[Shape], plan: ReadPlan, grid: TileGrid, cfg: ModelConfig, opts: VectorizeOptions, source: str
) -> gpd.GeoDataFrame:
    """Regions cleaned up as the model says (:func:`.vectorize.clean`), as polygons in the raster's CRS."""
    pixel_m = (plan.pixel_size_m[0] * plan.pixel_size_m[1]) ** 0.5
    kept = [(s, g) for s in shapes if (g := clean(s.geom, opts, pixel_m, plan.pixel_area_m2)) is not None]
    if opts.grow_m > 0 or opts.regularize:  # grown or squared outlines stay on the raster
        grid_box = shapely.box(0, 0, grid.width, grid.height)
        kept = [(s, g if grid_box.contains(g) else g.intersection(grid_box)) for s, g in kept]
    geoms = [shapely.transform(g, lambda xy: _apply(plan, xy)) for _, g in kept]
    areas = np.array([g.area * plan.pixel_area_m2 for _, g in kept]) if plan.crs else None
    class_ids = np.array([s.cls - 1 for s, _ in kept], dtype=np.int32)
    scores = np.array([s.score for s, _ in kept])
    return object_layer(cfg.classes, class_ids, scores, areas, source, geoms, plan.crs)


@dataclass(frozen=True)
class _Reading:
    """How the raster is read, the same in every process: pixel coordinates, and their ground size."""

    pixel_coords: bool = False
    pixel_size: float | None = None


def _plan(raster: str | os.PathLike[str], cfg: ModelConfig, reading: _Reading) -> tuple[ReadPlan, str]:
    """The raster's read plan for ``cfg``, and its name for the ``source`` field."""
    with open_raster(raster) as ds:
        plan = plan_read(
            ds,
            cfg.resolution_m,
            cfg.in_channels,
            cfg.bands,
            cfg.normalization,
            cfg.accept_grayscale,
            pixel_coords=reading.pixel_coords,
            native_resolution_m=reading.pixel_size,
        )
        return plan, raster_name(ds.name)


def _fit_batch(cfg: ModelConfig, backend: Detector | Segmenter, fit: bool) -> ModelConfig:
    """On a GPU, the batch that fits its memory, unless one was asked for."""
    if fit and backend.device.startswith("cuda"):
        return cfg.with_overrides(batch_size=backend.fit_batch(cfg.batch_size))
    return cfg


def _model_call(backend: Detector | Segmenter, cfg: ModelConfig, tta: bool) -> Callable[[list[np.ndarray]], Any]:
    """A batch of tiles to one output each: a segmenter's probabilities, or a detector's boxes at
    this call's thresholds (not those the backend was loaded with)."""
    if cfg.task == "segment":
        return backend.segment  # type: ignore[union-attr]
    detector = cast(Detector, backend)
    if tta:
        detector = FlipTTA(detector, cfg.iou)
    return functools.partial(detector.detect, confidence=cfg.confidence, iou=cfg.iou)


@dataclass(frozen=True)
class _BandJob:
    """What a cluster worker needs to run bands of one raster."""

    raster: str
    cfg: ModelConfig
    reading: _Reading
    tta: bool
    device: str | None
    runtime: str | None
    quantize: str | None
    fit_batch: bool
    threads: int | None  # the model's CPU threads (None: the worker's share of its cores)


@dataclass
class BandResult:
    """One band's objects (detectors: (row, boxes); segmenters: polygonised strips) and tile counts."""

    pieces: list[Any]
    tiles: int
    skipped: int
    backend: str


def detect_band(job: _BandJob, rows: range) -> BandResult:
    """On a cluster worker: run the tile rows ``rows`` of the raster and return their objects.

    A segmenter's band also runs the tile rows above it that blend into its
    first rows (:func:`.blend.warmup_rows`) and throws their strips away, so
    its strips are those of a single process, bit for bit.
    """
    try:
        return _run_band(job, rows)
    except GeovisionError as e:  # the user's error, without its chain: GDAL's errors do not unpickle
        error = type(e)(*e.args)
    raise error


def _run_band(job: _BandJob, rows: range) -> BandResult:
    plan, _ = _plan(job.raster, job.cfg, job.reading)
    backend = load_backend(job.cfg, job.device, job.runtime, job.quantize, job.threads or worker_threads(), reuse=True)
    cfg = _fit_batch(job.cfg, backend, job.fit_batch)
    grid = TileGrid(plan.width, plan.height, cfg.tile_size, cfg.overlap)
    call = _model_call(backend, cfg, job.tta)
    stats = RunStats()
    tile_rows = _tile_rows(call, plan, grid, cfg.batch_size, stats, None, rows)
    pieces: list[Any]
    if cfg.task == "segment":
        first = max(0, rows.start - warmup_rows(grid))
        warmup = _tile_rows(call, plan, grid, cfg.batch_size, RunStats(), None, range(first, rows.start))
        strips = _strip_shapes(_strips(itertools.chain(warmup, tile_rows), grid, cfg, first), lambda _: None)
        pieces = [p for p in strips if p[0] >= grid.row_start(rows.start)]
    else:
        pieces = list(_row_boxes(tile_rows, grid))
    return BandResult(pieces, stats.tiles, stats.tiles_skipped, f"{type(backend).__name__} on {backend.device}")


def _band_pieces(
    client: Any,
    job: _BandJob,
    grid: TileGrid,
    band_rows: int | None,
    stats: RunStats,
    progress: ProgressCallback | None,
) -> Iterator[Any]:
    """Every band's pieces, in raster order, from the cluster; ``stats`` counts their tiles."""
    check_readable(client, job.raster)
    runtime_config(job.cfg, job.device, job.runtime, job.quantize)  # export for ONNX here once, not per worker
    cfg = job.cfg
    threads = client.nthreads()  # worker -> threads: one call to the scheduler
    n_slots = max(1, sum(threads.values()))  # tasks the cluster runs at once
    if band_rows is None:  # four bands a worker thread, so that a slow band does not hold up the end
        band_rows = max(math.ceil(grid.n_rows / (4 * n_slots)), 4 * warmup_rows(grid) if cfg.task == "segment" else 1)
    bands = [(job, range(r, min(r + band_rows, grid.n_rows))) for r in range(0, grid.n_rows, band_rows)]
    where = f"{len(bands)} bands on {len(threads)} Dask workers"
    for band in in_order(client, detect_band, bands, progress):
        stats.tiles += band.tiles
        stats.tiles_skipped += band.skipped
        stats.backend = f"{band.backend}, {where}"
        yield from band.pieces


def _apply(plan: ReadPlan, xy: np.ndarray) -> np.ndarray:
    """Model-grid pixel coordinates (n, 2) to the raster's CRS."""
    # affine's type hints give @ one point; it maps arrays of coordinates as well
    return np.column_stack(plan.transform @ (xy[:, 0], xy[:, 1]))  # type: ignore[operator, arg-type]


def _keep_on_data(td: TileData, dets: Detections, grid: TileGrid) -> Boxes:
    """The tile's detections in model-grid pixels, less those centred on nodata or padding."""
    t = td.tile
    if len(dets):
        cx = np.clip(((dets.boxes[:, 0] + dets.boxes[:, 2]) / 2).astype(int), 0, t.size - 1)
        cy = np.clip(((dets.boxes[:, 1] + dets.boxes[:, 3]) / 2).astype(int), 0, t.size - 1)
        dets = dets.take(np.flatnonzero(td.valid[cy, cx]))
    boxes = tile_boxes(dets.boxes, dets.scores, dets.classes, t.x0, t.y0, t.size, grid, dets.polygons)
    # Clip to the raster: padding past the edge holds no image.
    boxes.xyxy[:, [0, 2]] = np.clip(boxes.xyxy[:, [0, 2]], 0, grid.width)
    boxes.xyxy[:, [1, 3]] = np.clip(boxes.xyxy[:, [1, 3]], 0, grid.height)
    return boxes


def _clean_outlines(boxes: Boxes, polys: np.ndarray, plan: ReadPlan, opts: VectorizeOptions) -> Boxes:
    """Instance outlines (``boxes.polys``) cleaned up as the model says (:func:`.vectorize.clean`),
    then with ``disjoint`` carved apart; objects whose outline goes, or falls below the minimum
    area, go too."""
    pixel_m = (plan.pixel_size_m[0] * plan.pixel_size_m[1]) ** 0.5
    out = np.empty(len(polys), dtype=object)
    out[:] = [clean(g, opts, pixel_m, plan.pixel_area_m2) for g in polys]
    keep = np.flatnonzero([g is not None for g in out])
    boxes, out = boxes.take(keep), out[keep]
    if opts.disjoint and len(out):
        out = carve_overlaps(out, boxes.scores)
        keep = np.flatnonzero([g is not None and g.area * plan.pixel_area_m2 >= opts.min_area_m2 for g in out])
        boxes, out = boxes.take(keep), out[keep]
    return replace(boxes, polys=out)


def _to_features(
    boxes: Boxes, plan: ReadPlan, cfg: ModelConfig, source: str, opts: VectorizeOptions
) -> gpd.GeoDataFrame:
    """Model-grid boxes (or instance outlines, cleaned up by ``opts``) to polygons in the raster's CRS."""
    if boxes.polys is not None:  # outlines cleaned up, then clipped to the raster like the boxes
        boxes = _clean_outlines(boxes, boxes.polys, plan, opts)
        grid_box = shapely.box(0, 0, plan.width, plan.height)
        outlines = largest_polygons(shapely.intersection(boxes.polys, grid_box))  # one polygon each
        outlines[[g is None for g in outlines]] = shapely.Polygon()
        areas_px = shapely.area(outlines)
        polygons = shapely.transform(outlines, lambda xy: _apply(plan, xy))
    else:
        x1, y1, x2, y2 = boxes.xyxy.T
        areas_px = (x2 - x1) * (y2 - y1)
        corners = np.stack([np.stack([x1, x2, x2, x1], axis=1), np.stack([y1, y1, y2, y2], axis=1)], axis=2)
        coords = _apply(plan, corners.reshape(-1, 2)).reshape(-1, 4, 2)
        polygons = shapely.polygons(coords) if len(boxes) else np.array([], dtype=object)
    areas = areas_px * plan.pixel_area_m2 if plan.crs else None
    return object_layer(cfg.classes, boxes.classes, boxes.scores, areas, source, polygons, plan.crs)
