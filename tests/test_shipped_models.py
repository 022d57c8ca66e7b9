"""The shipped models on the sample tiles, through the CLI, scored against the tiles' own labels.

The sample tiles were part of their model's training data, so these are not
accuracy claims (docs/models.md has the scores on sites the models never saw);
they prove that the whole user path, from GeoTIFF to layer, puts the right
objects in the right places with the real networks, and they fail if a
retrained model falls below what the shipped one does.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
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
    # at the default confidence 0.2 (the best F1 on forests left out): measured P 0.83, R 0.54, F1 0.65.
    # The tile is one of the training plots, so this checks the package, not how well it generalises
    # (that is benchmarks/eval_models.py, docs/models.md).
    assert scores["precision"] >= 0.7 and scores["recall"] >= 0.45 and scores["f1"] >= 0.55


def test_buildings_on_the_rio_tile_are_on_buildings_and_squared(tmp_path):
    out = tmp_path / "buildings.gpkg"
    cli("detect", str(SAMPLES / "spacenet_rio.tif"), "--model", "buildings", "-o", str(out), "-q")
    pred = gpd.read_file(out)
    truth = gpd.read_file(SAMPLES / "spacenet_rio.geojson")
    assert pred.crs == truth.crs and len(pred) >= 10
    assert (pred["class"] == "building").all() and pred["score"].between(0.6, 1).all()
    # where the model says building there mostly is one (measured 0.75 of the area); it finds too
    # few of them (docs/models.md), so recall has no floor here
    p = pred.to_crs(pred.estimate_utm_crs())
    t = truth.to_crs(p.crs).union_all()
    assert p.union_all().intersection(t).area / p.union_all().area >= 0.5
    # outlines are squared up: fewer corners than the traced ones --no-regularize keeps
    raw = tmp_path / "raw.gpkg"
    cli("detect", str(SAMPLES / "spacenet_rio.tif"), "--model", "buildings", "-o", str(raw), "-q", "--no-regularize")
    corners = [len(g.exterior.coords) - 1 for g in p.geometry]
    traced = [len(g.exterior.coords) - 1 for g in gpd.read_file(raw).geometry]
    assert abs(len(traced) - len(corners)) <= 2 and np.median(corners) < np.median(traced)  # min area may drop one


def test_buildings_read_a_one_band_16_bit_tile(tmp_path):
    """The SpaceNet Atlanta sample (1 band, uint16) goes through the RGB model, in its own CRS."""
    out = tmp_path / "buildings.gpkg"
    mask = tmp_path / "mask.tif"
    cli("detect", str(SAMPLES / "spacenet_atlanta.tif"), "-m", "buildings", "-o", str(out), "--mask-out", str(mask))
    pred = gpd.read_file(out)
    with rasterio.open(SAMPLES / "spacenet_atlanta.tif") as ds:
        assert pred.crs == ds.crs and len(pred) >= 10
        assert shapely.box(*ds.bounds).buffer(1).contains(pred.union_all())
    r = cli("evaluate", str(mask), str(SAMPLES / "spacenet_atlanta.geojson"), "--class-field", "", "--json")
    scores = json.loads(r.stdout)["per_class"]["building"]
    assert scores["precision"] >= 0.15 and scores["iou"] > 0.02  # measured 0.25 and 0.05: weak on 1-band imagery
