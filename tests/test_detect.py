"""detect() with a fake blob detector: geometry, seams, CRSs, nodata, dtypes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

import geovision
from geovision.errors import RasterError
from tests.conftest import BlobDetector, fake_config, left_half_only, squares_image, write_raster


def lonlat(crs, transform, px, py):
    x, y = transform @ (px, py)
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)


def assert_box_at(feature_bounds_lonlat, crs, transform, square, tol_px=0.5):
    """The feature's lon/lat bounds sit on the square's pixel edges within tol_px pixels."""
    x1, y1, x2, y2 = square
    corners = [lonlat(crs, transform, x, y) for x, y in [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]]
    lons, lats = zip(*corners)
    px_lon = abs(lonlat(crs, transform, 1, 0)[0] - lonlat(crs, transform, 0, 0)[0]) + abs(
        lonlat(crs, transform, 0, 1)[0] - lonlat(crs, transform, 0, 0)[0]
    )
    px_lat = abs(lonlat(crs, transform, 0, 1)[1] - lonlat(crs, transform, 0, 0)[1]) + abs(
        lonlat(crs, transform, 1, 0)[1] - lonlat(crs, transform, 0, 0)[1]
    )
    minx, miny, maxx, maxy = feature_bounds_lonlat
    assert minx == pytest.approx(min(lons), abs=tol_px * px_lon)
    assert maxx == pytest.approx(max(lons), abs=tol_px * px_lon)
    assert miny == pytest.approx(min(lats), abs=tol_px * px_lat)
    assert maxy == pytest.approx(max(lats), abs=tol_px * px_lat)


# Squares (x1, y1, x2, y2) in pixels on a 200 x 170 raster tiled 64/16 (stride 48):
INSIDE = (5, 5, 25, 25)  # wholly inside tile (0, 0)
SEAM_SMALL = (40, 100, 60, 115)  # within the 48..64 overlap band of a vertical seam
SEAM_LARGE = (120, 10, 180, 30)  # 60 px wide: larger than the overlap, cut in every tile
CORNER = (84, 84, 116, 116)  # across the four-tile corner at 96..112
SQUARES = [INSIDE, SEAM_SMALL, SEAM_LARGE, CORNER]

CASES = {
    "utm": ("EPSG:32617", Affine(0.1, 0, 500000, 0, -0.1, 4000000), 0.1),
    # ~0.1 m ground pixels at 45 N: x in degrees scaled by 1/cos(lat)
    "wgs84": ("EPSG:4326", Affine(0.9e-6 / math.cos(math.radians(45)), 0, 7.0, 0, -0.9e-6, 45.0), 0.1),
    "webmercator": ("EPSG:3857", Affine(0.15, 0, 1000000, 0, -0.15, 6300000), None),
}


@pytest.mark.parametrize("case", CASES)
def test_each_object_once_at_its_true_lonlat(tmp_path, case):
    crs, transform, resolution = CASES[case]
    path = write_raster(tmp_path / "scene.tif", squares_image(170, 200, SQUARES), crs=crs, transform=transform)
    if resolution is None:  # Web Mercator: model at the true ground size of a pixel
        from geovision.raster import ground_pixel_size_m

        resolution = ground_pixel_size_m(crs, transform, 200, 170)[0]
    out = tmp_path / "out.geojson"
    result = geovision.detect(path, fake_config(resolution_m=resolution), out, backend=BlobDetector())
    import geopandas as gpd

    gdf = gpd.read_file(out)
    assert gdf.crs.to_epsg() == 4326
    assert len(gdf) == len(SQUARES), gdf
    assert result.stats.counts["blob"] == len(SQUARES)
    for square in SQUARES:
        cx, cy = lonlat(crs, transform, (square[0] + square[2]) / 2, (square[1] + square[3]) / 2)
        hits = gdf[gdf.geometry.contains(gpd.points_from_xy([cx], [cy])[0])]
        assert len(hits) == 1, f"{square} found {len(hits)} times"
        assert_box_at(hits.geometry.iloc[0].bounds, crs, transform, square)
    assert set(gdf.columns) >= {"class", "class_id", "score", "area_m2", "source"}
    assert (gdf["source"] == "scene.tif").all()


def test_area_and_attributes_in_source_crs(tmp_path):
    path = write_raster(tmp_path / "s.tif", squares_image(170, 200, SQUARES))
    out = tmp_path / "out.gpkg"
    geovision.detect(path, fake_config(), out, backend=BlobDetector())
    import geopandas as gpd

    gdf = gpd.read_file(out)
    assert gdf.crs.to_epsg() == 32617
    areas = sorted(round(a, 1) for a in gdf["area_m2"])
    # pixel 0.1 m -> 0.01 m2; ground area of UTM pixels differs from grid area by the scale factor
    expected = sorted(round((x2 - x1) * (y2 - y1) * 0.01, 1) for x1, y1, x2, y2 in SQUARES)
    assert areas == pytest.approx(expected, rel=0.01)
    assert set(gdf["class"]) == {"blob"} and set(gdf["class_id"]) == {0}


def test_resampled_read_keeps_objects_in_place(tmp_path):
    # 1.8 cm pixels read by a 10 cm model: a ratio of 0.18, not an integer
    t = Affine(0.018, 0, 500000, 0, -0.018, 4000000)
    squares = [(100, 100, 400, 300), (500, 600, 900, 1000)]
    path = write_raster(tmp_path / "drone.tif", squares_image(1100, 1000, squares), transform=t)
    result = geovision.detect(path, fake_config(), backend=BlobDetector())
    gdf = result.features.to_crs("EPSG:4326")
    assert len(gdf) == 2
    for square in squares:
        hits = gdf[
            gdf.geometry.contains(
                gdf.geometry.iloc[0].centroid.__class__(
                    lonlat("EPSG:32617", t, (square[0] + square[2]) / 2, (square[1] + square[3]) / 2)
                )
            )
        ]
        assert len(hits) == 1
        # within half a model pixel (0.1 m = 5.6 source pixels)
        assert_box_at(hits.geometry.iloc[0].bounds, "EPSG:32617", t, square, tol_px=0.5 * 0.1 / 0.018)


def test_all_nodata_tiles_never_reach_the_model(tmp_path):
    img = squares_image(170, 200, [INSIDE, CORNER])
    img[:, :, 130:] = 0  # the right-hand columns of tiles are nodata only
    path = write_raster(tmp_path / "nd.tif", img, nodata=0)
    det = BlobDetector()
    result = geovision.detect(path, fake_config(), backend=det)
    assert result.stats.tiles == 16
    assert result.stats.tiles_skipped == 4  # tiles starting at x=144 see only nodata
    assert len(det.seen) == 12
    assert all(img.any() for img in det.seen)
    assert len(result.features) == 2


def test_detections_centred_on_nodata_are_dropped(tmp_path):
    img = squares_image(170, 200, [INSIDE, CORNER])
    img[:, 90:110, 90:110] = 0  # the corner square's centre is nodata
    path = write_raster(tmp_path / "nd.tif", img, nodata=0)

    class WholeSquares(BlobDetector):
        def detect(self, images, confidence=None, iou=None):  # sees squares as blobs of "not background"
            return super().detect([np.where(i == 40, 0, 255).astype(np.uint8) for i in images])

    result = geovision.detect(path, fake_config(), backend=WholeSquares())
    assert len(result.features) == 1


def test_uint16_gives_the_same_objects_as_uint8(tmp_path):
    img8 = squares_image(170, 200, SQUARES)
    img8[:, :6, :] = 0  # >2% of pixels at 0 and at 255: the 2-98% stretch spans 0..65535
    img8[:, -6:, :] = 255
    p8 = write_raster(tmp_path / "a8.tif", img8)
    p16 = write_raster(tmp_path / "a16.tif", img8.astype(np.uint16) * 257)
    r8 = geovision.detect(p8, fake_config(), backend=BlobDetector())
    r16 = geovision.detect(p16, fake_config(), backend=BlobDetector())
    assert len(r8.features) == len(r16.features) >= len(SQUARES)
    b8 = np.sort(np.asarray([g.bounds for g in r8.features.geometry]), axis=0)
    b16 = np.sort(np.asarray([g.bounds for g in r16.features.geometry]), axis=0)
    np.testing.assert_allclose(b8, b16, atol=1e-6)


def test_rotated_raster_objects_land_in_place(tmp_path):
    t = Affine.translation(500000, 4000000) @ Affine.rotation(30) @ Affine.scale(0.1, -0.1)
    path = write_raster(tmp_path / "rot.tif", squares_image(170, 200, [INSIDE, CORNER]), transform=t)
    result = geovision.detect(path, fake_config(), backend=BlobDetector())
    assert len(result.features) == 2
    for square in (INSIDE, CORNER):
        cx, cy = t @ ((square[0] + square[2]) / 2, (square[1] + square[3]) / 2)
        c = result.features.geometry.centroid
        d = np.hypot(c.x - cx, c.y - cy).min()
        assert d < 0.05  # half a 0.1 m pixel


def test_all_nodata_raster_is_refused(tmp_path):
    path = write_raster(tmp_path / "empty.tif", np.zeros((3, 50, 50), np.uint8), nodata=0)
    with pytest.raises(RasterError, match="no valid pixels"):
        geovision.detect(path, fake_config(), backend=BlobDetector())


def test_nothing_found_writes_a_valid_empty_layer(tmp_path):
    path = write_raster(tmp_path / "blank.tif", squares_image(100, 100, []))
    out = tmp_path / "none.gpkg"
    result = geovision.detect(path, fake_config(), out, backend=BlobDetector())
    import geopandas as gpd

    gdf = gpd.read_file(out)
    assert len(gdf) == 0 and len(result.features) == 0
    assert gdf.crs.to_epsg() == 32617


def test_raster_without_georeference_read_at_model_resolution_given_pixel_size(tmp_path):
    """A 0.1 m scan with no georeference, a 0.2 m model: read at half size, boxes in the scan's pixels."""
    square = (100, 60, 140, 100)
    path = write_raster(tmp_path / "scan.tif", squares_image(200, 200, [square]), crs=None, transform=Affine.identity())
    det = BlobDetector()
    cfg = fake_config(tile_size=64, overlap=16, resolution_m=0.2)
    result = geovision.detect(path, cfg, pixel_size=0.1, backend=det)
    assert result.features.crs is None
    assert len(result.features) == 1
    assert result.features.total_bounds == pytest.approx(square, abs=1.0)
    assert result.stats.tiles == 4  # a 100 x 100 grid of 64-pixel tiles at stride 48
    assert all(img.shape == (64, 64, 3) for img in det.seen)
    # Without a pixel size the scan is read as it is: a 200 x 200 grid, the square twice as large to the model.
    native = geovision.detect(path, cfg, pixel_coords=True, backend=BlobDetector())
    assert native.stats.tiles == 16
    assert native.features.total_bounds == pytest.approx(square, abs=1.0)


