"""The windowed reader: ground resolution, resampled reads, stretch, bands, masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp

from geovision.errors import BandError
from geovision.raster import Normalization, TileData, ground_pixel_size_m, iter_tiles, plan_read, read_tile
from geovision.tiling import Tile, TileGrid
from tests.conftest import write_raster


@pytest.mark.parametrize(
    "crs, transform, expected",
    [
        ("EPSG:32617", Affine(0.5, 0, 500000, 0, -0.5, 4000000), (0.5, 0.5)),
        # a degree of longitude shrinks with cos(latitude)
        ("EPSG:4326", Affine(1e-5, 0, 10, 0, -1e-5, 60), (1e-5 * 111_412.8 * math.cos(math.radians(60)), 1.1164)),
        # Web Mercator metres are 1/cos(lat) ground metres
        ("EPSG:3857", Affine(1, 0, 0, 0, -1, 6_800_000), (math.cos(math.radians(52.1)), math.cos(math.radians(52.1)))),
    ],
)
def test_ground_pixel_size(crs, transform, expected):
    gx, gy = ground_pixel_size_m(crs, transform, 100, 100)
    assert gx == pytest.approx(expected[0], rel=0.01)
    assert gy == pytest.approx(expected[1], rel=0.01)


def test_fractional_resampling_reads_the_right_ground(tmp_path):
    # a horizontal ramp: value = source column // 4, at 0.025 m; model at 0.1 m (4:1)
    cols = np.arange(400)
    data = np.tile((cols // 4).astype(np.uint8), (3, 300, 1))
    path = write_raster(tmp_path / "ramp.tif", data, transform=Affine(0.025, 0, 500000, 0, -0.025, 4000000))
    with rasterio.open(path) as ds:
        plan = plan_read(ds, 0.1, 3)
        assert (plan.width, plan.height) == (100, 75)
        assert plan.scale_x == pytest.approx(4)
        assert plan.pixel_size_m[0] == pytest.approx(0.1, rel=0.01)
        td = read_tile(ds, plan, Tile(0, 0, 40, 20, 32))
    # model pixel j covers source columns 4j..4j+3, all of value j
    np.testing.assert_array_equal(td.image[0, :, 0], np.arange(40, 72))
    assert td.valid.all()


def test_non_integer_ratio_grid_spans_the_raster_exactly(tmp_path):
    path = write_raster(
        tmp_path / "d.tif",
        np.zeros((3, 708, 751), np.uint8) + 5,
        transform=Affine(0.018, 0, 500000, 0, -0.018, 4000000),
    )
    with rasterio.open(path) as ds:
        plan = plan_read(ds, 0.1, 3)
        # the model grid's footprint is the raster's footprint
        assert plan.transform @ (plan.width, plan.height) == pytest.approx(ds.transform @ (ds.width, ds.height))
        assert plan.width == round(751 * 0.018 / 0.1)


def test_edge_tiles_are_padded_and_masked(tmp_path):
    path = write_raster(tmp_path / "e.tif", np.full((3, 50, 70), 100, np.uint8))
    with rasterio.open(path) as ds:
        plan = plan_read(ds, 0.1, 3)
        td = read_tile(ds, plan, Tile(1, 1, 48, 32, 32))
    assert td.image.shape == (32, 32, 3)
    assert td.valid[:18, :22].all() and not td.valid[18:, :].any() and not td.valid[:, 22:].any()
    assert (td.image[:18, :22] == 100).all() and (td.image[18:, :] == 0).all()


def test_stretch_is_computed_once_per_raster(tmp_path):
    # two halves of very different brightness: a per-tile stretch would equalise them
    data = np.zeros((3, 64, 128), np.uint16)
    data[:, :, :64] = 1000
    data[:, :, 64:] = 3000
    path = write_raster(tmp_path / "u16.tif", data)
    with rasterio.open(path) as ds:
        plan = plan_read(ds, 0.1, 3)
        left = read_tile(ds, plan, Tile(0, 0, 0, 0, 64)).image
        right = read_tile(ds, plan, Tile(0, 1, 64, 0, 64)).image
    assert plan.stretch is not None
    assert left.max() < 10 and right.min() > 245


def test_fixed_normalization(tmp_path):
    path = write_raster(tmp_path / "f.tif", np.full((1, 8, 8), 1024, np.uint16))
    with rasterio.open(path) as ds:
        plan = plan_read(ds, 0.1, 3, normalization=Normalization("fixed", min=(0,), max=(2048,)), accept_grayscale=True)
        td = read_tile(ds, plan, Tile(0, 0, 0, 0, 8))
    assert plan.bands == (1, 1, 1)
    assert (td.image == 128).all()


B, G, R, A = ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.alpha


@pytest.mark.parametrize(
    ("order", "rgb_bands"),
    [((B, G, R, A), (3, 2, 1)), ((A, R, G, B), (2, 3, 4))],  # alpha last as GDAL writes it, or first
)
def test_rgb_found_by_colour_interpretation_and_an_alpha_band_anywhere_masks(tmp_path, order, rgb_bands):
    values = {B: 10, G: 20, R: 30}
    data = np.zeros((4, 16, 16), np.uint8)
    for i, c in enumerate(order):
        if c == A:
            data[i, :, :8] = 255  # alpha: left half valid
        else:
            data[i] = values[c]
    path = write_raster(tmp_path / "bgra.tif", data)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = list(order)
    with rasterio.open(path) as ds:
        plan = plan_read(ds, 0.1, 3)
        td = read_tile(ds, plan, Tile(0, 0, 0, 0, 16))
    assert plan.bands == rgb_bands  # alpha never fed to the model
    assert tuple(td.image[0, 0]) == (30, 20, 10)
    assert td.valid[:, :8].all() and not td.valid[:, 8:].any()


def test_band_errors(tmp_path):
    path = write_raster(tmp_path / "two.tif", np.zeros((2, 8, 8), np.uint8) + 1)
    with rasterio.open(path) as ds:
        with pytest.raises(BandError, match="needs 3 band"):
            plan_read(ds, 0.1, 3)
        with pytest.raises(BandError, match="do not exist"):
            plan_read(ds, 0.1, 3, bands=(1, 2, 5))
        assert plan_read(ds, 0.1, 3, bands=(2, 1, 2)).bands == (2, 1, 2)


def test_block_cache_is_sized_for_a_row_of_tiles_not_the_raster(tmp_path, monkeypatch):
    """GDAL's default block cache (5% of RAM) made memory grow with the raster; reading caps it."""
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    path = write_raster(tmp_path / "r.tif", np.full((3, 500, 700), 9, np.uint8))
    with rasterio.open(path) as ds:
        plan = plan_read(ds, None, 3)
    grid = TileGrid(plan.width, plan.height, 128, 16)
    seen: list[str | None] = []

    def tiles():
        for tile in grid:
            try:
                seen.append(rasterio.env.getenv().get("GDAL_CACHEMAX"))
            except rasterio.errors.EnvError:  # no rasterio.Env open
                seen.append(None)
            yield tile

    read = list(iter_tiles(plan, tiles()))
    assert len(read) == len(grid) and all(isinstance(td, TileData) for td in read)
    assert {int(v) for v in seen[1:]} == {64 * 2**20}  # the floor, for a raster this small

    monkeypatch.setenv("GDAL_CACHEMAX", "300")  # the user's choice wins
    seen.clear()
    list(iter_tiles(plan, tiles()))
    assert all(v is None for v in seen)


@pytest.mark.parametrize("nodata", [float("nan"), None])
def test_nan_pixels_are_no_data_and_do_not_spoil_the_stretch(tmp_path, nodata):
    """nodata=nan never equals itself; undeclared NaN in a float raster is no data too."""
    data = np.full((3, 32, 32), np.nan, np.float32)
    data[:, :, :16] = np.linspace(100, 200, 16, dtype=np.float32)[None, None, :]
    path = write_raster(tmp_path / "f32.tif", data, nodata=nodata)
    with rasterio.open(path) as ds:
        plan = plan_read(ds, 0.1, 3)
        td = read_tile(ds, plan, Tile(0, 0, 0, 0, 32))
    assert plan.stretch is not None and all(np.isfinite(v) for band in plan.stretch for v in band)
    assert td.valid[:, :16].all() and not td.valid[:, 16:].any()
    assert td.image[:, :16].max() == 255 and td.image[:, :16].min() == 0
