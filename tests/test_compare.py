"""``geovision compare``: two surveys, object by object, on the NEON plots flown twice."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner

import geovision
from geovision.cli.main import main
from geovision.compare import CHANGE_COLUMNS
from geovision.evaluate import evaluate, match, match_pairs
from geovision.labels import LabelReport, read_pixel_labels
from tests.conftest import ROOT

PLOTS = ROOT.parent / "shared" / "data" / "trees-neon-plots"
needs_plots = pytest.mark.skipif(not PLOTS.is_dir(), reason="needs the NEON plots in ../shared/data")


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def plots_layer(folder: Path, prefix: str, only: set[str] | None = None) -> gpd.GeoDataFrame:
    """The hand-labelled crowns of every plot in ``folder`` as one georeferenced layer."""
    geoms, names = [], []
    crs = None
    for xml in sorted((folder / "annotations").glob(f"{prefix}_*.xml")):
        tif = folder / f"{xml.stem}.tif"
        if not tif.exists() or (only is not None and xml.stem not in only):
            continue
        item = read_pixel_labels(xml, tif, ["tree"], LabelReport())
        with rasterio.open(tif) as ds:
            t, crs = ds.transform, ds.crs
        for box in item.boxes:
            geoms.append(shapely.transform(shapely.box(*box), lambda xy, t=t: np.column_stack(t @ xy.T)))
            names.append(xml.stem)
    return gpd.GeoDataFrame({"class": ["tree"] * len(geoms), "plot": names}, geometry=geoms, crs=crs)


def totals(result: geovision.Comparison) -> dict[str, int]:
    return {change: sum(per.values()) for change, per in result.counts().items()}


@needs_plots
def test_the_same_plots_flown_a_year_apart_are_mostly_kept(tmp_path):
    sjer = PLOTS / "SJER"
    both = {p.stem for p in (sjer / "annotations").glob("SJER_*.xml")} & {
        p.stem for p in (sjer / "2017" / "annotations").glob("SJER_*.xml")
    }
    plots_layer(sjer / "2017", "SJER", both).to_file(tmp_path / "2017.gpkg")
    plots_layer(sjer, "SJER", both).to_crs(4326).to_file(tmp_path / "2018.geojson")
    r = run("compare", tmp_path / "2017.gpkg", tmp_path / "2018.geojson", "-o", tmp_path / "changes.gpkg")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("shift: BEFORE moved by (") and "estimated from" in r.stdout
    out = gpd.read_file(tmp_path / "changes.gpkg", layer="changes")
    assert out.crs == "EPSG:4326"  # AFTER's CRS
    counts = out["change"].value_counts().to_dict()
    n_before, n_after = 164, 195
    assert counts.get("kept", 0) >= 0.9 * n_before, counts
    assert counts.get("gone", 0) + sum(counts.get(c, 0) for c in ("kept", "grown", "shrunk")) == n_before
    assert len(out) - counts.get("gone", 0) == n_after
    # the summary table counts what the layer holds
    row = next(line.split() for line in r.stdout.splitlines() if line.startswith("kept"))
    assert int(row[-1]) == counts["kept"]
    # matched objects name each other by their own ids (a GeoPackage's fid)
    kept = out[out["change"] == "kept"]
    assert kept["before_id"].notna().all() and kept["after_id"].notna().all()
    assert kept["iou"].between(0.5, 1).all()
    before = gpd.read_file(tmp_path / "2017.gpkg", fid_as_index=True)
    some = kept.iloc[0]
    assert before.loc[int(some["before_id"])].geometry.area == pytest.approx(some["before_m2"], rel=1e-3)


@needs_plots
def test_a_layer_shifted_by_one_and_a_half_metres_is_unchanged_once_aligned():
    teak = plots_layer(PLOTS / "TEAK", "TEAK")
    assert len(teak) > 300
    moved = teak.copy()
    moved["geometry"] = moved.geometry.translate(1.5, 0)
    aligned = geovision.compare(teak, moved)
    assert aligned.shift.how == "estimated"
    assert aligned.shift.dx == pytest.approx(1.5, abs=0.02) and aligned.shift.dy == pytest.approx(0, abs=0.02)
    assert totals(aligned) == {"kept": len(teak), "grown": 0, "shrunk": 0, "gone": 0, "new": 0}
    raw = geovision.compare(teak, moved, align=False)
    assert raw.shift.how == "none"
    # crowns wider than 4.5 m still overlap their shifted selves at IoU 0.5; TEAK's are mostly smaller
    assert totals(raw)["gone"] == totals(raw)["new"] >= 0.75 * len(teak)
    given = geovision.compare(teak, moved, shift=(1.5, 0))
    assert totals(given)["kept"] == len(teak)


@needs_plots
def test_deleted_and_added_objects_are_gone_and_new(tmp_path):
    teak = plots_layer(PLOTS / "TEAK", "TEAK")
    after = teak.drop(index=teak.index[[3, 50, 100, 150, 200]])
    x0, y0, _, _ = teak.total_bounds
    added = gpd.GeoDataFrame(
        {"class": ["tree"] * 3},
        geometry=[shapely.box(x0 - 20 - 6 * k, y0 - 20, x0 - 17 - 6 * k, y0 - 17) for k in range(3)],
        crs=teak.crs,
    )
    after = gpd.GeoDataFrame(
        {"class": [*after["class"], *added["class"]]}, geometry=[*after.geometry, *added.geometry], crs=teak.crs
    )
    teak.to_file(tmp_path / "before.shp")
    after.to_file(tmp_path / "after.gpkg")
    r = run("compare", tmp_path / "before.shp", tmp_path / "after.gpkg", "-o", tmp_path / "changes.shp", "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["changes"]["gone"] == {"tree": 5} and summary["changes"]["new"] == {"tree": 3}
    assert summary["changes"]["kept"] == {"tree": len(teak) - 5}
    assert abs(summary["shift"]["dx_m"]) < 0.01 and abs(summary["shift"]["dy_m"]) < 0.01
    out = gpd.read_file(tmp_path / "changes.shp")
    gone = out[out["change"] == "gone"]
    assert sorted(gone["before_id"].astype(int)) == [3, 50, 100, 150, 200]  # a Shapefile's ids count from 0
    assert gone.geometry.geom_equals_exact(teak.geometry.iloc[[3, 50, 100, 150, 200]].set_axis(gone.index), 1e-6).all()


def squares(centres: list[tuple[float, float]], side: float = 4.0, crs: int = 32633) -> gpd.GeoDataFrame:
    geoms = [shapely.box(x, y, x + side, y + side) for x, y in centres]
    return gpd.GeoDataFrame({"class": ["house"] * len(geoms)}, geometry=geoms, crs=crs)


def scattered(n: int = 60, seed: int = 0) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    return [
        (500_000 + 12 * (k % 10) + rng.uniform(0, 4), 4_000_000 + 12 * (k // 10) + rng.uniform(0, 4)) for k in range(n)
    ]


def test_grown_and_shrunk_by_area_change():
    before = squares(scattered())
    after = before.copy()
    after.loc[0, "geometry"] = shapely.affinity.scale(after.geometry[0], 1.3, 1.3)  # 1.69 x the area
    after.loc[1, "geometry"] = shapely.affinity.scale(after.geometry[1], 0.8, 0.8)  # 0.64 x
    after.loc[2, "geometry"] = shapely.affinity.scale(after.geometry[2], 1.05, 1.05)  # 1.10 x: within 25 %
    result = geovision.compare(before, after)
    changes = result.changes.set_index("after_id")["change"]
    assert (changes[0], changes[1], changes[2]) == ("grown", "shrunk", "kept")
    assert totals(result) == {"kept": 58, "grown": 1, "shrunk": 1, "gone": 0, "new": 0}
    row = result.changes[result.changes["after_id"] == 0].iloc[0]
    assert row["before_m2"] == pytest.approx(16.0) and row["after_m2"] == pytest.approx(16 * 1.69)
    assert totals(geovision.compare(before, after, area_change=0.05))["grown"] == 2


def test_rows_of_an_orchard_do_not_outvote_the_true_shift():
    rows = [(600_000 + 5.0 * i, 5_000_000 + 5.0 * j) for i in range(30) for j in range(12)]
    before = squares(rows, side=3.0)
    after = before.copy()
    after["geometry"] = after.geometry.translate(2.2, -1.1)
    result = geovision.compare(before, after)
    assert (result.shift.dx, result.shift.dy) == (pytest.approx(2.2, abs=0.01), pytest.approx(-1.1, abs=0.01))
    assert totals(result)["kept"] == len(rows)


def test_compare_and_evaluate_agree_on_what_a_match_is():
    rng = np.random.default_rng(3)
    before = squares(scattered(80, seed=1))
    after = before.copy()
    after["geometry"] = [shapely.affinity.translate(g, *rng.normal(0, 1.2, 2)) for g in after.geometry]
    after["score"] = rng.uniform(size=len(after))
    result = geovision.compare(before, after, align=False)
    ev = evaluate(after, before, iou=0.5)
    counts = totals(result)
    assert counts["kept"] + counts["grown"] + counts["shrunk"] == ev.overall.tp
    assert counts["new"] == ev.overall.fp and counts["gone"] == ev.overall.fn
    assert 0 < ev.overall.tp < len(before)  # the test means something: some matched, some not


def test_the_sparse_matcher_is_the_greedy_one():
    rng = np.random.default_rng(0)
    for _ in range(50):
        ious = np.where(rng.uniform(size=(9, 7)) < 0.4, rng.choice([0.3, 0.5, 0.6, 0.9], size=(9, 7)), 0.0)
        order = rng.permutation(9)
        expected = np.full(9, -1)
        taken: set[int] = set()
        for k in order:  # the greedy rule, written out
            free = [(ious[k, j], -j) for j in range(7) if j not in taken and ious[k, j] >= 0.5]
            if free:
                expected[k] = -max(free)[1]
                taken.add(expected[k])
        i, j = np.nonzero(ious)
        assert (match_pairs(i, j, ious[i, j], order, 0.5, 9) == expected).all()
        assert (match(ious, order, 0.5) == expected).all()


def test_the_geopackage_is_styled_by_change(tmp_path):
    before = squares(scattered())
    after = squares(scattered()[5:] + [(500_000, 3_999_950)])
    result = geovision.compare(before, after, tmp_path / "c.gpkg")
    assert result.output == tmp_path / "c.gpkg"
    with sqlite3.connect(tmp_path / "c.gpkg") as con:
        (qml,) = con.execute("SELECT styleQML FROM layer_styles WHERE useAsDefault = 1").fetchone()
    assert 'attr="change"' in qml
    for change in ("kept", "grown", "shrunk", "gone", "new"):
        assert f'value="{change}"' in qml
    assert "255,40,40,255" in qml  # gone in red
    layer = gpd.read_file(tmp_path / "c.gpkg", layer="c")
    assert list(layer.columns) == [*CHANGE_COLUMNS, "geometry"]


def test_bad_inputs_give_one_line_and_no_output(tmp_path):
    here = squares(scattered())
    here.to_file(tmp_path / "a.gpkg")
    far = squares([(x + 50_000, y) for x, y in scattered()])
    far.to_file(tmp_path / "far.gpkg")
    wrong_crs = here.set_crs(3857, allow_override=True)
    wrong_crs.to_file(tmp_path / "wrong.geojson")
    squares([]).to_file(tmp_path / "empty.gpkg")
    out = tmp_path / "changes.gpkg"
    cases = [
        ((tmp_path / "a.gpkg", tmp_path / "far.gpkg"), "do not overlap"),
        ((tmp_path / "a.gpkg", tmp_path / "wrong.geojson"), "EPSG:3857"),
        ((tmp_path / "a.gpkg", tmp_path / "empty.gpkg"), "AFTER holds no objects"),
        ((tmp_path / "missing.gpkg", tmp_path / "a.gpkg"), "no such file"),
        ((tmp_path / "a.gpkg", ROOT / "sample_tiles" / "OSBS_029.tif"), "is a raster: give a model"),
    ]
    for (before, after), message in cases:
        r = run("compare", before, after, "-o", out)
        assert r.exit_code == 2, (message, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, r.stderr
        assert not out.exists() and not list(tmp_path.glob(".*"))
    r = run("compare", tmp_path / "a.gpkg", tmp_path / "a.gpkg", "-o", out, "--quicklook", tmp_path / "q.png")
    assert r.exit_code == 2 and "quicklook" in r.stderr
    # an empty AFTER with no alignment asked for: everything is gone
    result = geovision.compare(tmp_path / "a.gpkg", tmp_path / "empty.gpkg", align=False)
    assert totals(result)["gone"] == len(here)


@needs_plots
def test_two_rasters_with_the_trees_model_end_to_end(tmp_path):
    before, after = PLOTS / "SJER" / "2017" / "SJER_008.tif", PLOTS / "SJER" / "SJER_008.tif"
    r = run(
        "compare",
        before,
        after,
        "--model",
        "trees",
        "-o",
        tmp_path / "c.geojson",
        "--no-align",
        "--quicklook",
        tmp_path / "q.png",
        "--progress",
        "lines",
    )
    assert r.exit_code == 0, r.stderr
    found = [geovision.detect(p, "trees").features for p in (before, after)]
    out = gpd.read_file(tmp_path / "c.geojson")
    assert (out["change"] != "gone").sum() == len(found[1]) >= 3
    assert (out["change"] == "gone").sum() + out["change"].isin(["kept", "grown", "shrunk"]).sum() == len(found[0])
    assert set(out["source"]) <= {before.name, after.name}
    assert out["score"].between(0, 1).all() and (out["class_id"] == 0).all()  # detect's fields carried over
    assert "progress" in r.stderr
    from PIL import Image

    with Image.open(tmp_path / "q.png") as png:
        assert png.size == (400, 400)
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert (pixels == (190, 190, 190)).all(axis=1).any()  # kept outlines drawn


def test_the_qgis_plugin_runs_compare_and_its_log_gets_the_shift(tmp_path):
    from geovision.qgis_plugin import runner

    before = squares(scattered())
    before.to_file(tmp_path / "before.gpkg")
    after = before.copy()
    after["geometry"] = after.geometry.translate(0.8, 0.3)
    after.to_file(tmp_path / "after.shp")
    out = tmp_path / "changes.geojson"
    lines: list[str] = []
    cmd = runner.compare_command(
        runner.find_executable(), str(tmp_path / "before.gpkg"), str(tmp_path / "after.shp"), str(out)
    )
    result = runner.run(cmd, on_line=lines.append)
    assert result.returncode == 0 and out.exists() and out.with_suffix(".qml").exists()
    assert 'attr="change"' in out.with_suffix(".qml").read_text()
    assert any("BEFORE moved by (+0.80 m, +0.30 m)" in line for line in lines), lines
    assert set(gpd.read_file(out)["change"]) == {"kept"}
    with pytest.raises(runner.GeovisionCommandError, match="no such file"):
        runner.run(runner.compare_command(runner.find_executable(), str(tmp_path / "none.gpkg"), str(out), str(out)))
