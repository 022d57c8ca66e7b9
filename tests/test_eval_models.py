"""benchmarks/eval_models.py, run as a user runs it: held-out scores must come from models that never saw the site."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

import geovision
from geovision.geometry import batched_nms
from tests.test_training import scene

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_models.py"


def test_a_second_stage_is_not_scored_from_weights_that_saw_the_held_out_site(tmp_path):
    img, labels = scene(tmp_path)
    # a first-stage package that trained on both sites (its weights file is never opened: the check comes first)
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    (stage1 / "weights.pt").write_bytes(b"")
    (stage1 / "model.yaml").write_text(yaml.safe_dump({"training": {"data": {"sites": ["east", "west"]}}}))
    datasets = [{"site": s, "images": img.name, "labels": labels.name} for s in ("east", "west")]
    cfg = tmp_path / "stage2.yaml"
    settings = {"classes": ["hut"], "class_field": "kind", "resolution": 0.1, "tile_size": 64, "epochs": 1}
    config = {"task": "detect", "datasets": datasets, **settings, "weights": "stage1/weights.pt", "output": "tuned"}
    cfg.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), str(cfg), "--work", str(work), "--sites", "east"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0
    assert "trained on east" in r.stderr and "--start" in r.stderr, r.stderr
    assert not (work / "east" / "model").exists(), "a fold model was trained from weights that saw its site"


def load_script():
    spec = importlib.util.spec_from_file_location("eval_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_union_of_reading_scales_is_each_scale_once(tmp_path):
    """--scales pools a detector's runs at several resolutions: a scale given twice adds nothing, and
    a second scale adds what the first did not find (no box twice)."""
    em = load_script()
    model = geovision.resolve_model("trees-fast")
    tile = Path(__file__).resolve().parents[1] / "sample_tiles" / "OSBS_029.tif"
    site = SimpleNamespace(image_resolution=None)  # a georeferenced tile needs nothing else of the config
    single, _ = em.cached_predict(model, site, tile, tmp_path / "single.gpkg", 0.1)
    twice, _ = em.union_predict(model, site, tile, tmp_path / "twice", "osbs.gpkg", 0.1, [0.2, 0.2])
    assert len(single) > 20 and len(twice) == len(single)
    assert sorted(twice["score"].round(4)) == sorted(single["score"].round(4))
    coarse, _ = em.cached_predict(model.with_overrides(resolution_m=0.3), site, tile, tmp_path / "c.gpkg", 0.1)
    both, _ = em.union_predict(model, site, tile, tmp_path / "both", "osbs.gpkg", 0.1, [0.2, 0.3])
    assert max(len(single), len(coarse)) <= len(both) < len(single) + len(coarse)
    bounds = both.geometry.bounds.to_numpy()
    keep = batched_nms(bounds, both["score"].to_numpy(), both["class_id"].to_numpy(), model.iou)
    assert len(keep) == len(both)  # nothing left to deduplicate


def test_a_site_scored_inside_its_labelled_area_only(tmp_path):
    """Labels complete in part of an image (a dataset's ``area``): crowns and detections outside it
    count on neither side, so a crown nobody labelled is no false positive."""
    import csv

    import geopandas as gpd
    import shapely

    em = load_script()
    model = geovision.resolve_model("trees-fast")
    tile = Path(__file__).resolve().parents[1] / "sample_tiles" / "OSBS_029.tif"
    labels = tile.with_suffix(".csv")
    area = tmp_path / "west.gpkg"  # the western 200 of 400 px (0.1 m): x below 404231.9
    gpd.GeoDataFrame(geometry=[shapely.box(404211.9, 3285102.9, 404231.9, 3285142.9)], crs="EPSG:32617").to_file(area)
    spec = SimpleNamespace(
        sites=("OSBS",), images=(tile,), labels=(labels,), task="detect", classes=("tree",), image_resolution=None
    )
    metrics = em.metrics_for("detect")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    whole = em.score_site("OSBS", model, SimpleNamespace(**vars(spec), areas=None), tmp_path / "a", metrics)
    west = em.score_site("OSBS", model, SimpleNamespace(**vars(spec), areas=(area,)), tmp_path / "b", metrics)
    rows = list(csv.DictReader(labels.open()))
    centred_west = sum((float(r["xmin"]) + float(r["xmax"])) / 2 < 200 for r in rows)
    assert whole.truth == len(rows) and west.truth == centred_west and 0 < centred_west < len(rows)
    for t in (0.1, 0.3):
        a, b = whole.counts["box IoU 0.4"][t], west.counts["box IoU 0.4"][t]
        assert b.tp + b.fn == centred_west and b.tp + b.fp < a.tp + a.fp and b.tp <= a.tp
