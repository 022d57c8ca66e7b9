"""Merging detections across tile seams into one box per object.

Neighbouring tiles overlap, so an object near a seam is seen by several
tiles: whole by some, cut by a tile edge in others. Two boxes from different
tiles are taken as the same object when, clipped to the region both tiles
see, they overlap by ``match_iou``: inside that shared region both tiles
looked at the same pixels. A group of such boxes becomes one box: the best
whole box if any tile saw the object whole, else the union of the cut pieces
(an object larger than the overlap, or at a four-tile corner). A class-aware
NMS (:func:`geovision.geometry.batched_nms`) then removes what duplicates remain; for instance
outlines it compares the outlines themselves, so two L-shaped neighbours whose
boxes overlap both stay, and two outlines of one building do not.

Memory stays bounded: :class:`SeamMerger` takes detections one row of tiles
at a time and finalises every group of boxes that no later row can touch,
so only about one row of boxes is ever held. The result is the same as
merging all boxes at once, because merging only ever relates boxes that
intersect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from geovision.geometry import (
    batched_nms,
    box_iou,
    components,
    intersecting_boxes,
    largest_polygon,
    neighbours,
    outline_iou,
    polygonal,
)
from geovision.tiling import TileGrid

#: A box edge this close (model pixels) to an inner tile edge counts as cut by it.
EDGE_PX = 2.0


@dataclass
class Boxes:
    """Boxes in model-grid pixels, with the extent of the tile each came from."""

    xyxy: np.ndarray  # (n, 4) float64
    scores: np.ndarray  # (n,) float32
    classes: np.ndarray  # (n,) int64
    tiles: np.ndarray  # (n, 4) float64: x0, y0, x1, y1 of the source tile
    cut: np.ndarray  # (n,) bool: touches an edge the tile shares with a neighbour
    polys: np.ndarray | None = None  # (n,) outline polygons (instance segmenters), model-grid pixels
    ids: np.ndarray | None = None  # (n,) caller's row numbers, carried through merging

    @classmethod
    def empty(cls) -> Boxes:
        z = np.zeros((0, 4))
        return cls(z, np.zeros(0, np.float32), np.zeros(0, np.int64), z.copy(), np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, idx: np.ndarray) -> Boxes:
        polys = self.polys[idx] if self.polys is not None else None
        ids = self.ids[idx] if self.ids is not None else None
        return Boxes(self.xyxy[idx], self.scores[idx], self.classes[idx], self.tiles[idx], self.cut[idx], polys, ids)

    @staticmethod
    def concat(parts: list[Boxes]) -> Boxes:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Boxes.empty()
        polys = np.concatenate([p.polys for p in parts]) if parts[0].polys is not None else None
        ids = np.concatenate([p.ids for p in parts]) if parts[0].ids is not None else None
        return Boxes(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.classes for p in parts]),
            np.concatenate([p.tiles for p in parts]),
            np.concatenate([p.cut for p in parts]),
            polys,
            ids,
        )


def cut_flags(
    xyxy: np.ndarray, tiles: np.ndarray, edge: float, outer: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """Which boxes reach within ``edge`` of a side of their tile that a neighbour shares.

    ``tiles`` holds each box's tile (x0, y0, x1, y1). A side on or beyond
    ``outer`` (the raster's bounds) has no neighbour and cuts nothing; without
    ``outer`` every side may have one (scenes whose neighbours are unknown).
    """
    near = np.stack(
        [
            xyxy[:, 0] <= tiles[:, 0] + edge,
            xyxy[:, 1] <= tiles[:, 1] + edge,
            xyxy[:, 2] >= tiles[:, 2] - edge,
            xyxy[:, 3] >= tiles[:, 3] - edge,
        ],
        axis=1,
    )
    if outer is not None:
        o = np.asarray(outer, dtype=np.float64)
        near &= np.concatenate([tiles[:, :2] > o[:2], tiles[:, 2:] < o[2:]], axis=1)
    return np.asarray(near.any(axis=1))


def tile_boxes(
    xyxy_tile: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    x0: int,
    y0: int,
    size: int,
    grid: TileGrid,
    polys: np.ndarray | None = None,
) -> Boxes:
    """Boxes (and outlines) of one tile (tile pixels) moved to model-grid pixels, with their cut flags."""
    xyxy = np.asarray(xyxy_tile, dtype=np.float64).reshape(-1, 4) + [x0, y0, x0, y0]
    tiles = np.tile(np.array([x0, y0, x0 + size, y0 + size], dtype=np.float64), (len(xyxy), 1))
    cut = cut_flags(xyxy, tiles, EDGE_PX, outer=(0, 0, grid.width, grid.height))
    if polys is not None:
        polys = shapely.transform(np.asarray(polys, dtype=object), lambda xy: xy + [x0, y0])
    return Boxes(xyxy, np.asarray(scores, np.float32), np.asarray(classes, np.int64), tiles, cut, polys)


def merge_boxes(b: Boxes, match_iou: float = 0.5, nms_iou: float = 0.5) -> Boxes:
    """Merge all boxes of ``b`` across seams, then class-aware NMS. See the module docstring."""
    if len(b) == 0:
        return b
    i, j = intersecting_boxes(b.xyxy)
    other_tile = np.any(b.tiles[i] != b.tiles[j], axis=1)
    same_class = b.classes[i] == b.classes[j]
    i, j = i[other_tile & same_class], j[other_tile & same_class]
    shared = np.concatenate(
        [np.maximum(b.tiles[i, :2], b.tiles[j, :2]), np.minimum(b.tiles[i, 2:], b.tiles[j, 2:])], axis=1
    )
    if b.polys is None:
        iou = box_iou(_clip(b.xyxy[i], shared), _clip(b.xyxy[j], shared))
    else:  # instance outlines: compare the masks themselves inside the shared region
        region = shapely.box(*shared.T)
        pi = polygonal(shapely.intersection(b.polys[i], region))
        pj = polygonal(shapely.intersection(b.polys[j], region))
        iou = outline_iou(pi, pj)
    match = iou >= match_iou
    labels = components(len(b), i[match], j[match])
    merged = _merge_groups(b, labels)
    return merged.take(object_nms(merged.xyxy, merged.scores, merged.classes, merged.polys, nms_iou))


def _clip(xyxy: np.ndarray, region: np.ndarray) -> np.ndarray:
    return np.concatenate([np.maximum(xyxy[:, :2], region[:, :2]), np.minimum(xyxy[:, 2:], region[:, 2:])], axis=1)


def _merge_groups(b: Boxes, labels: np.ndarray) -> Boxes:
    """One box per label: the best whole member, else the union of the cut members."""
    order = np.lexsort((-b.scores, labels))
    labels_sorted = labels[order]
    starts = np.flatnonzero(np.r_[True, labels_sorted[1:] != labels_sorted[:-1]])
    if len(starts) == len(b):
        return b
    keep, xyxy = [], b.xyxy.copy()
    polys = b.polys.copy() if b.polys is not None else None
    for s, e in zip(starts, np.r_[starts[1:], len(order)]):
        members = order[s:e]  # best score first
        whole = members[~b.cut[members]]
        if len(whole):
            best = whole[0]
        else:
            best = members[0]
            xyxy[best] = [*b.xyxy[members, :2].min(axis=0), *b.xyxy[members, 2:].max(axis=0)]
            if polys is not None and b.polys is not None and len(members) > 1:
                polys[best] = largest_polygon(shapely.union_all(b.polys[members]))
        keep.append(best)
    idx = np.array(keep, dtype=np.int64)
    out = Boxes(xyxy, b.scores.copy(), b.classes, b.tiles, b.cut, polys, b.ids).take(idx)
    out.scores = b.scores[[order[s] for s in starts]]
    return out


def object_nms(
    xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, polys: np.ndarray | None, iou: float
) -> np.ndarray:
    """Indexes kept by class-aware NMS, best score first: by box IoU, or by the outlines' IoU where
    ``polys`` are given (interlocking L-shaped neighbours have overlapping boxes, not outlines)."""
    if polys is None:
        return batched_nms(xyxy, scores, classes, iou)
    i, j = intersecting_boxes(xyxy)
    same = classes[i] == classes[j]
    over = outline_iou(polys[i[same]], polys[j[same]]) > iou
    i, j = i[same][over], j[same][over]
    overlapping = neighbours(len(scores), np.r_[i, j], np.r_[j, i])
    suppressed = np.zeros(len(scores), dtype=bool)
    kept = []
    for k in np.argsort(-scores, kind="stable"):
        if not suppressed[k]:
            kept.append(k)
            suppressed[overlapping[k]] = True
    return np.asarray(kept, dtype=np.int64)


class SeamMerger:
    """Row-by-row merging with memory bounded by about one row of boxes.

    Call :meth:`add_row` with each row's boxes in order; it returns the boxes
    that are final. :meth:`finish` returns the rest.
    """

    def __init__(self, grid: TileGrid, match_iou: float = 0.5, nms_iou: float = 0.5) -> None:
        self.grid = grid
        self.match_iou = match_iou
        self.nms_iou = nms_iou
        self.pending = Boxes.empty()

    def add_row(self, row: int, boxes: Boxes) -> Boxes:
        self.pending = Boxes.concat([self.pending, boxes])
        if row + 1 >= self.grid.n_rows:
            return self.finish()
        boundary = self.grid.row_start(row + 1)
        p = self.pending
        labels = components(len(p), *intersecting_boxes(p.xyxy))
        reach = np.full(labels.max() + 1 if len(labels) else 0, -np.inf)
        np.maximum.at(reach, labels, p.xyxy[:, 3])
        done = reach[labels] <= boundary
        self.pending = p.take(np.flatnonzero(~done))
        return merge_boxes(p.take(np.flatnonzero(done)), self.match_iou, self.nms_iou)

    def finish(self) -> Boxes:
        out = merge_boxes(self.pending, self.match_iou, self.nms_iou)
        self.pending = Boxes.empty()
        return out
