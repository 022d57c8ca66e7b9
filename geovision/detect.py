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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np

from geovision.backends.base import Detections, Detector, Segmenter
from geovision.backends.device import usable_cores
from geovision.backends.loader import load_backend, runtime_config
from geovision.backends.tta import FlipTTA
from geovision.blend import BandBlender, Strip, warmup_rows
from geovision.cluster import check_readable, connect, in_order, worker_threads
from geovision.config import ModelConfig
from geovision.errors import GeovisionError, ModelError, OutputError, RasterError
from geovision.merge import Boxes, SeamMerger, tile_boxes
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
    box_layer,
    outline_layer,
    polygonize,
    region_layer,
    vectorize_options,
)
from geovision.writers import RasterSink, check_output, check_qml, write_layer

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
    object_size: float | None = None,
) -> DetectResult:
    """Find objects in ``raster`` with ``model`` and optionally write them to ``output``.

    Works for detectors (one box per object) and segmenters (one polygon per
    connected region of a class). ``model`` is a name, a YAML or weights
    path, or a loaded config; options left as ``None`` come from the model's
    YAML. ``pixel_coords`` accepts a raster without georeference and gives
    pixel coordinates; ``pixel_size`` (metres) says how large its pixels are
    on the ground, so it is still read at the model's resolution.
    ``object_size`` (metres across, the typical object of this raster) reads
    it coarser where its objects are larger than those the model learned on
    (:meth:`ModelConfig.for_objects_of`): oaks of 8 m for a model of 4 m
    conifers are read at twice its metres per pixel, not cut into pieces.
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
    if object_size is not None:
        cfg = cfg.for_objects_of(object_size)
    cfg = cfg.with_overrides(
        batch_size=batch_size, confidence=confidence, iou=iou, bands=tuple(bands) if bands else None
    )
    threshold = cfg.confidence
    if review_confidence is not None:
        if not 0 <= review_confidence < threshold:
            raise ModelError(f"`review_confidence` must be below the confidence threshold ({threshold:g})")
        cfg = cfg.with_overrides(confidence=review_confidence)
    objects = _objects(cfg)
    _check_task(objects, review_confidence is not None, tta, mask_out is not None or prob_out is not None)
    distributed = scheduler is not None or workers is not None
    if distributed and (mask_out or prob_out):
        raise OutputError(
            "`mask_out` and `prob_out` are one GeoTIFF written by one process; run without a cluster for them"
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
            objects.cfg = cfg = _fit_batch(cfg, backend, batch_size is None)
            stats.backend = f"{type(backend).__name__} on {backend.device}"
            rows = _tile_rows(objects.model_call(backend, tta), plan, grid, cfg.batch_size, stats, progress)
            sink = stack.enter_context(RasterSink(plan, mask_out, prob_out, cfg.classes, overwrite))
            pieces = objects.pieces(rows, grid, sink.write)
        gdf = objects.layer(pieces, plan, grid, vectorize_options(cfg, regularize), source_name)
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


def _check_task(objects: Objects, review: bool, tta: bool, rasters: bool) -> None:
    """Refuse options the model's kind of output has no use for."""
    name = objects.cfg.name
    if not objects.rasters and rasters:
        raise ModelError(f"model '{name}' is a detector; `mask_out` and `prob_out` need a segmentation model")
    if objects.rasters and review:
        raise ModelError(f"model '{name}' is a segmenter; a review band (`review_confidence`) needs a detector")
    if objects.rasters and tta:
        raise ModelError(f"model '{name}' is a segmenter; `tta` merges mirrored objects of detectors")


def _check_distinct(raster: str | os.PathLike[str], outputs: list[str | os.PathLike[str]]) -> None:
    """Refuse an output that is the input raster (``--overwrite`` would destroy it) or another output."""
    seen: dict[Path, str] = {} if is_remote(raster) else {Path(raster).resolve(): "the input raster"}
    for out in outputs:
        key = Path(out).resolve()
        if key in seen:
            raise OutputError(f"{out}: is {seen[key]}; give each output its own name")
        seen[key] = "another output of this run"


TileRow = tuple[int, list[tuple[TileData, Any]]]
#: A batch of tiles to one model output each.
ModelCall = Callable[[list[np.ndarray]], Any]


