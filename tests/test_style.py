"""Layers open styled in QGIS: the default style in a GeoPackage, a .qml on request, and the plugin zip.

What QGIS itself makes of them is checked in tests/test_qgis.py; here, the
files as written, without QGIS.
"""

from __future__ import annotations

import sqlite3
import warnings
import xml.etree.ElementTree as ET
import zipfile

import pyogrio
import pytest
from click.testing import CliRunner

import geovision
from geovision.cli.main import main
from geovision.errors import LabelError
from geovision.labels import read_vector
from geovision.qgis_plugin import runner
from geovision.style import qml
from tests.conftest import SAMPLE_TREES, tiled_copy


def categories(style: str) -> list[tuple[str, str, str]]:
    """(class, fill style, outline colour) of each category of a QML style."""
    root = ET.fromstring(style.split("\n", 1)[1])
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class"
    out = []
    for cat in renderer.iter("category"):
        symbol = renderer.find(f"symbols/symbol[@name='{cat.get('symbol')}']")
        assert symbol is not None
        props = {p.get("k"): p.get("v") for p in symbol.iter("prop")}
        out.append((cat.get("value"), props["style"], props["outline_color"]))
    return out


def test_a_geopackage_carries_its_default_qgis_style(tmp_path):
    out = tmp_path / "trees.gpkg"
    result = geovision.detect(SAMPLE_TREES, "trees", out)
    con = sqlite3.connect(out)
    rows = con.execute(
        "SELECT f_table_name, f_geometry_column, styleName, useAsDefault, styleQML FROM layer_styles"
    ).fetchall()
    contents = dict(con.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall())
    con.close()
    assert [r[:4] for r in rows] == [("trees", "geom", "geovision", 1)]
    assert categories(rows[0][4]) == [("tree", "no", "255,221,0,255")]  # an outline, no fill
    assert contents == {"trees": "features", "layer_styles": "attributes"}  # still a valid GeoPackage
    assert [name for name, _ in pyogrio.list_layers(out)] == ["trees", "layer_styles"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "more than one layer" warning: the objects are read
        assert len(read_vector(out, LabelError)) == len(result.features) > 20


def test_a_geopackage_is_the_same_bytes_when_gdal_is_told_the_date(tmp_path, monkeypatch):
    """GDAL's OGR_CURRENT_DATE makes a run reproducible: the style table's timestamp follows it too."""
    monkeypatch.setenv("OGR_CURRENT_DATE", "2026-01-01T00:00:00Z")
    out = tmp_path / "trees.gpkg"
    geovision.detect(SAMPLE_TREES, "trees", out)
    first = out.read_bytes()
    geovision.detect(SAMPLE_TREES, "trees", out, overwrite=True)
    assert out.read_bytes() == first
    con = sqlite3.connect(out)
    stamps = {t for (t,) in con.execute("SELECT last_change FROM gpkg_contents")}
    stamps |= {t for (t,) in con.execute("SELECT update_time FROM layer_styles")}
    con.close()
    assert stamps == {"2026-01-01T00:00:00Z"}


def test_every_class_gets_its_own_outline_colour():
    cats = categories(qml(["building", "tree", "car"]))
    assert [c[0] for c in cats] == ["building", "tree", "car"]
    assert all(c[1] == "no" for c in cats) and len({c[2] for c in cats}) == 3


def test_qml_beside_geojson_and_shapefile_only_when_asked(tmp_path):
    run = CliRunner().invoke
    r = run(main, ["detect", str(SAMPLE_TREES), "-m", "trees", "-o", str(tmp_path / "a.geojson"), "-q"])
    assert r.exit_code == 0 and not (tmp_path / "a.qml").exists()
    for name in ("b.geojson", "c.shp"):
        r = run(main, ["detect", str(SAMPLE_TREES), "-m", "trees", "-o", str(tmp_path / name), "--qml", "-q"])
        assert r.exit_code == 0, r.output
        style = (tmp_path / name).with_suffix(".qml").read_text()
        assert categories(style) == [("tree", "no", "255,221,0,255")]
    # a .qml in the way is refused before any work, like the layer itself
    (tmp_path / "d.qml").write_text("mine")
    r = run(main, ["detect", str(SAMPLE_TREES), "-m", "trees", "-o", str(tmp_path / "d.geojson"), "--qml"])
    assert r.exit_code == 2 and "d.qml already exists" in r.stderr and not (tmp_path / "d.geojson").exists()
    assert (tmp_path / "d.qml").read_text() == "mine"


def test_progress_lines_for_programs(tmp_path):
    r = CliRunner().invoke(
        main, ["detect", str(SAMPLE_TREES), "-m", "trees", "-o", str(tmp_path / "t.gpkg"), "--progress", "lines"]
    )
    assert r.exit_code == 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("progress ")]
    done, total = lines[-1].split()[1].split("/")
    assert lines and done == total and int(total) > 0


