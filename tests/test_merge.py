import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from geovision.merge import Boxes, SeamMerger, merge_boxes, tile_boxes
from geovision.tiling import TileGrid


def boxes_of_objects(grid: TileGrid, objects: list[tuple[float, float, float, float, int]]) -> dict[int, Boxes]:
    """What a perfect detector reports per row: each object clipped to every tile it touches."""
    rows: dict[int, list[Boxes]] = {}
    for t in grid:
        found = []
        for x1, y1, x2, y2, c in objects:
            cx1, cy1 = max(x1, t.x0), max(y1, t.y0)
            cx2, cy2 = min(x2, t.x1), min(y2, t.y1)
            if cx2 - cx1 >= 2 and cy2 - cy1 >= 2:
                found.append((cx1 - t.x0, cy1 - t.y0, cx2 - t.x0, cy2 - t.y0, c))
        arr = np.asarray(found, dtype=np.float64).reshape(-1, 5)
        rows.setdefault(t.row, []).append(
            tile_boxes(arr[:, :4], np.full(len(arr), 0.8), arr[:, 4].astype(int), t.x0, t.y0, t.size, grid)
        )
    return {r: Boxes.concat(b) for r, b in rows.items()}


def test_object_larger_than_overlap_becomes_one_full_box():
    grid = TileGrid(200, 100, 64, 16)
    per_row = boxes_of_objects(grid, [(30, 10, 130, 40, 0)])  # spans three tiles, 100 px wide
    merged = merge_boxes(Boxes.concat(list(per_row.values())))
    assert len(merged) == 1
    np.testing.assert_allclose(merged.xyxy[0], [30, 10, 130, 40])


def test_four_tile_corner_object_is_one_box():
    grid = TileGrid(150, 150, 64, 16)
    per_row = boxes_of_objects(grid, [(40, 40, 70, 70, 0)])
    merged = merge_boxes(Boxes.concat(list(per_row.values())))
    assert len(merged) == 1
    np.testing.assert_allclose(merged.xyxy[0], [40, 40, 70, 70])


def test_neighbours_of_other_class_or_apart_stay_separate():
    grid = TileGrid(200, 100, 64, 16)
    objs = [(44, 10, 60, 30, 0), (44, 10, 60, 30, 1), (70, 60, 90, 80, 0), (92, 60, 110, 80, 0)]
    merged = merge_boxes(Boxes.concat(list(boxes_of_objects(grid, objs).values())))
    assert len(merged) == 4


@st.composite
def scenes(draw):
    w, h = draw(st.integers(60, 300)), draw(st.integers(60, 300))
    grid = TileGrid(w, h, 64, draw(st.sampled_from([8, 16, 24])))
    objs = []
    for _ in range(draw(st.integers(0, 15))):
        x1, y1 = draw(st.integers(0, w - 5)), draw(st.integers(0, h - 5))
        objs.append(
            (
                x1,
                y1,
                min(w, x1 + draw(st.integers(4, 90))),
                min(h, y1 + draw(st.integers(4, 90))),
                draw(st.integers(0, 1)),
            )
        )
    return grid, objs


@settings(max_examples=150, deadline=None)
@given(scenes())
def test_row_streaming_equals_merging_everything_at_once(scene):
    grid, objs = scene
    per_row = boxes_of_objects(grid, objs)
    everything = merge_boxes(Boxes.concat(list(per_row.values())))
    merger = SeamMerger(grid)
    streamed = Boxes.concat([merger.add_row(r, per_row.get(r, Boxes.empty())) for r in range(grid.n_rows)])
    key = lambda b: sorted(map(tuple, np.c_[b.xyxy, b.classes].round(6)))  # noqa: E731
    assert key(streamed) == key(everything)


@settings(max_examples=150, deadline=None)
@given(scenes())
def test_isolated_objects_come_out_once_with_full_extent(scene):
    grid, objs = scene
    # keep objects that are apart from each other (a perfect detector still sees them separately)
    apart = []
    for o in objs:
        if all(o[2] + 3 <= p[0] or p[2] + 3 <= o[0] or o[3] + 3 <= p[1] or p[3] + 3 <= o[1] for p in apart):
            apart.append(o)
    per_row = boxes_of_objects(grid, apart)
    merged = merge_boxes(Boxes.concat(list(per_row.values())))
    got = sorted(map(tuple, np.c_[merged.xyxy, merged.classes]))
    assert got == sorted(map(tuple, np.asarray(apart, dtype=float).reshape(-1, 5)))


def test_outlines_cut_along_the_shared_region_edge_merge_without_geos_errors():
    """An outline that only touches the tiles' shared corner along a line, next to one that misses it:
    clipped, they are a polygon-and-line collection and an empty polygon, which GEOS cannot intersect."""
    import shapely

    a = shapely.union_all([shapely.box(40, 40, 60, 47), shapely.box(50, 47, 60, 60), shapely.box(40, 47, 48, 50)])
    d = shapely.union_all([shapely.box(55, 65, 70, 70), shapely.box(65, 50, 70, 70)])
    assert shapely.intersection(a, shapely.box(48, 48, 64, 64)).geom_type == "GeometryCollection"
    polys = np.empty(2, dtype=object)
    polys[:] = [a, d]
    b = Boxes(
        xyxy=np.array([a.bounds, d.bounds], float),
        scores=np.array([0.9, 0.8], np.float32),
        classes=np.zeros(2, np.int64),
        tiles=np.array([[0, 0, 64, 64], [48, 48, 112, 112]], float),
        cut=np.array([True, True]),
        polys=polys,
    )
    merged = merge_boxes(b)
    assert len(merged) == 2 and {p.area for p in merged.polys} == {a.area, d.area}


def test_outlines_suppress_each_other_by_their_own_overlap_not_their_boxes():
    """Two L-shaped neighbours interlock (boxes IoU 0.56, outlines apart): both stay; two outlines of
    one building overlapping by 0.4 are one object at iou 0.3, two at 0.5."""
    import shapely

    left = shapely.union_all([shapely.box(0, 0, 10, 2), shapely.box(0, 2, 2, 10)])
    right = shapely.union_all([shapely.box(2.5, 8, 10, 10), shapely.box(8, 2.5, 10, 8)])
    assert not left.intersects(right)
    assert shapely.box(*right.bounds).area / shapely.box(*left.bounds).area > 0.5  # the boxes' IoU
    twin_a, twin_b = shapely.box(20, 0, 30, 10), shapely.box(24, 0, 34, 10)  # IoU 6/14 = 0.43
    polys = np.empty(4, dtype=object)
    polys[:] = [left, right, twin_a, twin_b]
    b = Boxes(
        xyxy=np.array([p.bounds for p in polys], float),
        scores=np.array([0.9, 0.8, 0.7, 0.6], np.float32),
        classes=np.zeros(4, np.int64),
        tiles=np.array([[0, 0, 64, 64]] * 4, float),
        cut=np.zeros(4, bool),
        polys=polys,
    )
    assert len(merge_boxes(Boxes.concat([b]), nms_iou=0.5)) == 4
    strict = merge_boxes(b, nms_iou=0.3)
    assert len(strict) == 3 and twin_b not in list(strict.polys) and twin_a in list(strict.polys)
