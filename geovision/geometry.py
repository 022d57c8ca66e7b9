"""Geometry helpers every stage shares: IoU of boxes and of outlines, overlap graphs, polygon parts.

Boxes are (..., 4) arrays of x1, y1, x2, y2; outlines are arrays of shapely
geometries. One IoU for each, used by seam merging, NMS, evaluation,
comparison and outline squaring alike.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` and ``b``, broadcast over their leading axes (rows against rows, or
    ``a[:, None]`` against ``b[None]`` for every pair); empty boxes give 0."""
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def outline_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of outline a[k] with b[k] for each k (shapely geometries); 0 where both are empty."""
    inter = np.asarray(shapely.area(shapely.intersection(a, b)), np.float64)
    union = shapely.area(a) + shapely.area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iou_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The intersecting pairs of outlines (i into ``a``, j into ``b``, found by an STRtree) and their IoU."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    i, j = shapely.STRtree(b).query(a, predicate="intersects")
    return i, j, outline_iou(a[i], b[j])


def intersecting_boxes(xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of boxes whose areas intersect, via an STRtree."""
    if len(xyxy) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    geoms = shapely.box(xyxy[:, 0], xyxy[:, 1], xyxy[:, 2], xyxy[:, 3])
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = i < j
    return i[keep], j[keep]


def _graph(n: int, i: np.ndarray, j: np.ndarray) -> csr_matrix:
    return coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n)).tocsr()


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes given edges (i, j)."""
    return connected_components(_graph(n, np.asarray(i, np.int64), np.asarray(j, np.int64)), directed=False)[1]


def neighbours(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """For each of ``n`` nodes, the nodes its edges (i -> j) lead to."""
    graph = _graph(n, i, j)
    return np.split(graph.indices, graph.indptr[1:-1])


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """The polygonal part of each geometry (in place). An outline cut along a region's edge can come
    back as a collection of a polygon and the edge's line, which GEOS cannot intersect with an empty
    polygon; an invalid label repaired by ``make_valid`` can hold lines too."""
    mixed = np.flatnonzero(shapely.get_type_id(geoms) == shapely.GeometryType.GEOMETRYCOLLECTION)
    for k in mixed:
        parts = shapely.get_parts(geoms[k])
        geoms[k] = shapely.union_all(parts[shapely.get_dimensions(parts) == 2])
    return geoms


def largest_polygons(geoms: np.ndarray) -> np.ndarray:
    """Each geometry's largest polygon, None where it holds none: an outline clipped to a frame
    can come back in pieces, or with a piece of the frame's edge as a line."""
    out = polygonal(np.array(geoms, dtype=object))
    split = np.flatnonzero(shapely.get_type_id(out) != shapely.GeometryType.POLYGON)
    out[split] = [largest_polygon(g) for g in out[split]]
    return out


def largest_polygon(geom: shapely.Geometry) -> shapely.Polygon | None:
    """The largest polygon of a geometry that came out in pieces (a union whose pieces do not
    quite touch, a repaired self-intersection); ``geom`` itself if a polygon, None if it holds none."""
    if geom.geom_type == "Polygon":
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type == "Polygon"]
    return max(parts, key=lambda g: g.area) if parts else None
