"""Quicklooks: the PNG has the expected size and the outlines are where the objects are."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from PIL import Image

from geovision.cli.main import main
from geovision.quicklook import FN, FP, PRED, TP, quicklook

SAMPLES = Path(__file__).resolve().parents[1] / "sample_tiles"
CRS = "EPSG:32617"


def colour_near(png: Path, col: int, row: int, colour, radius: int = 2) -> bool:
    """Whether ``colour`` is drawn within ``radius`` px of (col, row)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    patch = rgb[row - radius : row + radius + 1, col - radius : col + radius + 1]
    return bool((np.abs(patch - np.array(colour)).sum(axis=2) < 30).any())


def test_sample_tile_with_predictions_drawn_in_place(tmp_path):
    tile = SAMPLES / "OSBS_029.tif"
    with rasterio.open(tile) as ds:
        t, crs, w, h = ds.transform, ds.crs, ds.width, ds.height
    # a box over source pixels 200..260 x 150..210, away from the legend
    box = shapely.box(*(t @ (200, 210)), *(t @ (260, 150)))
    gpd.GeoDataFrame({"class": ["tree"]}, geometry=[box], crs=crs).to_crs("EPSG:4326").to_file(tmp_path / "p.geojson")
    r = CliRunner().invoke(
        main, ["quicklook", str(tile), str(tmp_path / "p.geojson"), "-o", str(tmp_path / "look.png"), "--size", "200"]
    )
    assert r.exit_code == 0, r.stderr
    img = Image.open(tmp_path / "look.png")
    scale = max(w, h) / 200
    assert img.size == (round(w / scale), round(h / scale)) and img.format == "PNG"
    # the outline's corners and edges, at the quicklook's scale; the box's inside is not painted
    for col, row in [(200, 150), (260, 210), (230, 150), (200, 180)]:
        assert colour_near(tmp_path / "look.png", round(col / scale), round(row / scale), PRED)
    assert not colour_near(tmp_path / "look.png", round(230 / scale), round(180 / scale), PRED, radius=1)
    # the image itself is stretched, not black
    assert np.asarray(img.convert("L")).std() > 10


def test_truth_colours_tp_fp_fn(tmp_path):
    tile = SAMPLES / "OSBS_029.tif"
    with rasterio.open(tile) as ds:
        t, crs = ds.transform, ds.crs

    def px_box(c0, r0, c1, r1):
        return shapely.box(*(t @ (c0, r1)), *(t @ (c1, r0)))

    truth = gpd.GeoDataFrame(geometry=[px_box(100, 100, 140, 140), px_box(300, 300, 340, 340)], crs=crs)
    pred = gpd.GeoDataFrame(geometry=[px_box(102, 100, 142, 140), px_box(200, 300, 240, 340)], crs=crs)
    look = quicklook(tile, tmp_path / "look.png", pred, truth, size=400)
    assert look.counts == {"true positive": 1, "false positive": 1, "missed": 1}
    png = tmp_path / "look.png"
    assert colour_near(png, 102, 120, TP) and colour_near(png, 200, 320, FP) and colour_near(png, 340, 320, FN)
    assert not colour_near(png, 200, 320, TP) and not colour_near(png, 340, 320, FP)


def test_wide_raster_is_read_at_quicklook_size(tmp_path):
    """20000 px across: read through decimated windows into a 1000 px PNG."""
    path = tmp_path / "wide.tif"
    transform = Affine(0.5, 0, 400000, 0, -0.5, 3300000)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=20000,
        height=600,
        count=3,
        dtype="uint8",
        crs=CRS,
        transform=transform,
        tiled=True,
        compress="deflate",
    ) as ds:
        ramp = np.broadcast_to(np.linspace(0, 255, 1000, dtype=np.uint8), (3, 600, 1000))
        for k in range(20):
            ds.write(ramp, window=rasterio.windows.Window(k * 1000, 0, 1000, 600))
    target = shapely.box(*(transform @ (15000, 400)), *(transform @ (15400, 200)))
    pred = gpd.GeoDataFrame(geometry=[target], crs=CRS)
    look = quicklook(path, tmp_path / "wide.png", pred, size=1000)
    assert (look.width, look.height) == (1000, 30)
    assert colour_near(tmp_path / "wide.png", 750, 15, PRED, radius=1)


def test_quicklook_bad_input(tmp_path):
    r = CliRunner().invoke(main, ["quicklook", str(tmp_path / "none.tif"), "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "error:" in r.stderr and r.stderr.count("\n") == 1
    r = CliRunner().invoke(main, ["quicklook", str(SAMPLES / "OSBS_029.tif"), "-o", str(tmp_path / "x.jpg")])
    assert r.exit_code == 2 and ".png" in r.stderr
    r = CliRunner().invoke(
        main, ["quicklook", str(SAMPLES / "OSBS_029.tif"), str(tmp_path / "no.gpkg"), "-o", str(tmp_path / "x.png")]
    )
    assert r.exit_code == 2 and "no such file" in r.stderr and not (tmp_path / "x.png").exists()
