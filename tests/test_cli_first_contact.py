"""What a new user meets first: the short command works, thresholds hold on every call,
training needs no resolution, and siblings behave alike."""

from __future__ import annotations

import shutil

import geopandas as gpd
import yaml
from click.testing import CliRunner

import geovision
from geovision.backends import load_backend
from geovision.cli.main import main
from tests.conftest import SAMPLE_TREES


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_detect_without_output_writes_beside_the_user_and_never_replaces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(SAMPLE_TREES, tmp_path / "scene.tif")
    r = run("detect", "scene.tif", "--model", "trees")
    out = tmp_path / "scene.trees.gpkg"
    assert r.exit_code == 0, r.stderr
    assert out.is_file() and str(out) in r.stderr  # the summary says where
    assert len(gpd.read_file(out)) > 10
    before = out.stat().st_mtime_ns
    again = run("detect", "scene.tif", "--model", "trees")
    assert again.exit_code == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert out.stat().st_mtime_ns == before
    assert run("detect", "scene.tif", "--model", "trees", "--overwrite", "-q").exit_code == 0


def test_default_names_for_paths_urls_and_folders():
    cfg = geovision.resolve_model("trees")
    assert geovision.default_output("a/b/scene.tif", cfg).name == "scene.trees.gpkg"
    assert geovision.default_output("/vsicurl/https://x.org/cog/ortho.tif?sig=1", cfg).name == "ortho.trees.gpkg"
    assert geovision.default_output("survey/", cfg, suffix="").name == "survey.trees"
    assert geovision.default_output("survey/**/*.tif", cfg, suffix="").name == "scenes.trees"


def test_batch_without_output_names_a_folder_after_input_and_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "survey").mkdir()
    shutil.copy(SAMPLE_TREES, tmp_path / "survey" / "a.tif")
    r = run("batch", "survey", "--model", "trees", "-q")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "survey.trees" / "merged.gpkg").is_file()


def test_thresholds_are_those_of_each_call_not_of_the_loaded_backend():
    cfg = geovision.resolve_model("trees").with_overrides(confidence=0.05)
    backend = load_backend(cfg, None, "auto", None)
    low = geovision.detect(SAMPLE_TREES, cfg, backend=backend).features
    high = geovision.detect(SAMPLE_TREES, cfg, confidence=0.6, backend=backend).features
    assert low["score"].min() < 0.3 and len(high) < len(low)
    assert (high["score"] >= 0.6).all()
    again = geovision.detect(SAMPLE_TREES, cfg, confidence=0.05, backend=backend).features
    assert len(again) == len(low)  # the backend kept nothing from the previous call


def test_train_without_resolution_uses_the_rasters_ground_resolution(tmp_path):
    from tests.test_training import scene

    img, labels = scene(tmp_path)
    pkg = tmp_path / "huts"
    args = ["train", "detect", "--images", img, "--labels", labels, "--classes", "hut", "--class-field", "kind"]
    args += ["--tile-size", "64", "--epochs", "1", "--batch", "4", "--val-fraction", "0.25", "-o", pkg]
    r = run(*args)
    assert r.exit_code == 0, r.stderr
    assert "0.1 m per pixel" in r.stderr
    assert yaml.safe_load((pkg / "model.yaml").read_text())["resolution"] == 0.1


def test_every_writing_command_refuses_an_existing_file_and_takes_overwrite(tmp_path):
    png = tmp_path / "look.png"
    png.write_bytes(b"mine")
    r = run("quicklook", SAMPLE_TREES, "-o", png)
    assert r.exit_code == 2 and "--overwrite" in r.stderr and png.read_bytes() == b"mine"
    r = run("quicklook", SAMPLE_TREES, "-o", png, "--overwrite", "-q")
    assert r.exit_code == 0 and r.stderr == "" and png.read_bytes()[:4] == b"\x89PNG"
    truth = tmp_path / "t.gpkg"
    gpd.GeoDataFrame({"class": ["tree"]}, geometry=gpd.GeoSeries.from_xy([404250], [3285120]).buffer(1),
                     crs="EPSG:32617").to_file(truth)  # fmt: skip
    report = tmp_path / "report.md"
    report.write_text("mine")
    r = run("evaluate", truth, truth, "--report", report)
    assert r.exit_code == 2 and "--overwrite" in r.stderr and report.read_text() == "mine"
    import matplotlib

    matplotlib.use("svg")  # the user's own backend (a notebook's, say) is theirs: the report leaves it
    pred = tmp_path / "p.gpkg"
    gpd.read_file(truth).assign(score=0.9).to_file(pred)  # scores: the report draws a PR curve
    r = run("evaluate", pred, truth, "--report", report, "--overwrite", "-q")
    assert r.exit_code == 0 and report.read_text().startswith("# Object evaluation")
    assert matplotlib.get_backend() == "svg"
    assert (tmp_path / "report-pr.png").read_bytes()[:4] == b"\x89PNG"


