"""``detect``: a raster and a detector in, one georeferenced feature per object out.

The raster streams through in rows of tiles: a background thread reads and
normalises tiles while the model runs on the previous batch, and each
finished row goes to the seam merger, which hands back the objects that are
final. Nothing proportional to the raster's size is ever held.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import geopandas as gpd
import numpy as np
import shapely

from geovision.backends import Detections, Detector, load_detector
from geovision.errors import RasterError
from geovision.merge import Boxes, SeamMerger, tile_boxes
from geovision.models import ModelConfig, resolve_model, verify_weights
from geovision.raster import ReadPlan, TileData, iter_tiles, open_raster, plan_read, prefetch
from geovision.tiling import Tile, TileGrid
from geovision.writers import check_output, write_layer

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
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    detector: Detector | None = None,
) -> DetectResult:
    """Find objects in ``raster`` with a detection ``model`` and optionally write them.

    ``model`` is a name, a YAML or weights path, or a loaded config. Options
    left as ``None`` come from the model's YAML. ``detector`` replaces the
    backend the config names (for tests and custom backends).
    """
    started = time.perf_counter()
    cfg = model if isinstance(model, ModelConfig) else resolve_model(model)
    cfg = cfg.with_overrides(batch_size=batch_size, confidence=confidence, iou=iou, bands=tuple(bands) if bands else None)
    if output is not None:
        check_output(output, overwrite)
    with open_raster(raster) as ds:
        plan = plan_read(
            ds, cfg.resolution_m, cfg.in_channels, cfg.bands, cfg.normalization,
            cfg.accept_grayscale, pixel_coords=pixel_coords,
        )
        source_name = Path(ds.name).name
    if detector is None:
        verify_weights(cfg)
        detector = load_detector(cfg, device)
    grid = TileGrid(plan.width, plan.height, cfg.tile_size, cfg.overlap)
    stats = RunStats(megapixels=plan.source_width * plan.source_height / 1e6)
    merger = SeamMerger(grid, nms_iou=cfg.iou)
    final: list[Boxes] = []
    for row, results in _rows(detector, plan, grid, cfg.batch_size, stats, progress):
        final.append(merger.add_row(row, results))
    boxes = Boxes.concat(final)
    if stats.tiles_skipped == stats.tiles:
        raise RasterError(f"{source_name}: raster holds no valid pixels (all nodata)")
    gdf = _to_features(boxes, plan, cfg, source_name)
    stats.counts.update(gdf["class"].tolist())
    path = write_layer(gdf, output, overwrite) if output is not None else None
    stats.seconds = time.perf_counter() - started
    return DetectResult(gdf, stats, cfg, path)


def _rows(
    detector: Detector,
    plan: ReadPlan,
    grid: TileGrid,
    batch_size: int,
    stats: RunStats,
    progress: ProgressCallback | None,
) -> Iterator[tuple[int, Boxes]]:
    """Run the model over the grid and yield each row's boxes once the row is complete."""
    total = len(grid)
    per_row: dict[int, list[Boxes]] = {}
    remaining = {r: grid.n_cols for r in range(grid.n_rows)}
    next_row = 0
    batch: list[TileData] = []

    def flush() -> Iterator[tuple[int, Boxes]]:
        nonlocal next_row, batch
        if batch:
            for td, dets in zip(batch, detector.detect([td.image for td in batch])):
                per_row.setdefault(td.tile.row, []).append(_keep_on_data(td, dets, grid))
                remaining[td.tile.row] -= 1
                stats.tiles += 1
            batch = []
            if progress:
                progress(stats.tiles, total)
        while next_row < grid.n_rows and remaining[next_row] == 0:
            yield next_row, Boxes.concat(per_row.pop(next_row, []))
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


def _keep_on_data(td: TileData, dets: Detections, grid: TileGrid) -> Boxes:
    """The tile's detections in model-grid pixels, less those centred on nodata or padding."""
    t = td.tile
    if len(dets):
        cx = np.clip(((dets.boxes[:, 0] + dets.boxes[:, 2]) / 2).astype(int), 0, t.size - 1)
        cy = np.clip(((dets.boxes[:, 1] + dets.boxes[:, 3]) / 2).astype(int), 0, t.size - 1)
        on = td.valid[cy, cx]
        dets = Detections(dets.boxes[on], dets.scores[on], dets.classes[on])
    boxes = tile_boxes(dets.boxes, dets.scores, dets.classes, t.x0, t.y0, t.size, grid)
    # Clip to the raster: padding past the edge holds no image.
    boxes.xyxy[:, [0, 2]] = np.clip(boxes.xyxy[:, [0, 2]], 0, grid.width)
    boxes.xyxy[:, [1, 3]] = np.clip(boxes.xyxy[:, [1, 3]], 0, grid.height)
    return boxes


def _to_features(boxes: Boxes, plan: ReadPlan, cfg: ModelConfig, source: str) -> gpd.GeoDataFrame:
    """Model-grid boxes to polygons in the raster's CRS (four corners through the transform)."""
    x1, y1, x2, y2 = boxes.xyxy.T
    corners_x = np.stack([x1, x2, x2, x1], axis=1)
    corners_y = np.stack([y1, y1, y2, y2], axis=1)
    a = plan.transform
    mx = a.a * corners_x + a.b * corners_y + a.c
    my = a.d * corners_x + a.e * corners_y + a.f
    coords = np.stack([mx, my], axis=2)
    polygons = shapely.polygons(coords) if len(boxes) else np.array([], dtype=object)
    names = np.array(cfg.classes, dtype=object)
    return gpd.GeoDataFrame(
        {
            "class": names[boxes.classes] if len(boxes) else np.array([], dtype=object),
            "class_id": boxes.classes.astype(np.int32),
            "score": np.round(boxes.scores.astype(np.float64), 4),
            # Without georeference there are no metres to speak of.
            "area_m2": np.round((x2 - x1) * (y2 - y1) * plan.pixel_area_m2, 3) if plan.crs else np.nan,
            "source": np.full(len(boxes), source, dtype=object),
        },
        geometry=gpd.GeoSeries(polygons, crs=plan.crs),
        crs=plan.crs,
    )