def test_the_plugin_zip_is_what_install_from_zip_takes(tmp_path):
    out = tmp_path / "plugin.zip"
    r = CliRunner().invoke(main, ["qgis-plugin", "-o", str(out)])
    assert r.exit_code == 0, r.output
    names = zipfile.ZipFile(out).namelist()
    assert all(n.startswith("geovision_qgis/") for n in names) and not any("__pycache__" in n for n in names)
    assert {"geovision_qgis/__init__.py", "geovision_qgis/metadata.txt", "geovision_qgis/icon.png"} <= set(names)
    meta = zipfile.ZipFile(out).read("geovision_qgis/metadata.txt").decode()
    assert "qgisMinimumVersion=3.22" in meta and "hasProcessingProvider=yes" in meta and "icon=icon.png" in meta
    r = CliRunner().invoke(main, ["qgis-plugin", "-o", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.stderr


def test_the_plugin_passes_the_object_size_to_detect_and_batch(tmp_path):
    """The dialogs' optional object size becomes --object-size (left out when empty), and the command runs."""
    exe = runner.find_executable()
    out = tmp_path / "t.gpkg"
    cmd = runner.detect_command(exe, str(SAMPLE_TREES), "trees", str(out), object_size=8.0)
    assert cmd[cmd.index("--object-size") + 1] == "8"
    assert "--object-size" not in runner.detect_command(exe, str(SAMPLE_TREES), "trees", str(out))
    assert "--object-size 8" in runner.command_line(runner.batch_command(exe, "f", "trees", "o", 0.2, None, 8.0))
    lines: list[str] = []
    result = runner.run(cmd, on_line=lines.append)
    assert result.returncode == 0 and out.exists()
    assert any("reading at 0.2 m, not 0.1" in line for line in lines), lines


def test_the_plugin_runner_follows_and_cancels_the_real_command(tmp_path):
    exe = runner.find_executable()
    out = tmp_path / "t.gpkg"
    seen: list[float] = []
    result = runner.run(runner.detect_command(exe, str(SAMPLE_TREES), "trees", str(out)), on_progress=seen.append)
    assert result.returncode == 0 and not result.cancelled and seen[-1] == 100.0 and out.exists()
    (tmp_path / "big").mkdir()
    big = tiled_copy(tmp_path / "big" / "big.tif", SAMPLE_TREES, 8)  # 3200 x 3200 px: about 80 tiles
    target = big.with_suffix(".gpkg")
    progress: list[float] = []
    result = runner.run(
        runner.detect_command(exe, str(big), "trees", str(target)),
        on_progress=progress.append,
        is_cancelled=lambda: bool(progress),
    )
    assert result.cancelled and result.returncode == 143 and max(progress) < 100
    assert sorted(p.name for p in big.parent.iterdir()) == ["big.tif"]  # no layer, no temporary file
    with pytest.raises(runner.GeovisionCommandError, match="no such file"):
        runner.run(runner.detect_command(exe, str(tmp_path / "missing.tif"), "trees", str(tmp_path / "m.gpkg")))


def test_the_command_runs_without_qgis_own_library_variables():
    env = runner.child_environment({"PATH": "/bin", "PYTHONPATH": "/qgis/python", "GDAL_DATA": "/qgis/gdal"})
    assert env == {"PATH": "/bin", "PYTHONUNBUFFERED": "1"}
