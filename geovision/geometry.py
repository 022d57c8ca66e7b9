"""Geometry helpers every stage shares: IoU of boxes and of outlines, NMS, overlap graphs, polygon parts.

Boxes are (..., 4) arrays of x1, y1, x2, y2; outlines are arrays of shapely
geometries. One IoU for each, used by seam merging, NMS, evaluation,
comparison and outline squaring alike.

Class-aware NMS is greedy, in NumPy: the ONNX Runtime path must run without
torch installed, so it (and the seam merging every run shares) uses
:func:`batched_nms`; the torch backend, which has torch loaded anyway, passes
torchvision's (:func:`geovision.backends.yolo.batched_nms_torchvision`) where an
:data:`Nms` is taken. A test checks that both keep the same boxes.
"""

from __future__ import annotations

from collections.abc import Callable

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


#: (boxes, scores, classes, iou) -> indexes kept, best score first
Nms = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]


#: up to this many boxes the pairwise IoU is computed at once (float32: 16 MB at 2048)
MATRIX_MAX = 2048


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indexes of the boxes kept, best score first; boxes of different classes never suppress each other.

    Greedy, in NumPy (classes kept apart by offsetting their boxes). A tile's
    boxes (up to :data:`MATRIX_MAX`) get their pairwise IoU in one step and the
    greedy pass only reads it; larger sets go box by box, in bounded memory.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = (np.asarray(classes, dtype=np.float64) * (np.abs(b).max() + 1))[:, None]
    order = np.argsort(-np.asarray(scores), kind="stable")
    b = (b + offset)[order]
    if len(b) <= MATRIX_MAX:
        return order[_greedy_on_matrix(box_iou(b[:, None], b[None]) > iou)]
    return order[_greedy_box_by_box(b, iou)]


def _greedy_on_matrix(over: np.ndarray) -> np.ndarray:
    """Positions kept (in score order) given which pairs overlap too much."""
    suppressed = np.zeros(len(over), dtype=bool)
    keep = []
    for i in range(len(over)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return np.asarray(keep, dtype=np.int64)


def _greedy_box_by_box(b: np.ndarray, iou: float) -> np.ndarray:
    """Positions kept (in score order), one box's overlaps at a time."""
    rest = np.arange(len(b))
    keep = []
    while rest.size:
        i, rest = rest[0], rest[1:]
        keep.append(i)
        rest = rest[box_iou(b[i], b[rest]) <= iou]
    return np.asarray(keep, dtype=np.int64)
