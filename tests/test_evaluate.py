"""Object metrics against hand-computed cases."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from click.testing import CliRunner

from geovision.cli.main import main
from geovision.evaluate import EvaluationError, average_precision, evaluate, pairwise_iou

CRS = "EPSG:32617"


def layer(boxes, scores=None, cls="tree", crs=CRS):
    geoms = [shapely.box(*b) for b in boxes]
    data = {"class": [cls] * len(geoms)}
    if scores is not None:
        data["score"] = scores
    return gpd.GeoDataFrame(data, geometry=geoms, crs=crs)


X0, Y0 = 500000, 4000000


def b(x, y, w=10, h=10):
    return (X0 + x, Y0 + y, X0 + x + w, Y0 + y + h)


def test_iou_of_offset_boxes():
    # two 10x10 boxes offset by 5 in x: intersection 50, union 150
    iou = pairwise_iou(np.array([shapely.box(*b(0, 0))]), np.array([shapely.box(*b(5, 0))]))
    assert iou[0, 0] == pytest.approx(1 / 3)


def test_known_tp_fp_fn():
    truth = layer([b(0, 0), b(100, 0), b(200, 0), b(300, 0)])
    pred = layer([b(1, 0), b(101, 1), b(500, 0), b(0, 1)], scores=[0.9, 0.8, 0.7, 0.6])
    ev = evaluate(pred, truth, iou=0.5)
    s = ev.per_class["tree"]
    # two found, one in the void, one duplicate of an already matched object; two missed
    assert (s.tp, s.fp, s.fn) == (2, 2, 2)
    assert (s.precision, s.recall, s.f1) == (0.5, 0.5, 0.5)


def test_average_precision_by_hand():
    # three truths; ranked predictions: hit, miss, hit. Precision at recall 1/3: 1, at 2/3: 2/3.
    ious = np.array([[0.9, 0, 0], [0, 0, 0], [0, 0.8, 0]])
    ap = average_precision(ious, np.array([0.9, 0.8, 0.7]), 3, 0.5)
    # 101 points: r in [0, 1/3] -> 1.0 (34 points), (1/3, 2/3] -> 2/3 (33 points), above -> 0
    assert ap == pytest.approx((34 * 1.0 + 33 * 2 / 3) / 101)


def test_crs_mixing_gives_the_same_numbers():
    truth = layer([b(0, 0), b(100, 0), b(200, 0)])
    pred = layer([b(1, 1), b(103, 0), b(250, 0)], scores=[0.9, 0.8, 0.7])
    same = evaluate(pred, truth)
    mixed = evaluate(pred, truth.to_crs("EPSG:4326"))
    assert same.overall == mixed.overall


def test_bad_inputs(tmp_path):
    truth = layer([b(0, 0)])
    with pytest.raises(EvaluationError, match="no features"):
        evaluate(layer([b(0, 0)]), layer([]))
    with pytest.raises(EvaluationError, match="do not overlap"):
        evaluate(layer([(0, 0, 10, 10)]), truth)
    with pytest.raises(EvaluationError, match="no class in common"):
        evaluate(layer([b(0, 0)], cls="car"), truth)
    truth.to_file(tmp_path / "t.gpkg")
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "none.gpkg"), str(tmp_path / "t.gpkg")])
    assert r.exit_code == 2 and "no such file" in r.stderr


def test_evaluate_cli_json(tmp_path):
    layer([b(0, 0), b(100, 0)]).to_file(tmp_path / "t.gpkg")
    layer([b(0, 1), b(300, 0)], scores=[0.9, 0.5]).to_file(tmp_path / "p.geojson")
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "p.geojson"), str(tmp_path / "t.gpkg"), "--json"])
    assert r.exit_code == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    assert out["overall"]["tp"] == 1 and out["overall"]["f1"] == 0.5
    table = CliRunner().invoke(main, ["evaluate", str(tmp_path / "p.geojson"), str(tmp_path / "t.gpkg")])
    assert "tree" in table.stdout and "0.5" in table.stdout


def test_labels_truth_and_predictions_are_read_alike(tmp_path):
    """One reader for every vector input: the same one-line errors for labels and for evaluate."""
    import geopandas as gpd
    import shapely

    from geovision.errors import EvaluationError, LabelError
    from geovision.labels import LabelReport, read_vector_labels

    no_crs = tmp_path / "nocrs.gpkg"
    gpd.GeoDataFrame({"class": ["tree"]}, geometry=[shapely.box(0, 0, 1, 1)]).to_file(no_crs)
    broken = tmp_path / "broken.geojson"
    broken.write_text("{ not json")
    for path, message in ((no_crs, "layer has no CRS"), (broken, "not a readable vector layer")):
        with pytest.raises(EvaluationError, match=message):
            evaluate(path, path)
        with pytest.raises(LabelError, match=message):
            read_vector_labels(path, [], ["tree"], LabelReport())


def test_only_objects_inside_the_area_where_truth_is_complete_count(tmp_path):
    """OSM mapped the west only: a found house in the unmapped east is no false positive there."""
    truth = layer([b(0, 0), b(30, 0), b(60, 0)])  # the west, x < 100 m, is mapped
    pred = layer([b(1, 0), b(31, 1), b(150, 0), b(180, 0)], scores=[0.9, 0.8, 0.7, 0.6])  # two in the east
    west = gpd.GeoDataFrame(geometry=[shapely.box(X0 - 10, Y0 - 10, X0 + 100, Y0 + 20)], crs=CRS)
    everywhere = evaluate(pred, truth).overall
    assert (everywhere.tp, everywhere.fp, everywhere.fn) == (2, 2, 1)
    mapped = evaluate(pred, truth, area=west.to_crs("EPSG:4326")).overall  # any CRS
    assert (mapped.tp, mapped.fp, mapped.fn) == (2, 0, 1)
    # the CLI, with the layers as files; an area off the truth is one clear line
    paths = {name: tmp_path / f"{name}.gpkg" for name in ("pred", "truth", "west", "east")}
    pred.to_file(paths["pred"]), truth.to_file(paths["truth"]), west.to_file(paths["west"])
    gpd.GeoDataFrame(geometry=[shapely.box(X0 + 140, Y0 - 10, X0 + 200, Y0 + 20)], crs=CRS).to_file(paths["east"])
    args = ["evaluate", str(paths["pred"]), str(paths["truth"]), "--json", "--area"]
    r = CliRunner().invoke(main, [*args, str(paths["west"])])
    assert r.exit_code == 0, r.stderr
    assert '"fp": 0' in r.stdout and '"n_pred": 2' in r.stdout
    r = CliRunner().invoke(main, [*args, str(paths["east"])])
    assert r.exit_code != 0 and r.stderr.strip() == "error: no truth feature lies inside the area"
