"""Class strips to polygons, one object one polygon, in bounded memory.

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

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import shapely
from affine import Affine
from rasterio import features

from geovision.blend import Strip
from geovision.config import ModelConfig, VectorizeOptions
from geovision.merge import components, largest_polygon, neighbours
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
