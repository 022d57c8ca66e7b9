"""Squaring building outlines: traced stair-steps become straight walls at right angles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio import features
from shapely import affinity

from geovision.regularize import dominant_angle, regularize
from geovision.vectorize import Shape, VectorizeOptions, clean

L_SHAPE = shapely.Polygon([(0, 0), (20, 0), (20, 8), (8, 8), (8, 16), (0, 16)])


def traced(poly: shapely.Polygon, size: int = 48) -> shapely.Polygon:
    """``poly`` as a mask traces it: rasterised, then polygonised pixel edge by pixel edge."""
    mask = features.rasterize([(poly, 1)], out_shape=(size, size), dtype="uint8")
    [(geom, _)] = list(features.shapes(mask, mask=mask > 0))
    return shapely.geometry.shape(geom)


def corner_angles(poly: shapely.Polygon) -> list[float]:
    xy = np.asarray(poly.exterior.coords)[:-1]
    out = []
    for i in range(len(xy)):
        a, b = xy[i - 1] - xy[i], xy[(i + 1) % len(xy)] - xy[i]
        cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
        out.append(math.degrees(math.acos(np.clip(cos, -1, 1))))
    return out


@pytest.mark.parametrize("angle", [0, 17, 30, 45, 62])
def test_a_traced_l_shape_comes_back_with_six_right_angles(angle):
    truth = affinity.translate(affinity.rotate(L_SHAPE, angle, origin=(0, 0)), 20, 6)
    stairs = traced(truth)
    if angle:
        assert len(stairs.exterior.coords) > 12  # pixel stair-steps
    out = regularize(stairs)
    assert len(out.exterior.coords) - 1 == 6
    assert all(abs(a - 90) < 1 or abs(a - 270) < 1 for a in corner_angles(out))
    assert out.intersection(truth).area / out.union(truth).area > 0.85
    assert abs(dominant_angle(out) - angle % 90) < 5 or abs(dominant_angle(out) - angle % 90) > 85


def test_a_nearly_rectangular_outline_becomes_its_rectangle():
    truth = affinity.rotate(shapely.box(10, 10, 30, 22), 25, origin="centroid")
    out = regularize(traced(truth))
    assert len(out.exterior.coords) - 1 == 4
    assert out.intersection(truth).area / out.union(truth).area > 0.9


def test_a_round_outline_is_not_forced_square():
    disc = shapely.Point(24, 24).buffer(15, quad_segs=32)
    out = regularize(traced(disc), tolerance=1.0)
    assert out.intersection(disc).area / out.union(disc).area > 0.9
    assert len(out.exterior.coords) > 8  # still round-ish, not a box or an L


@settings(max_examples=100, deadline=None)
@given(w=st.floats(10, 40), h=st.floats(10, 40), angle=st.floats(0, 90), dx=st.floats(0, 5), dy=st.floats(0, 5))
def test_squared_outlines_are_valid_and_no_worse_than_the_trace(w, h, angle, dx, dy):
    truth = affinity.rotate(shapely.box(8 + dx, 8 + dy, 8 + dx + w, 8 + dy + h), angle, origin="centroid")
    stairs = traced(truth, size=80)
    out = regularize(stairs)
    assert out.is_valid and out.geom_type == "Polygon"
    iou = lambda a, b: a.intersection(b).area / a.union(b).area  # noqa: E731
    # as close to the building as the trace, give or take: a trace of a few pixels cannot
    # resolve a tilt of a few degrees, which squaring then loses
    assert iou(out, truth) >= iou(stairs, truth) - 0.1


def test_clean_grows_regularises_and_filters_in_metres():
    inner = affinity.translate(affinity.rotate(L_SHAPE, 30, origin=(0, 0)), 20, 6).buffer(-1, join_style="mitre")
    shape = Shape(traced(inner), 1, 1.0, 1)
    raw = clean(shape.geom, VectorizeOptions(), 0.3, 0.09)
    grown = clean(shape.geom, VectorizeOptions(grow_m=0.3), 0.3, 0.09)
    assert raw is not None and grown is not None
    assert grown.area > raw.area + 0.9 * raw.length  # one pixel (0.3 m) all round
    squared = clean(shape.geom, VectorizeOptions(grow_m=0.3, regularize=True), 0.3, 0.09)
    assert squared is not None and len(squared.exterior.coords) - 1 == 6
    assert clean(shape.geom, VectorizeOptions(min_area_m2=grown.area * 0.09 * 2), 0.3, 0.09) is None


def test_negative_growth_shrinks_keeps_the_larger_part_and_drops_what_vanishes():
    square = shapely.box(0, 0, 20, 20)  # 6 m a side at 0.3 m
    shrunk = clean(square, VectorizeOptions(grow_m=-0.3), 0.3, 0.09)
    assert shrunk is not None and shrunk.bounds == pytest.approx((1, 1, 19, 19))
    # two rooms joined by a corridor one pixel wide: shrinking cuts it, the larger room stays
    rooms = [shapely.box(0, 0, 20, 20), shapely.box(20, 9.5, 30, 10.5), shapely.box(30, 5, 40, 15)]
    part = clean(shapely.union_all(rooms), VectorizeOptions(grow_m=-0.3), 0.3, 0.09)
    assert part is not None and part.geom_type == "Polygon" and part.bounds == pytest.approx((1, 1, 19, 19))
    assert clean(square, VectorizeOptions(grow_m=-3.0), 0.3, 0.09) is None  # 10 px in from each side: nothing
