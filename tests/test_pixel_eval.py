"""Pixel metrics, confusion matrices and reports, against hand-computed cases."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner

import geovision.pixel_eval as pixel_eval
from geovision.cli.main import main
from geovision.evaluate import EvaluationError, evaluate
from geovision.pixel_eval import evaluate_pixels
from geovision.writers import CLASSES_TAG

CRS = "EPSG:32617"
X0, Y0 = 500000.0, 4000000.0
TRANSFORM = Affine(1.0, 0, X0, 0, -1.0, Y0)  # 1 m pixels, north up


def class_raster(path, array, classes=("building",), tags=True, transform=TRANSFORM):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype="uint8",
        crs=CRS,
        transform=transform,
    ) as ds:
        ds.write(array, 1)
        if tags:
            ds.update_tags(**{CLASSES_TAG: json.dumps(list(classes))})
    return path


def square(col, row, size=10):
    """A map polygon over pixels [col, col+size) x [row, row+size)."""
    return shapely.box(X0 + col, Y0 - row - size, X0 + col + size, Y0 - row)


def test_offset_squares_give_known_pixel_scores(tmp_path, monkeypatch):
    pred = np.zeros((40, 40), np.uint8)
    pred[10:20, 10:20] = 1  # 100 px
    class_raster(tmp_path / "pred.tif", pred)
    # truth shifted 5 px right: 50 px shared, 50 only predicted, 50 only true
    gpd.GeoDataFrame({"class": ["building"]}, geometry=[square(15, 10)], crs=CRS).to_crs("EPSG:4326").to_file(
        tmp_path / "truth.geojson"
    )
    ev = evaluate_pixels(tmp_path / "pred.tif", tmp_path / "truth.geojson")
    s = ev.per_class["building"]
    assert (s.tp, s.fp, s.fn) == (50, 50, 50)
    assert s.iou == pytest.approx(1 / 3, abs=1e-4) and s.f1 == 0.5 and s.precision == 0.5 and s.recall == 0.5
    assert ev.pixels == 1600 and ev.confusion[0, 0] == 1600 - 150
    # windows smaller than the square: the same counts, nothing counted twice at the seams
    monkeypatch.setattr(pixel_eval, "WINDOW", 7)
    again = evaluate_pixels(tmp_path / "pred.tif", tmp_path / "truth.geojson")
    assert np.array_equal(again.confusion, ev.confusion)


def test_truth_raster_and_several_classes(tmp_path):
    pred = np.zeros((20, 20), np.uint8)
    truth = np.zeros((20, 20), np.uint8)
    pred[0:10, 0:10], truth[0:10, 0:10] = 1, 1  # 100 px of class a right
    pred[10:20, 0:10], truth[10:20, 0:10] = 2, 1  # 100 px of a called b
    truth[10:20, 10:20] = 2  # 100 px of b missed
    class_raster(tmp_path / "pred.tif", pred, classes=("a", "b"))
    class_raster(tmp_path / "truth.tif", truth, tags=False)
    ev = evaluate_pixels(tmp_path / "pred.tif", tmp_path / "truth.tif")
    assert ev.labels == ["background", "a", "b"]
    assert ev.confusion.tolist() == [[100, 0, 0], [0, 100, 100], [100, 0, 0]]
    assert ev.per_class["a"].recall == 0.5 and ev.per_class["a"].precision == 1.0
    assert ev.per_class["b"].tp == 0 and ev.mean.iou == pytest.approx((0.5 + 0) / 2)


def test_pixel_bad_inputs(tmp_path):
    class_raster(tmp_path / "pred.tif", np.ones((10, 10), np.uint8))
    gpd.GeoDataFrame({"class": ["car"]}, geometry=[square(0, 0)], crs=CRS).to_file(tmp_path / "cars.gpkg")
    with pytest.raises(EvaluationError, match=r"truth classes \['car'\] are not among"):
        evaluate_pixels(tmp_path / "pred.tif", tmp_path / "cars.gpkg")
    far = gpd.GeoDataFrame({"class": ["building"]}, geometry=[shapely.box(0, 0, 5, 5)], crs=CRS)
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(EvaluationError, match="do not overlap"):
        evaluate_pixels(tmp_path / "pred.tif", tmp_path / "far.gpkg")
    (tmp_path / "empty.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "empty.geojson")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "no features" in r.stderr
    class_raster(tmp_path / "other.tif", np.ones((5, 5), np.uint8))
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "other.tif")])
    assert r.exit_code == 2 and "not on the same grid" in r.stderr


def layer(items, crs=CRS):
    """(class, col, row, score) squares as a layer."""
    return gpd.GeoDataFrame(
        {"class": [c for c, *_ in items], "score": [s for *_, s in items]},
        geometry=[square(col, row) for _, col, row, _ in items],
        crs=crs,
    )


def test_object_confusion_matrix_counts_class_mixups():
    truth = layer([("car", 0, 0, 1), ("car", 50, 0, 1), ("truck", 100, 0, 1)])
    pred = layer([("car", 0, 0, 0.9), ("truck", 50, 0, 0.8), ("truck", 200, 0, 0.7)])
    ev = evaluate(pred, truth)
    assert ev.labels == ["car", "truck", "none"]
    # truth car -> car; truth car -> truck (a mix-up); truth truck missed; one truck from nowhere
    assert ev.confusion.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]
    assert ev.per_class["car"].tp == 1 and ev.per_class["truck"].tp == 0


def test_markdown_report_with_confusion_and_pr_curve(tmp_path):
    layer([("car", 0, 0, 1), ("car", 50, 0, 1), ("truck", 100, 0, 1)]).to_file(tmp_path / "truth.gpkg")
    layer([("car", 0, 0, 0.9), ("car", 52, 0, 0.8), ("truck", 200, 0, 0.7)]).to_file(tmp_path / "pred.gpkg")
    report = tmp_path / "report.md"
    r = CliRunner().invoke(
        main, ["evaluate", str(tmp_path / "pred.gpkg"), str(tmp_path / "truth.gpkg"), "--report", str(report)]
    )
    assert r.exit_code == 0, r.stderr
    text = report.read_text()
    assert "| car | 2 | 0 | 0 | 1.000 | 1.000 | 1.000 |" in text  # the shifted car still has IoU 0.67
    assert "## Confusion matrix" in text and "| **truck** | 0 | 0 | 1 |" in text
    png = tmp_path / "report-pr.png"
    assert "![precision-recall](report-pr.png)" in text and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "overall" in r.stdout and "car" in r.stdout
    bad = CliRunner().invoke(
        main,
        ["evaluate", str(tmp_path / "pred.gpkg"), str(tmp_path / "truth.gpkg"), "--report", str(tmp_path / "r.txt")],
    )
    assert bad.exit_code == 2 and ".md" in bad.stderr


def test_pixel_report_json(tmp_path):
    pred = np.zeros((20, 20), np.uint8)
    pred[:10] = 1
    class_raster(tmp_path / "pred.tif", pred)
    gpd.GeoDataFrame({"class": ["building"]}, geometry=[square(0, 0, 20)], crs=CRS).to_file(tmp_path / "t.gpkg")
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "t.gpkg"), "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["per_class"]["building"]["iou"] == 0.5 and out["confusion"]["labels"] == ["background", "building"]