def test_class_names_in_messages_are_plain_names(tmp_path):
    a, b = tmp_path / "a.gpkg", tmp_path / "b.gpkg"
    geom = gpd.GeoSeries.from_xy([404250], [3285120]).buffer(1)
    gpd.GeoDataFrame({"class": ["tree"]}, geometry=geom, crs="EPSG:32617").to_file(a)
    gpd.GeoDataFrame({"class": ["all"]}, geometry=geom, crs="EPSG:32617").to_file(b)
    r = run("evaluate", a, b)
    assert r.exit_code == 2 and "truth has all" in r.stderr and "np.str_" not in r.stderr


def test_geopackages_are_version_1_2_for_older_gis(tmp_path):
    import sqlite3

    out = tmp_path / "trees.gpkg"
    geovision.detect(SAMPLE_TREES, "trees", out)
    with sqlite3.connect(out) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # 'GPKG'
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200  # 1.2.0, not GDAL's default 1.4
    assert len(gpd.read_file(out)) > 10


def test_a_class_column_is_used_or_refused_never_ignored(tmp_path):
    from geovision.labels import LabelError, LabelReport, read_vector_labels
    from tests.test_training import scene

    img, labels = scene(tmp_path)
    gdf = gpd.read_file(labels)
    gdf["class"] = ["car", "tree"] * 3
    mixed = tmp_path / "mixed.gpkg"
    gdf.to_file(mixed)
    args = ["train", "detect", "--images", img, "--labels", mixed, "--classes", "tree", "--resolution", "0.1"]
    r = run(*args, "--tile-size", "64", "-o", tmp_path / "m")
    assert r.exit_code == 2 and "car, tree" in r.stderr and "--class-field" in r.stderr
    assert not (tmp_path / "m").exists()
    report = LabelReport()
    [item] = read_vector_labels(mixed, [img], ["car", "tree"], report)
    assert sorted(item.classes.tolist()) == [0, 0, 0, 1, 1]  # the column's own classes (the last is far away)
    one = tmp_path / "one.gpkg"
    gdf.assign(**{"class": "Tree"}).to_file(one)
    assert len(read_vector_labels(one, [img], ["tree"], LabelReport())[0].boxes) == 5
    csv = tmp_path / "boxes.csv"
    csv.write_text("image_path,xmin,ymin,xmax,ymax,label\nscene.tif,1,1,9,9,Tree\nscene.tif,20,20,30,30,Car\n")
    import pytest

    with pytest.raises(LabelError, match="Car, Tree"):
        from geovision.labels import read_pixel_labels

        read_pixel_labels(csv, img, ["tree"], LabelReport())


def test_review_band_keeps_uncertain_objects_marked(tmp_path):
    cfg = geovision.resolve_model("trees")
    sure = geovision.detect(SAMPLE_TREES, cfg).features
    out = tmp_path / "review.gpkg"
    r = run("detect", SAMPLE_TREES, "--model", "trees", "-o", out, "--review-conf", "0.05")
    assert r.exit_code == 0, r.stderr
    layer = gpd.read_file(out)
    confident, uncertain = layer[layer["review"] == 0], layer[layer["review"] == 1]
    assert len(confident) == len(sure) and (confident["score"] >= cfg.confidence).all()
    assert len(uncertain) > 0 and uncertain["score"].between(0.05, cfg.confidence).all()
    assert f"({len(uncertain)} to review)" in r.stderr
    assert "review" not in sure.columns  # off by default
    bad = run("detect", SAMPLE_TREES, "--model", "trees", "-o", tmp_path / "x.gpkg", "--review-conf", "0.9")
    assert bad.exit_code == 2 and "below the confidence threshold" in bad.stderr