class LeftHalfOnly(BlobDetector):
    """A one-sided detector: it misses every blob whose centre is in the right half of the tile."""

    def detect(self, images, confidence=None, iou=None):
        return left_half_only(images, super().detect(images, confidence, iou))


def test_tta_finds_what_a_mirror_shows_each_object_once_in_its_place(tmp_path):
    squares = [(5, 5, 15, 15), (45, 8, 57, 20), (6, 44, 16, 56), (44, 40, 58, 56)]
    transform = Affine(0.1, 0, 500000, 0, -0.1, 4000000)
    path = write_raster(tmp_path / "s.tif", squares_image(64, 64, squares), transform=transform)
    cfg = fake_config(tile_size=64, overlap=0)
    plain = geovision.detect(path, cfg, backend=LeftHalfOnly())
    assert len(plain.features) == 2  # the left two
    both = geovision.detect(path, cfg, backend=LeftHalfOnly(), tta=True)
    # left ones seen plain and top-bottom mirrored (merged into one each), right ones left-right mirrored
    assert len(both.features) == 4
    found = sorted(tuple(np.round(b, 3)) for b in both.features.to_crs("EPSG:32617").geometry.bounds.to_numpy())
    truth = sorted(tuple(np.round((*(transform @ (x1, y2)), *(transform @ (x2, y1))), 3)) for x1, y1, x2, y2 in squares)
    np.testing.assert_allclose(found, truth, atol=0.051)  # within half a pixel
    with pytest.raises(geovision.ModelError, match="is a segmenter"):
        geovision.detect(path, dataclasses.replace(cfg, task="segment"), backend=LeftHalfOnly(), tta=True)


def test_on_a_gpu_the_backend_sizes_the_batch_itself(tmp_path):
    """Every backend answers fit_batch (part of the protocol, not looked up with hasattr)."""

    class RoomyGpu(BlobDetector):
        device = "cuda:0"

        def fit_batch(self, base: int) -> int:
            return base * 4

    path = write_raster(tmp_path / "s.tif", squares_image(256, 256, [(5, 5, 20, 20)]))
    gpu = RoomyGpu()
    geovision.detect(path, fake_config(tile_size=64, overlap=0), backend=gpu)  # batch_size 3 in the YAML
    assert max(gpu.batches) == 12 and sum(gpu.batches) == 16
    fixed = RoomyGpu()
    geovision.detect(path, fake_config(tile_size=64, overlap=0), backend=fixed, batch_size=2)
    assert max(fixed.batches) == 2  # the user's own batch size is kept
