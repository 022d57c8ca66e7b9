"""The shipped models on the sample tiles, through the CLI, scored against the tiles' own labels.

Both sample tiles were part of their model's training data, so these are not
accuracy claims (docs/models.md has the held-out scores); they prove that the
whole user path, from GeoTIFF to layer, puts the right objects in the right
places with the real networks.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import rasterio
import shapely
from click.testing import CliRunner

from geovision.cli.main import main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_tiles"


def cli(*args: str):
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.stderr
    return r


def test_trees_on_the_neon_tile_match_its_crowns(tmp_path):
    tile = SAMPLES / "OSBS_029.tif"
    cli("detect", str(tile), "--model", "trees", "-o", str(tmp_path / "trees.gpkg"), "-q")
    # the tile's 61 crowns come as pixel boxes; put them on the map with the tile's transform
    boxes = pd.read_csv(SAMPLES / "OSBS_029.csv")
    with rasterio.open(tile) as ds:
        t, crs = ds.transform, ds.crs
    crowns = [shapely.box(*(t @ (x0, y1)), *(t @ (x1, y0))) for x0, y0, x1, y1 in boxes.iloc[:, 1:5].to_numpy()]
    gpd.GeoDataFrame({"class": ["tree"] * len(crowns)}, geometry=crowns, crs=crs).to_file(tmp_path / "truth.gpkg")
    r = cli("evaluate", str(tmp_path / "trees.gpkg"), str(tmp_path / "truth.gpkg"), "--boxes", "--iou", "0.4", "--json")
    scores = json.loads(r.stdout)["overall"]
    assert scores["precision"] >= 0.6 and scores["recall"] >= 0.4 and scores["f1"] >= 0.5  # measured 0.80/0.61/0.69


def test_buildings_on_the_spacenet_tile_cover_its_footprints(tmp_path):
    out = tmp_path / "buildings.gpkg"
    cli("detect", str(SAMPLES / "spacenet_atlanta.tif"), "--model", "buildings", "-o", str(out), "-q")
    pred = gpd.read_file(out)
    truth = gpd.read_file(SAMPLES / "spacenet_atlanta.geojson")
    assert pred.crs == truth.crs and len(pred) >= 10
    assert (pred["class"] == "building").all() and pred["score"].between(0.5, 1).all()
    # where the model says building, there is mostly a building, and most buildings are found
    p, t = pred.union_all(), truth.union_all()
    overlap = p.intersection(t).area
    assert overlap / p.area >= 0.35 and overlap / t.area >= 0.45 and overlap / p.union(t).area >= 0.25
    # measured 0.48, 0.61 and 0.36; objects matched one to one at IoU 0.5 are few (5 of 43)
    r = cli("evaluate", str(out), str(SAMPLES / "spacenet_atlanta.geojson"), "--class-field", "", "--json")
    assert json.loads(r.stdout)["overall"]["tp"] >= 3


def test_buildings_mask_scored_pixel_by_pixel(tmp_path):
    """detect --mask-out, then evaluate the class raster against the footprints: names come from its tags."""
    mask = tmp_path / "mask.tif"
    cli(
        "detect",
        str(SAMPLES / "spacenet_atlanta.tif"),
        "-m",
        "buildings",
        "-o",
        str(tmp_path / "b.gpkg"),
        "--mask-out",
        str(mask),
        "-q",
    )
    r = cli("evaluate", str(mask), str(SAMPLES / "spacenet_atlanta.geojson"), "--class-field", "", "--json")
    scores = json.loads(r.stdout)["per_class"]["building"]
    assert scores["iou"] >= 0.25 and scores["precision"] >= 0.35 and scores["recall"] >= 0.45
