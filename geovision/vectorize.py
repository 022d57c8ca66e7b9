"""Model outputs to the objects of a layer: class strips to polygons, one object one polygon, in
bounded memory; and a detector's merged boxes or instance outlines to polygons in the raster's CRS.

Each strip is polygonised with ``rasterio.features.shapes`` in model-grid
pixel coordinates (integers, so shared edges match exactly). Polygons that
touch the strip's bottom edge stay *open*; when the next strip comes, open
polygons are dissolved with the new polygons of the same class they share an
edge with — across that edge only, so neighbouring objects never fuse. A
polygon is final once it no longer touches the latest strip's bottom.

Clean-up happens in model-grid pixels, which are square on the ground at the
model's resolution: a local metric space even for rasters in degrees, so
simplification tolerances and minimum areas in metres translate exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio import features

from geovision.blend import Strip
from geovision.config import ModelConfig, VectorizeOptions
from geovision.geometry import components, largest_polygon, largest_polygons, neighbours
from geovision.merge import Boxes
from geovision.raster import ReadPlan
from geovision.regularize import regularize


@dataclass
class Shape:
    """One object's polygon in model-grid pixels, with its class and score sums."""

    geom: shapely.Polygon
    cls: int
    score_sum: float
    pixels: int

    @property
    def score(self) -> float:
        return self.score_sum / self.pixels if self.pixels else 0.0


class StripVectorizer:
    """Feed strips top to bottom with :meth:`add`; each call yields the polygons now final."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.open: list[Shape] = []

    def add(self, strip: Strip) -> Iterator[Shape]:
        return self.add_shapes(list(polygonize(strip)), strip.y0, strip.y0 + strip.rows)

    def add_shapes(self, new: list[Shape], y_top: int, y_bottom: int) -> Iterator[Shape]:
        """:meth:`add` for a strip already polygonised (model-grid rows ``y_top`` to ``y_bottom``),
        as a cluster's workers hand strips back: as shapes, never pixels."""
        merged = self._dissolve(new, y_top) if self.open else new
        still_open = []
        for s in merged:
            if y_bottom < self.height and s.geom.bounds[3] >= y_bottom:
                still_open.append(s)
            else:
                yield s
        self.open = still_open

    def finish(self) -> Iterator[Shape]:
        yield from self.open
        self.open = []

    def _dissolve(self, new: list[Shape], y: int) -> list[Shape]:
        """Union open shapes with new shapes of the same class that share an edge on row ``y``."""
        shapes = self.open + new
        n_open = len(self.open)
        tops = [i for i, s in enumerate(new) if s.geom.bounds[1] <= y]
        edges_i, edges_j = [], []
        if tops:
            tree = shapely.STRtree([new[i].geom for i in tops])
            for a, s in enumerate(self.open):
                for k in tree.query(s.geom, predicate="intersects"):
                    b = tops[int(k)]
                    if new[b].cls == s.cls and s.geom.intersection(new[b].geom).length > 0:
                        edges_i.append(a)
                        edges_j.append(n_open + b)
        labels = components(len(shapes), np.asarray(edges_i, np.int64), np.asarray(edges_j, np.int64))
        out = []
        for label in np.unique(labels):
            members = [shapes[i] for i in np.flatnonzero(labels == label)]
            if len(members) == 1:
                out.append(members[0])
                continue
            geom = shapely.union_all([m.geom for m in members])
            geoms = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
            score_sum, pixels = sum(m.score_sum for m in members), sum(m.pixels for m in members)
            for g in geoms:  # one piece in practice; split sums by area if the union is not connected
                share = g.area / geom.area if geom.area else 1.0
                out.append(Shape(g, members[0].cls, score_sum * share, round(pixels * share)))
        return out


def polygonize(strip: Strip) -> Iterator[Shape]:
    """Polygons of a strip's connected regions (4-connected), per class, with score sums."""
    from scipy import ndimage  # segmenters only: box detectors never load it

    transform = Affine.translation(0, strip.y0)
    for cls in np.unique(strip.classes):
        if cls == 0:
            continue
        labels, n = ndimage.label(strip.classes == cls)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        sums = ndimage.sum_labels(strip.score, labels, index)
        counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        for geom, value in features.shapes(
            labels.astype(np.int32), mask=labels > 0, connectivity=4, transform=transform
        ):
            k = int(value) - 1
            yield Shape(shapely.geometry.shape(geom), int(cls), float(sums[k]), int(counts[k]))


def clean(
    geom: shapely.Polygon, opts: VectorizeOptions, pixel_m: float, pixel_area_m2: float
) -> shapely.Polygon | None:
    """Fill holes, grow, square up or simplify, and filter by area, an outline in model-grid pixels
    (a segmenter's region or an instance segmenter's mask); None if it goes."""
    if opts.fill_holes and geom.interiors:
        geom = shapely.Polygon(geom.exterior)
    if opts.grow_m:  # out, or in where negative: a model whose outlines come out too fat
        geom = largest_polygon(geom.buffer(opts.grow_m / pixel_m, join_style="mitre"))
        if geom is None:
            return None
    if opts.regularize:
        geom = regularize(geom, tolerance=max(1.0, opts.simplify_m / pixel_m))
    elif opts.simplify_m > 0:
        geom = geom.simplify(opts.simplify_m / pixel_m, preserve_topology=True)
    if not geom.is_valid:  # squaring or simplifying a thin shape can fold it over itself
        geom = largest_polygon(shapely.make_valid(geom))
    if geom is None or geom.is_empty or geom.area * pixel_area_m2 < opts.min_area_m2:
        return None
    return geom


