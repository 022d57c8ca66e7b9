"""Quicklooks: a PNG of a raster with its predictions (and truth) drawn over it.

The raster is read once at the quicklook's size (GDAL takes an overview when
the file has one, and otherwise reads block by block into the small output
buffer, through a 64 MB block cache), so a 20000 px scene costs the PNG's
memory, not the scene's. Bands
are stretched between their 2nd and 98th percentiles of valid pixels. With
truth, objects are matched as ``geovision evaluate`` matches them and drawn
as true positives (green), false positives (red) and missed truth (blue).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling

from geovision.errors import RasterError
from geovision.evaluate import evaluate, read_layer
from geovision.raster import block_cache, open_raster
from geovision.writers import atomic_output, check_output

PRED = (255, 220, 0)
TP, FP, FN = (0, 230, 64), (255, 40, 40), (40, 140, 255)


@dataclass
class Quicklook:
    """What was drawn: the PNG, its size, and the count of each kind of outline."""

    path: Path
    width: int
    height: int
    counts: dict[str, int]


def quicklook(
    raster: str | os.PathLike[str],
    output: str | os.PathLike[str],
    pred: str | os.PathLike[str] | gpd.GeoDataFrame | None = None,
    truth: str | os.PathLike[str] | gpd.GeoDataFrame | None = None,
    *,
    size: int = 2048,
    iou: float = 0.5,
    class_field: str | None = "class",
    bands: tuple[int, ...] | None = None,
    overwrite: bool = True,
) -> Quicklook:
    """Write a PNG of ``raster``, at most ``size`` px on its long side, with ``pred`` drawn over it."""
    out = check_output(output, overwrite, suffixes=(".png",))
    with open_raster(raster) as ds:
        crs = ds.crs
    return draw(raster, out, _layers(pred, truth, crs, iou, class_field), size=size, bands=bands, overwrite=overwrite)


def draw(
    raster: str | os.PathLike[str],
    output: str | os.PathLike[str],
    layers: dict[str, tuple[gpd.GeoDataFrame, tuple[int, int, int]]],
    *,
    size: int = 2048,
    bands: tuple[int, ...] | None = None,
    overwrite: bool = True,
) -> Quicklook:
    """Write a PNG of ``raster`` with the outlines of ``layers`` (legend name -> layer, RGB colour)
    drawn over it, in the order given, with a key."""
    from PIL import Image, ImageDraw

    out = check_output(output, overwrite, suffixes=(".png",))
    # Each source block is read once: a small block cache is enough (GDAL's default is 5% of RAM).
    with rasterio.Env(**block_cache(64 * 2**20)), open_raster(raster) as ds:
        scale = max(1.0, max(ds.width, ds.height) / size)
        width, height = max(1, round(ds.width / scale)), max(1, round(ds.height / scale))
        image = _read_stretched(ds, width, height, bands)
        to_pixels = ~(ds.transform @ Affine.scale(ds.width / width, ds.height / height))
        crs = ds.crs
    canvas = Image.fromarray(image)
    pen = ImageDraw.Draw(canvas)
    line = max(1, round(min(width, height) / 500))
    counts: dict[str, int] = {}
    for name, (gdf, colour) in layers.items():
        counts[name] = len(gdf)
        if crs is not None and gdf.crs is not None:
            gdf = gdf.to_crs(crs)
        for geom in gdf.geometry:
            for ring in _rings(geom):
                xy = shapely.get_coordinates(ring)
                cols, rows = to_pixels @ (xy[:, 0], xy[:, 1])
                pen.line(list(zip(cols.tolist(), rows.tolist())), fill=colour, width=line)
    _legend(pen, {f"{k} ({counts[k]})": c for k, (_, c) in layers.items()})
    with atomic_output(out) as tmp:
        canvas.save(tmp, format="PNG")
    return Quicklook(out, width, height, counts)


def _read_stretched(ds: rasterio.DatasetReader, width: int, height: int, bands: tuple[int, ...] | None) -> np.ndarray:
    """(height, width, 3) uint8: three bands (or one, repeated), each stretched to 2-98 %."""
    indexes = list(bands) if bands else ([1, 2, 3] if ds.count >= 3 else [1])
    if max(indexes) > ds.count:
        raise RasterError(f"{Path(ds.name).name}: has {ds.count} band(s); cannot show band {max(indexes)}")
    data = ds.read(indexes, out_shape=(len(indexes), height, width), resampling=Resampling.average, masked=True)
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    out = np.zeros((height, width, len(indexes)), np.uint8)
    for i, band in enumerate(np.ma.getdata(data).astype(np.float32)):
        values = band[valid]
        if values.size:
            lo, hi = np.percentile(values, [2, 98])
            out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    out[~valid] = 0
    return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out


def _layers(
    pred: str | os.PathLike[str] | gpd.GeoDataFrame | None,
    truth: str | os.PathLike[str] | gpd.GeoDataFrame | None,
    crs: object,
    iou: float,
    class_field: str | None,
) -> dict[str, tuple[gpd.GeoDataFrame, tuple[int, int, int]]]:
    """Outlines to draw, by legend name, in the raster's CRS."""

    def load(x: str | os.PathLike[str] | gpd.GeoDataFrame, role: str) -> gpd.GeoDataFrame:
        gdf = x if isinstance(x, gpd.GeoDataFrame) else read_layer(x, role)
        return gdf.to_crs(crs) if crs is not None and gdf.crs is not None else gdf

    if pred is None and truth is None:
        return {}
    if truth is None:
        assert pred is not None
        return {"predictions": (load(pred, "predictions"), PRED)}
    t = load(truth, "truth")
    if pred is None:
        return {"truth": (t, FN)}
    p = load(pred, "predictions")
    ev = evaluate(p, t, iou=iou, class_field=class_field)
    hit_p = np.zeros(len(p), bool)
    hit_t = np.zeros(len(t), bool)
    for pi, ti, matched in ev.matches.values():
        hit_p[pi[matched >= 0]] = True
        hit_t[ti[matched[matched >= 0]]] = True
    return {
        "true positive": (p[hit_p], TP),
        "false positive": (p[~hit_p], FP),
        "missed": (t[~hit_t], FN),
    }


def _rings(geom: shapely.Geometry) -> list[shapely.Geometry]:
    """Outer and inner rings of (multi)polygons; lines as they are."""
    if geom is None or geom.is_empty:
        return []
    parts = shapely.get_parts(geom)
    rings: list[shapely.Geometry] = []
    for part in parts:
        if isinstance(part, shapely.Polygon):
            rings += [part.exterior, *part.interiors]
        elif isinstance(part, (shapely.LineString, shapely.LinearRing)):
            rings.append(part)
    return rings


def _legend(draw: object, entries: dict[str, tuple[int, int, int]]) -> None:
    """A small key in the top-left corner, on a dark box so it reads on any image."""
    if entries:
        width = 24 + 6 * max(len(label) for label in entries)
        draw.rectangle([0, 0, width, 6 + 14 * len(entries)], fill=(0, 0, 0))  # type: ignore[attr-defined]
    y = 4
    for label, colour in entries.items():
        draw.rectangle([4, y, 16, y + 10], fill=colour)  # type: ignore[attr-defined]
        draw.text((20, y - 1), label, fill=(255, 255, 255))  # type: ignore[attr-defined]
        y += 14
