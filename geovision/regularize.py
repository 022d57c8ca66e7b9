"""Building outlines squared up: right angles where the footprint has them, no stair-steps.

A mask traced pixel by pixel gives stair-stepped outlines. Most buildings are
made of straight walls meeting at right angles, so each outline is turned to
its dominant direction (that of its minimum rotated rectangle), simplified,
and every edge is snapped to that direction or the one across it; runs of
edges along one direction merge into one wall at their length-weighted mean
offset. An outline that fills most of its rotated rectangle becomes that
rectangle, shrunk to the outline's area. An outline that squaring would
change too much (an L that is really a curve, a round tank), or make busier,
keeps its simplified shape, and so do outlines too small to tell a direction.

Works in any metric plane; the pipeline calls it in model-grid pixels, which
are square on the ground.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely import affinity

from geovision.geometry import largest_polygon, outline_iou

#: Outlines filling this share of their minimum rotated rectangle become the rectangle.
RECTANGLE_FILL = 0.85
#: A squared outline must overlap the traced one at least this much (IoU), or the traced one is kept.
MIN_IOU = 0.85
#: Outlines smaller than this (in pixels) are left as traced: a few pixels tell no direction.
MIN_AREA = 100.0


def dominant_angle(poly: shapely.Polygon) -> float:
    """Direction of the longest side of the minimum rotated rectangle, degrees in [0, 90)."""
    rect = shapely.minimum_rotated_rectangle(poly)
    if rect.geom_type != "Polygon":
        return 0.0
    xy = np.asarray(rect.exterior.coords)
    sides = np.diff(xy[:3], axis=0)
    longest = sides[int(np.argmax(np.hypot(sides[:, 0], sides[:, 1])))]
    return math.degrees(math.atan2(longest[1], longest[0])) % 90.0


def _square_ring(xy: np.ndarray) -> np.ndarray | None:
    """Vertices of a ring (already turned to the axes) with every edge horizontal or vertical.

    Returns None when the edges do not alternate into at least four walls.
    """
    d = np.diff(np.vstack([xy, xy[:1]]), axis=0)
    horizontal = np.abs(d[:, 0]) >= np.abs(d[:, 1])
    length = np.hypot(d[:, 0], d[:, 1])
    # runs of edges of one kind, cyclically: start at a change of kind
    changes = np.flatnonzero(horizontal != np.roll(horizontal, 1))
    if len(changes) < 4:
        return None
    order = np.roll(np.arange(len(xy)), -int(changes[0]))
    walls: list[tuple[bool, float]] = []
    run: list[int] = []
    for i in order:
        if run and horizontal[i] != horizontal[run[0]]:
            walls.append(_wall(run, horizontal, xy, d, length))
            run = []
        run.append(int(i))
    walls.append(_wall(run, horizontal, xy, d, length))
    if len(walls) < 4 or len(walls) % 2:
        return None
    # a vertex where each wall meets the next: (x of the vertical one, y of the horizontal one)
    out = []
    for (h1, o1), (_, o2) in zip(walls, walls[1:] + walls[:1]):
        out.append((o2, o1) if h1 else (o1, o2))
    return np.asarray(out)


def _wall(
    run: list[int], horizontal: np.ndarray, xy: np.ndarray, d: np.ndarray, length: np.ndarray
) -> tuple[bool, float]:
    """(is horizontal, offset): a run of edges as one wall at their length-weighted mean offset."""
    h = bool(horizontal[run[0]])
    mids = xy[run] + d[run] / 2
    w = length[run] + 1e-9
    return h, float(np.average(mids[:, 1] if h else mids[:, 0], weights=w))


def regularize(poly: shapely.Polygon, tolerance: float = 1.0) -> shapely.Polygon:
    """``poly`` squared up (see the module docstring); ``tolerance`` is the simplification distance."""
    if poly.is_empty or poly.area < MIN_AREA:
        return poly.simplify(tolerance, preserve_topology=True)
    rect = shapely.minimum_rotated_rectangle(poly)
    if rect.geom_type == "Polygon" and rect.area > 0 and poly.area / rect.area >= RECTANGLE_FILL:
        # the rectangle around a traced outline is inflated by its stair-steps: keep the outline's area
        k = math.sqrt(poly.area / rect.area)
        return affinity.scale(rect, k, k, origin=rect.centroid)
    traced = poly.simplify(tolerance, preserve_topology=True)  # what is kept when squaring does not fit
    angle = dominant_angle(poly)
    centre = poly.centroid
    turned = affinity.rotate(poly, -angle, origin=centre)
    # a coarser simplification first, so that wiggles of a pixel do not become walls of their own
    simple = turned.simplify(1.5 * tolerance, preserve_topology=True)
    if simple.geom_type != "Polygon" or simple.is_empty:
        return traced
    xy = np.asarray(simple.exterior.coords)[:-1]
    squared = _square_ring(xy) if len(xy) >= 4 else None
    if squared is None:
        return traced
    candidate = shapely.Polygon(squared)
    if not candidate.is_valid:
        candidate = largest_polygon(candidate.buffer(0))
    if candidate is None or candidate.is_empty:
        return traced
    candidate = affinity.rotate(candidate, angle, origin=centre)
    if outline_iou(candidate, poly) < MIN_IOU:
        return traced
    if traced.geom_type == "Polygon" and len(candidate.exterior.coords) > len(traced.exterior.coords):
        return traced  # squaring is to make outlines simpler, never busier
    return shapely.Polygon(candidate.exterior)
