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
