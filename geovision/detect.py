"""``detect``: a raster and a model in, one georeferenced feature per object out.

The raster streams through in rows of tiles: a background thread reads and
normalises tiles while the model runs on the previous batch. Each finished
row goes to the seam merger (detectors), or to the band blender and the strip
vectoriser (segmenters), which hand back the objects that are final. Nothing
proportional to the raster's size is ever held.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import shapely

from geovision.backends.base import Detections, Detector, Segmenter
from geovision.backends.loader import load_backend
from geovision.backends.tta import FlipTTA
from geovision.blend import BandBlender
from geovision.config import ModelConfig
from geovision.errors import ModelError, OutputError, RasterError
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
from geovision.vectorize import Shape, StripVectorizer, VectorizeOptions, carve_overlaps, clean, vectorize_options
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
    _check_distinct(raster, [p for p in (output, mask_out, prob_out) if p is not None])
    for path in (output, mask_out, prob_out):
        if path is not None:
            check_output(path, overwrite, raster=path is not output)
    if qml:
        if output is None:
            raise OutputError("a .qml style goes beside an output layer; give one")
        check_qml(output, overwrite)
    with open_raster(raster) as ds:
        plan = plan_read(
            ds,
            cfg.resolution_m,
            cfg.in_channels,
            cfg.bands,
            cfg.normalization,
            cfg.accept_grayscale,
            pixel_coords=pixel_coords or pixel_size is not None,
            native_resolution_m=pixel_size,
        )
        source_name = raster_name(ds.name)
    if plan.crs is None and output is not None and Path(output).suffix.lower() in {".geojson", ".json"}:
        # GeoJSON is longitude/latitude by definition: pixel columns and rows would be read as degrees
        raise OutputError(f"{output}: pixel coordinates cannot be GeoJSON (always WGS84); use .gpkg or .shp")
    if backend is None:
        backend = load_backend(cfg, device, runtime, quantize)
    if batch_size is None and backend.device.startswith("cuda"):  # also a batch worker's loaded model
        cfg = cfg.with_overrides(batch_size=backend.fit_batch(cfg.batch_size))
    grid = TileGrid(plan.width, plan.height, cfg.tile_size, cfg.overlap)
    stats = RunStats(
        megapixels=plan.source_width * plan.source_height / 1e6, backend=f"{type(backend).__name__} on {backend.device}"
    )
    if cfg.task == "segment":
        run = backend.segment  # type: ignore[union-attr]
    else:  # thresholds of this call, not those the backend was loaded with
        detector = cast(Detector, backend)
        if tta:
            detector = FlipTTA(detector, cfg.iou)
        run = functools.partial(detector.detect, confidence=cfg.confidence, iou=cfg.iou)
    rows = _tile_rows(run, plan, grid, cfg.batch_size, stats, progress)
    if cfg.task == "segment":
        opts = vectorize_options(cfg, regularize)
        gdf = _segment(rows, plan, grid, cfg, opts, source_name, mask_out, prob_out, overwrite)
    else:
        gdf = _to_features(_merge_rows(rows, grid, cfg), plan, cfg, source_name, vectorize_options(cfg, regularize))
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
) -> Iterator[TileRow]:
    """Run the model (``run``: a batch of tiles to one output each) over the grid; yield each
    row's (tile, output) pairs once the row is complete.

    Tiles are read ahead in a background thread and sent in batches that may
    span rows; rows come out in order, tiles with no valid pixel left out.
    """
    total = len(grid)
    per_row: dict[int, list[tuple[TileData, Any]]] = {}
    remaining = {r: grid.n_cols for r in range(grid.n_rows)}
    next_row = 0
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
        while next_row < grid.n_rows and remaining[next_row] == 0:
            yield next_row, per_row.pop(next_row, [])
            next_row += 1

    for item in prefetch(iter_tiles(plan, iter(grid)), depth=2 * batch_size):
        if isinstance(item, Tile):
            remaining[item.row] -= 1
            stats.tiles += 1
            stats.tiles_skipped += 1
            continue
        batch.append(item)
        if len(batch) >= batch_size:
            yield from flush()
    yield from flush()


def _merge_rows(rows: Iterator[TileRow], grid: TileGrid, cfg: ModelConfig) -> Boxes:
    """Detections of every row through the seam merger: one box per object."""
    merger = SeamMerger(grid, nms_iou=cfg.iou)
    final = [
        merger.add_row(row, Boxes.concat([_keep_on_data(td, dets, grid) for td, dets in items])) for row, items in rows
    ]
    return Boxes.concat(final)


def _segment(
    rows: Iterator[TileRow],
    plan: ReadPlan,
    grid: TileGrid,
    cfg: ModelConfig,
    opts: VectorizeOptions,
    source: str,
    mask_out: str | os.PathLike[str] | None,
    prob_out: str | os.PathLike[str] | None,
    overwrite: bool,
) -> gpd.GeoDataFrame:
    """Blend tile probabilities band by band, vectorise each final strip, write rasters on request."""
    blender = BandBlender(grid, len(cfg.classes) + 1, threshold=cfg.confidence)
    vectorizer = StripVectorizer(grid.width, grid.height)
    pixel_m = (plan.pixel_size_m[0] * plan.pixel_size_m[1]) ** 0.5
    shapes: list[Shape] = []
    with RasterSink(plan, mask_out, prob_out, cfg.classes, overwrite) as sink:
        for _, items in rows:
            for td, probs in items:
                blender.add(td.tile.x0, probs, td.valid)
            strip = blender.finish_row()
            sink.write(strip)
            shapes.extend(vectorizer.add(strip))
        shapes.extend(vectorizer.finish())
    kept = [(s, g) for s in shapes if (g := clean(s.geom, opts, pixel_m, plan.pixel_area_m2)) is not None]
    if opts.grow_m > 0 or opts.regularize:  # grown or squared outlines stay on the raster
        grid_box = shapely.box(0, 0, grid.width, grid.height)
        kept = [(s, g if grid_box.contains(g) else g.intersection(grid_box)) for s, g in kept]
    geoms = [shapely.transform(g, lambda xy: _apply(plan, xy)) for _, g in kept]
    areas = np.array([g.area * plan.pixel_area_m2 for _, g in kept]) if plan.crs else None
    class_ids = np.array([s.cls - 1 for s, _ in kept], dtype=np.int32)
    scores = np.array([s.score for s, _ in kept])
    return object_layer(cfg.classes, class_ids, scores, areas, source, geoms, plan.crs)


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
