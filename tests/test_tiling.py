import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geovision.tiling import TileGrid


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 3000),
    height=st.integers(1, 3000),
    tile=st.integers(8, 700),
    frac=st.floats(0, 0.9),
)
def test_tiles_cover_grid_exactly_with_constant_overlap(width, height, tile, frac):
    overlap = min(int(tile * frac), tile - 1)
    grid = TileGrid(width, height, tile, overlap)
    tiles = list(grid)
    assert len(tiles) == grid.n_rows * grid.n_cols == len(grid)
    xs = sorted({t.x0 for t in tiles})
    ys = sorted({t.y0 for t in tiles})
    # constant stride, first tile at 0, last tile reaches the edge, none starts past it
    assert xs[0] == 0 and ys[0] == 0
    assert all(b - a == grid.stride for a, b in zip(xs, xs[1:]))
    assert all(b - a == grid.stride for a, b in zip(ys, ys[1:]))
    assert xs[-1] + tile >= width and ys[-1] + tile >= height
    assert xs[-1] < width and ys[-1] < height
    # no tile is superfluous: dropping the last column/row would leave pixels uncovered
    if len(xs) > 1:
        assert xs[-2] + tile < width
    if len(ys) > 1:
        assert ys[-2] + tile < height


def test_every_pixel_covered_once_plus_overlap():
    grid = TileGrid(250, 130, 64, 16)
    cover = np.zeros((130 + 64, 250 + 64), int)
    for t in grid:
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
    cover = cover[:130, :250]
    assert cover.min() >= 1
    # pixels in one overlap band are seen twice, at a four-tile corner four times, never more
    assert set(np.unique(cover)) == {1, 2, 4}


def test_rows_are_in_order():
    grid = TileGrid(300, 300, 100, 20)
    assert [t.row for t in grid.row(2)] == [2] * grid.n_cols
    assert grid.row_start(2) == 160


@pytest.mark.parametrize("args", [(0, 10, 8, 0), (10, 10, 0, 0), (10, 10, 8, 8), (10, 10, 8, -1)])
def test_invalid_grids_are_refused(args):
    with pytest.raises(ValueError):
        TileGrid(*args)
