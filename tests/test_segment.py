"""Segmentation end to end with a fake segmenter: blending, vectorising, raster outputs."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from scipy import ndimage

import geovision
from geovision.blend import BandBlender, Strip, hann_window
from geovision.tiling import TileGrid
from geovision.vectorize import StripVectorizer
from tests.conftest import BrightSegmenter, fake_seg_config, squares_image, write_raster

T = Affine(0.1, 0, 500000, 0, -0.1, 4000000)


def test_square_on_a_four_tile_corner_is_one_polygon_in_place(tmp_path):
    square = (84, 84, 116, 116)  # across the corner of four 64/16 tiles at 96..112
    path = write_raster(tmp_path / "s.tif", squares_image(200, 200, [square]), transform=T)
    out = tmp_path / "roofs.geojson"
    result = geovision.detect(path, fake_seg_config(), out, backend=BrightSegmenter())
    import geopandas as gpd

    gdf = gpd.read_file(out)
    assert len(gdf) == 1 and gdf["class"][0] == "roof"
    assert result.features["area_m2"][0] == pytest.approx(32 * 32 * 0.01, rel=0.01)
    to_ll = Transformer.from_crs("EPSG:32617", "EPSG:4326", always_xy=True)
    corners = [to_ll.transform(*(T @ (x, y))) for x, y in [(84, 84), (116, 84), (116, 116), (84, 116)]]
    half_px_deg = 0.05 / 111_000
    poly = gdf.geometry[0]
    for c in corners:  # every true corner is a vertex of the polygon, within half a pixel
        assert min(shapely.Point(c).distance(shapely.Point(v)) for v in poly.exterior.coords) < half_px_deg
    assert gdf["score"][0] == pytest.approx(1.0)


def test_polygons_do_not_depend_on_band_height(tmp_path):
    # a raster several bands tall, objects crossing band and tile seams, one with a hole
    img = squares_image(300, 150, [(10, 30, 140, 60), (40, 90, 70, 280), (100, 150, 140, 260)])
    img[:, 190:220, 110:130] = 40  # hole
    path = write_raster(tmp_path / "tall.tif", img, transform=T)
    results = []
    for tile, overlap in [(64, 16), (48, 8), (128, 32), (32, 4)]:
        r = geovision.detect(path, fake_seg_config(tile, overlap), backend=BrightSegmenter())
        results.append(sorted(shapely.normalize(shapely.simplify(g, 0)).wkt for g in r.features.geometry))
    assert all(r == results[0] for r in results[1:])
    assert len(results[0]) == 3  # bar, vertical block, holed block
    r = geovision.detect(path, fake_seg_config(), backend=BrightSegmenter())
    holed = [g for g in r.features.geometry if g.interiors]
    assert len(holed) == 1


def test_no_polygon_edge_runs_along_a_tile_seam(tmp_path):
    square = (30, 30, 170, 170)  # spans nine tiles
    path = write_raster(tmp_path / "big.tif", squares_image(200, 200, [square]), transform=T)
    r = geovision.detect(path, fake_seg_config(), backend=BrightSegmenter())
    [poly] = r.features.geometry
    truth = shapely.box(*(T @ (30, 170)), *(T @ (170, 30)))
    assert poly.symmetric_difference(truth).area < 1e-9
    # after removing collinear points, a square has exactly four corners: nothing left at the seams
    assert len(shapely.simplify(poly, 0).exterior.coords) == 5


def test_nodata_is_background_and_empty_tiles_are_skipped(tmp_path):
    img = squares_image(150, 200, [(10, 10, 40, 40), (120, 20, 190, 60)])
    img[:, :, 144:] = 0  # the last column of tiles (x >= 144) sees only nodata
    path = write_raster(tmp_path / "nd.tif", img, transform=T, nodata=0)
    seg = BrightSegmenter()
    r = geovision.detect(path, fake_seg_config(), backend=seg)
    assert r.stats.tiles_skipped == 3 and seg.seen == r.stats.tiles - 3
    areas = sorted(r.features["area_m2"])
    assert areas == pytest.approx(
        [9.0, 9.6], rel=0.002
    )  # ground area: UTM scale factor  # the second square is cut by nodata at x=144


def test_mask_and_probability_rasters_in_the_source_grid(tmp_path):
    # 5 cm pixels read at 10 cm: outputs must still be in the 5 cm source grid
    t = Affine(0.05, 0, 500000, 0, -0.05, 4000000)
    square = (40, 60, 120, 140)
    path = write_raster(tmp_path / "s.tif", squares_image(300, 260, [square]), transform=t)
    mask, prob = tmp_path / "mask.tif", tmp_path / "prob.tif"
    geovision.detect(path, fake_seg_config(), backend=BrightSegmenter(), mask_out=mask, prob_out=prob)
    with rasterio.open(mask) as m, rasterio.open(prob) as p:
        assert (m.width, m.height, m.transform, m.crs.to_epsg()) == (260, 300, t, 32617)
        assert m.profile["tiled"] and m.profile["compress"] == "deflate"
        a = m.read(1)
        assert p.count == 1 and p.dtypes[0] == "float32"
        pr = p.read(1)
    expected = np.zeros((300, 260), np.uint8)
    expected[60:140, 40:120] = 1
    assert (a != expected).sum() == 0
    assert np.all(pr[a == 1] > 0.5) and np.all(pr[a == 0] < 0.5)
    assert not list(tmp_path.glob(".*tmp*"))


def test_detector_refuses_raster_outputs(tmp_path):
    path = write_raster(tmp_path / "s.tif", squares_image(64, 64, []), transform=T)
    from tests.conftest import BlobDetector, fake_config

    with pytest.raises(geovision.ModelError, match="`mask_out` and `prob_out` need a segmentation model"):
        geovision.detect(path, fake_config(), backend=BlobDetector(), mask_out=tmp_path / "m.tif")


def test_blending_is_smooth_across_tiles():
    grid = TileGrid(112, 64, 64, 16)  # two tiles side by side overlapping by 16
    blender = BandBlender(grid, 2)
    valid = np.ones((64, 64), bool)
    for x0, p in [(0, 0.2), (48, 0.8)]:
        probs = np.stack([np.full((64, 64), 1 - p), np.full((64, 64), p)]).astype(np.float32)
        blender.add(x0, probs, valid)
    strip = blender.finish_row()
    row = strip.probs[1, 32]
    steps = np.diff(row)
    assert row[0] == pytest.approx(0.2) and row[-1] == pytest.approx(0.8)
    assert np.all(steps >= -1e-6) and steps.max() < 0.15  # a ramp through the overlap, not a jump of 0.6
    assert blender.acc.shape == (2, 64, 112)  # one band of one tile height, whatever the raster height


def test_hann_window_is_positive_and_peaks_in_the_middle():
    w = hann_window(32)
    assert w.min() > 0 and w[16, 16] == w.max() and w[0, 0] == w.min()


@st.composite
def masks(draw):
    h, w = draw(st.integers(1, 30)), draw(st.integers(1, 20))
    cells = draw(st.lists(st.integers(0, 2), min_size=h * w, max_size=h * w))
    return np.asarray(cells, np.uint8).reshape(h, w), draw(st.integers(1, 12))


@settings(max_examples=200, deadline=None)
@given(masks())
def test_strips_of_any_height_give_the_polygons_of_the_whole_mask(case):
    classes, band = case
    h, w = classes.shape
    vec = StripVectorizer(w, h)
    shapes = []
    for y0 in range(0, h, band):
        part = classes[y0 : y0 + band]
        score = np.ones(part.shape, np.float32)
        shapes += vec.add(Strip(y0, part, score, np.zeros((3, *part.shape), np.float32)))
    shapes += vec.finish()
    # one polygon per 4-connected region of each class, covering exactly its pixels
    n_regions = sum(ndimage.label(classes == c)[1] for c in (1, 2))
    assert len(shapes) == n_regions
    for c in (1, 2):
        ours = shapely.union_all([s.geom for s in shapes if s.cls == c])
        pixels = sum(s.pixels for s in shapes if s.cls == c)
        assert ours.area == pytest.approx((classes == c).sum()) and pixels == (classes == c).sum()
        for s in shapes:
            assert s.geom.is_valid and s.geom.geom_type == "Polygon"