def _tile_rows(
    run: ModelCall,
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

    tiles = itertools.chain.from_iterable(map(grid.row, rows))
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


class _Boxes:
    """A box detector's tile rows to objects: boxes in model-grid pixels, merged across seams row by row.

    One such object per kind of model (boxes, outlines, masks) holds every
    step of ``detect`` that differs between them, so the run itself is one
    straight pipe: plan, model calls, pieces per row (or per cluster band),
    one layer.
    """

    #: whether the model writes class and probability rasters (``mask_out``/``prob_out``)
    rasters = False

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg

    def min_band_rows(self, grid: TileGrid) -> int:
        """The fewest tile rows worth a cluster task."""
        return 1

    def model_call(self, backend: Detector | Segmenter, tta: bool) -> ModelCall:
        """A batch of tiles to one output each: boxes at this run's thresholds (not those the backend
        was loaded with), mirrored views merged with ``tta``."""
        detector = cast(Detector, backend)
        if tta:
            detector = FlipTTA(detector, self.cfg.iou)
        return functools.partial(detector.detect, confidence=self.cfg.confidence, iou=self.cfg.iou)

    def pieces(self, rows: Iterator[TileRow], grid: TileGrid, on_strip: Callable[[Strip], None]) -> Iterator[Any]:
        """Each row's detections in model-grid pixels, less those centred on nodata or padding."""
        for row, items in rows:
            yield row, Boxes.concat([_keep_on_data(td, dets, grid) for td, dets in items])

    def band(self, call: ModelCall, plan: ReadPlan, grid: TileGrid, rows: range, stats: RunStats) -> list[Any]:
        """On a cluster worker: the pieces of the tile rows ``rows``."""
        return list(self.pieces(_tile_rows(call, plan, grid, self.cfg.batch_size, stats, None, rows), grid, _drop))

    def layer(
        self, pieces: Iterable[Any], plan: ReadPlan, grid: TileGrid, opts: VectorizeOptions, source: str
    ) -> gpd.GeoDataFrame:
        return box_layer(self._merged(pieces, grid), plan, self.cfg.classes, source)

    def _merged(self, pieces: Iterable[tuple[int, Boxes]], grid: TileGrid) -> Boxes:
        """Rows of detections, in order, through the seam merger: one box per object."""
        merger = SeamMerger(grid, nms_iou=self.cfg.iou)
        return Boxes.concat([merger.add_row(row, boxes) for row, boxes in pieces])


class _Outlines(_Boxes):
    """An instance segmenter's: boxes with outlines, merged like boxes, outlines cleaned up as the model says."""

    def layer(
        self, pieces: Iterable[Any], plan: ReadPlan, grid: TileGrid, opts: VectorizeOptions, source: str
    ) -> gpd.GeoDataFrame:
        boxes = self._merged(pieces, grid)
        if boxes.polys is None:  # no tile found anything: no outlines to clean up
            return box_layer(boxes, plan, self.cfg.classes, source)
        return outline_layer(boxes, plan, self.cfg.classes, source, opts)


#: A polygonised strip: its first and end model-grid rows, and its shapes.
StripShapes = tuple[int, int, list[Shape]]


class _Masks:
    """A segmenter's: tile probabilities blended into strips, polygonised, dissolved across strip seams."""

    rasters = True

    def __init__(self, cfg: ModelConfig, first_row: int = 0) -> None:
        self.cfg, self.first_row = cfg, first_row

    def min_band_rows(self, grid: TileGrid) -> int:
        """Four times the rows a band runs above its own, so that the extra work stays a small share."""
        return 4 * warmup_rows(grid)

    def model_call(self, backend: Detector | Segmenter, tta: bool) -> ModelCall:
        return cast(Segmenter, backend).segment

    def pieces(
        self, rows: Iterator[TileRow], grid: TileGrid, on_strip: Callable[[Strip], None]
    ) -> Iterator[StripShapes]:
        """Tile probabilities blended band by band into final strips (from ``first_row`` on), each
        handed to ``on_strip`` (the raster outputs), then polygonised."""
        cfg = self.cfg
        blender = BandBlender(grid, len(cfg.classes) + 1, threshold=cfg.confidence, first_row=self.first_row)
        for _, items in rows:
            for td, probs in items:
                blender.add(td.tile.x0, probs, td.valid)
            strip = blender.finish_row()
            on_strip(strip)
            yield strip.y0, strip.y0 + strip.rows, list(polygonize(strip))

    def layer(
        self, pieces: Iterable[StripShapes], plan: ReadPlan, grid: TileGrid, opts: VectorizeOptions, source: str
    ) -> gpd.GeoDataFrame:
        vectorizer = StripVectorizer(grid.width, grid.height)
        shapes: list[Shape] = []
        for y_top, y_bottom, new in pieces:
            shapes.extend(vectorizer.add_shapes(new, y_top, y_bottom))
        shapes.extend(vectorizer.finish())
        return region_layer(shapes, plan, self.cfg.classes, source, opts)

    def band(self, call: ModelCall, plan: ReadPlan, grid: TileGrid, rows: range, stats: RunStats) -> list[Any]:
        """On a cluster worker: the strips of the tile rows ``rows``. The band also runs the rows above
        it that blend into its first rows (:func:`.blend.warmup_rows`) and throws their strips away, so
        its strips are those of a single process, bit for bit."""
        size = self.cfg.batch_size
        first = max(0, rows.start - warmup_rows(grid))
        warmup = _tile_rows(call, plan, grid, size, RunStats(), None, range(first, rows.start))
        tile_rows = itertools.chain(warmup, _tile_rows(call, plan, grid, size, stats, None, rows))
        strips = _Masks(self.cfg, first).pieces(tile_rows, grid, _drop)
        return [p for p in strips if p[0] >= grid.row_start(rows.start)]


Objects = _Boxes | _Masks


def _drop(strip: Strip) -> None:
    """Strips go to no raster output (detectors, and cluster workers)."""


def _objects(cfg: ModelConfig, first_row: int = 0) -> Objects:
    """How ``cfg``'s tile outputs become objects."""
    if cfg.task == "segment":
        return _Masks(cfg, first_row)
    return _Outlines(cfg) if cfg.task == "instance" else _Boxes(cfg)


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
    """On a cluster worker: run the tile rows ``rows`` of the raster and return their objects
    (:meth:`_Boxes.band`, :meth:`_Masks.band`)."""
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
    stats = RunStats()
    objects = _objects(cfg)
    pieces = objects.band(objects.model_call(backend, job.tta), plan, grid, rows, stats)
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
        band_rows = max(math.ceil(grid.n_rows / (4 * n_slots)), _objects(cfg).min_band_rows(grid))
    bands = [(job, range(r, min(r + band_rows, grid.n_rows))) for r in range(0, grid.n_rows, band_rows)]
    where = f"{len(bands)} bands on {len(threads)} Dask workers"
    for band in in_order(client, detect_band, bands, progress):
        stats.tiles += band.tiles
        stats.tiles_skipped += band.skipped
        stats.backend = f"{band.backend}, {where}"
        yield from band.pieces


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