def carve_overlaps(geoms: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each outline less the better-scoring outlines it overlaps (None where nothing polygonal is
    left), best first: building footprints, which never overlap on the ground, as a map has them."""
    out = geoms.copy()
    order = np.argsort(-np.asarray(scores), kind="stable")
    rank = np.empty(len(geoms), dtype=np.int64)
    rank[order] = np.arange(len(geoms))
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    better = rank[j] < rank[i]
    above = neighbours(len(geoms), i[better], j[better])
    for k in order:  # the better ones are final by the time k comes
        for b in above[k]:
            if out[k] is None:
                break
            if out[b] is not None and shapely.area(shapely.intersection(out[k], out[b])) > 0:
                out[k] = largest_polygon(out[k].difference(out[b]))
    return out


def vectorize_options(cfg: ModelConfig, regularize: bool | None = None) -> VectorizeOptions:
    """The model's clean-up settings; ``regularize`` overrides its own."""
    return cfg.vectorize if regularize is None else replace(cfg.vectorize, regularize=regularize)


def object_layer(
    names: Sequence[str],
    class_ids: np.ndarray,
    scores: np.ndarray,
    areas_m2: np.ndarray | None,
    source: str,
    geometry: Any,
    crs: Any,
) -> gpd.GeoDataFrame:
    """Objects as the layer users open: class name and id, score (4 decimals), area in square
    metres (3 decimals; NaN without georeference, which has no metres), source raster."""
    n = len(class_ids)
    ids = np.asarray(class_ids, dtype=np.int32)
    columns = {
        "class": np.array(names, dtype=object)[ids] if n else np.array([], dtype=object),
        "class_id": ids,
        "score": np.round(np.asarray(scores, dtype=np.float64), 4),
        "area_m2": np.round(np.asarray(areas_m2, dtype=np.float64), 3) if areas_m2 is not None else np.full(n, np.nan),
        "source": np.full(n, source, dtype=object),
    }
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geometry, crs=crs), crs=crs)


def box_layer(boxes: Boxes, plan: ReadPlan, classes: tuple[str, ...], source: str) -> gpd.GeoDataFrame:
    """Merged boxes (model-grid pixels) as rectangles in the raster's CRS."""
    x1, y1, x2, y2 = boxes.xyxy.T
    corners = np.stack([np.stack([x1, x2, x2, x1], axis=1), np.stack([y1, y1, y2, y2], axis=1)], axis=2)
    coords = to_crs(plan, corners.reshape(-1, 2)).reshape(-1, 4, 2)
    polygons = shapely.polygons(coords) if len(boxes) else np.array([], dtype=object)
    areas = (x2 - x1) * (y2 - y1) * plan.pixel_area_m2 if plan.crs else None
    return object_layer(classes, boxes.classes, boxes.scores, areas, source, polygons, plan.crs)


def outline_layer(
    boxes: Boxes, plan: ReadPlan, classes: tuple[str, ...], source: str, opts: VectorizeOptions
) -> gpd.GeoDataFrame:
    """Merged instance outlines (``boxes.polys``) cleaned up by ``opts``, clipped to the raster, as one
    polygon each in the raster's CRS; objects whose outline goes go too."""
    if boxes.polys is None:
        raise ValueError("outline_layer needs boxes with outlines")
    boxes = _clean_outlines(boxes, boxes.polys, plan, opts)
    outlines = largest_polygons(shapely.intersection(boxes.polys, shapely.box(0, 0, plan.width, plan.height)))
    outlines[[g is None for g in outlines]] = shapely.Polygon()
    polygons = shapely.transform(outlines, lambda xy: to_crs(plan, xy))
    areas = shapely.area(outlines) * plan.pixel_area_m2 if plan.crs else None
    return object_layer(classes, boxes.classes, boxes.scores, areas, source, polygons, plan.crs)


def region_layer(
    shapes: list[Shape], plan: ReadPlan, classes: tuple[str, ...], source: str, opts: VectorizeOptions
) -> gpd.GeoDataFrame:
    """A segmenter's regions cleaned up by ``opts`` (:func:`clean`), as polygons in the raster's CRS."""
    pixel_m = (plan.pixel_size_m[0] * plan.pixel_size_m[1]) ** 0.5
    kept = [(s, g) for s in shapes if (g := clean(s.geom, opts, pixel_m, plan.pixel_area_m2)) is not None]
    if opts.grow_m > 0 or opts.regularize:  # grown or squared outlines stay on the raster
        grid_box = shapely.box(0, 0, plan.width, plan.height)
        kept = [(s, g if grid_box.contains(g) else g.intersection(grid_box)) for s, g in kept]
    geoms = [shapely.transform(g, lambda xy: to_crs(plan, xy)) for _, g in kept]
    areas = np.array([g.area * plan.pixel_area_m2 for _, g in kept]) if plan.crs else None
    class_ids = np.array([s.cls - 1 for s, _ in kept], dtype=np.int32)
    scores = np.array([s.score for s, _ in kept])
    return object_layer(classes, class_ids, scores, areas, source, geoms, plan.crs)


def _clean_outlines(boxes: Boxes, polys: np.ndarray, plan: ReadPlan, opts: VectorizeOptions) -> Boxes:
    """Instance outlines cleaned up as the model says (:func:`clean`), then with ``disjoint`` carved
    apart; objects whose outline goes, or falls below the minimum area, go too."""
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


def to_crs(plan: ReadPlan, xy: np.ndarray) -> np.ndarray:
    """Model-grid pixel coordinates (n, 2) to the raster's CRS."""
    # affine's type hints give @ one point; it maps arrays of coordinates as well
    return np.column_stack(plan.transform @ (xy[:, 0], xy[:, 1]))  # type: ignore[operator, arg-type]
