"""The QGIS plugin in a real QGIS (Debian's 3.22: apt-get install python3-qgis qgis-providers).

QGIS runs in its own Python (the system's, which has ``qgis``), driven by
tests/qgis_session.py; the geovision command it runs is this checkout's.
Skipped where no Python with QGIS is found (set GEOVISION_QGIS_PYTHON to point
at one); .ci/run installs QGIS so that CI runs these.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import geovision
from geovision.cli.main import main
from tests.conftest import ROOT, SAMPLE_TREES, tiled_copy, write_raster


def qgis_python() -> str | None:
    """A Python that imports qgis.core: GEOVISION_QGIS_PYTHON, else the system's python3."""
    for candidate in (os.environ.get("GEOVISION_QGIS_PYTHON"), "/usr/bin/python3"):
        if candidate and Path(candidate).is_file():
            ok = subprocess.run([candidate, "-c", "import qgis.core"], capture_output=True, timeout=120)
            if ok.returncode == 0:
                return candidate
    return None


QGIS_PYTHON = qgis_python()
needs_qgis = pytest.mark.skipif(QGIS_PYTHON is None, reason="no Python with QGIS (apt-get install python3-qgis)")


def geovision_command() -> str:
    """This checkout's geovision command (the one beside the interpreter running the tests)."""
    beside = Path(sys.executable).with_name("geovision")
    found = str(beside) if beside.is_file() else shutil.which("geovision")
    assert found, "the geovision command is not installed"
    return found


@pytest.fixture(scope="module")
def qgis_report(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("qgis")
    plugin_zip = tmp / "geovision_qgis.zip"
    r = CliRunner().invoke(main, ["qgis-plugin", "-o", str(plugin_zip)])
    assert r.exit_code == 0, r.output
    plugins = tmp / "plugins"
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(plugins)  # as QGIS's "Install from ZIP" does
    folder = tmp / "survey-in"
    folder.mkdir()
    shutil.copy(SAMPLE_TREES, folder / "plot-a.tif")
    tiled_copy(folder / "plot-b.tif", SAMPLE_TREES, 2)
    big = tiled_copy(tmp / "big.tif", SAMPLE_TREES, 8)  # 3200 x 3200 px: about 80 tiles
    plain = write_raster(tmp / "plain.tif", np.full((3, 64, 64), 90, np.uint8), crs=None)
    work = tmp / "work"
    work.mkdir()
    cmd = [QGIS_PYTHON, str(ROOT / "tests" / "qgis_session.py"), "--plugins", str(plugins)]
    cmd += ["--exe", geovision_command(), "--work", str(work), "--raster", str(SAMPLE_TREES)]
    cmd += ["--big", str(big), "--folder", str(folder), "--plain", str(plain)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["tmp"] = str(tmp)
    return report


@needs_qgis
def test_the_provider_lists_its_algorithms_and_the_models_of_the_command(qgis_report):
    assert qgis_report["qgis"].startswith("3.")
    assert qgis_report["algorithms"] == ["geovision:batch", "geovision:compare", "geovision:detect"]
    names = {m.name for m in geovision.list_models()}
    assert set(qgis_report["model_options"]) == names | {"model file..."}


@needs_qgis
def test_detect_writes_the_same_objects_as_the_cli_in_the_raster_crs_with_a_style_qgis_loads(qgis_report, tmp_path):
    out = qgis_report["detect"]
    assert out["valid"] and out["crs"] == "EPSG:32617"
    assert out["fields"][:6] == ["fid", "class", "class_id", "score", "area_m2", "source"]
    cli = geovision.detect(SAMPLE_TREES, "trees", tmp_path / "cli.gpkg")
    assert out["count"] == len(cli.features) > 20
    cli_boxes = sorted([round(v, 2) for v in g.bounds] for g in cli.features.geometry)
    assert out["boxes"] == cli_boxes  # the same objects, in the same place
    # the default style QGIS applied when it opened the file: an outline per class, no fill
    assert out["styles_in_file"] == 1 and out["renderer"] == "categorizedSymbol"
    assert out["class_field"] == "class" and out["categories"] == ["tree"] and out["no_fill"]
    assert out["progress"] == 100.0


@needs_qgis
def test_compare_surveys_writes_every_object_styled_by_its_change(qgis_report):
    out = qgis_report["compare"]
    assert out["valid"] and out["count"] == qgis_report["detect"]["count"]
    assert out["renderer"] == "categorizedSymbol" and out["class_field"] == "change"
    assert out["categories"] == ["kept", "grown", "shrunk", "gone", "new"] and out["no_fill"]
    assert any("BEFORE moved by (+0.00 m, +0.00 m)" in line for line in out["console"]), out["console"]


@needs_qgis
def test_the_log_gives_a_command_line_that_repeats_the_run_headless(qgis_report):
    line = qgis_report["logged_command"]["line"]
    assert " detect " in line and "--model trees" in line and "OSBS_029.tif" in line
    assert qgis_report["logged_command"]["boxes"] == qgis_report["detect"]["boxes"]


@needs_qgis
def test_geojson_gets_a_qml_and_temporary_outputs_are_geopackages(qgis_report):
    assert qgis_report["geojson"]["qml"] and qgis_report["geojson"]["crs"] == "EPSG:4326"
    assert qgis_report["geojson"]["renderer"] == "categorizedSymbol" and qgis_report["geojson"]["no_fill"]
    assert qgis_report["geojson"]["count"] == qgis_report["detect"]["count"]
    assert qgis_report["temporary_output"].endswith(".gpkg")


@needs_qgis
def test_a_result_loaded_by_processing_is_styled(qgis_report):
    assert qgis_report["loaded"] == {
        "in_project": True,
        "renderer": "categorizedSymbol",
        "count": qgis_report["detect"]["count"],
    }


@needs_qgis
def test_batch_writes_one_layer_per_raster_and_loads_the_merged_one_styled(qgis_report):
    batch = qgis_report["batch"]
    assert batch["merged"].endswith("merged.gpkg") and batch["loaded"] == 1
    assert batch["loaded_renderer"] == "categorizedSymbol" and batch["categories"] == ["tree"]
    names = [Path(f).name for f in batch["files"]]  # scenes/plot-a-<hash>.gpkg: one layer per raster
    assert names[0] == "merged.gpkg" and names[1].startswith("plot-a") and names[2].startswith("plot-b")
    assert len(names) == 3
    # plot-b is plot-a four times over: at least four times its trees once seams are merged
    assert batch["count"] >= 4 * qgis_report["detect"]["count"] and batch["crs"] == "EPSG:32617"


@needs_qgis
def test_cancel_stops_the_command_and_leaves_no_file(qgis_report):
    cancel = qgis_report["cancel"]
    assert cancel["raised"] and "cancelled" in cancel["raised"]
    assert cancel["progress"] and max(cancel["progress"]) < 100  # stopped half-way, not after the end
    assert cancel["left"] == []  # neither the layer nor a temporary file


@needs_qgis
def test_bad_input_is_the_commands_one_line_and_no_file(qgis_report, tmp_path):
    bad = qgis_report["bad_input"]
    plain = Path(qgis_report["tmp"]) / "plain.tif"
    r = CliRunner().invoke(main, ["detect", str(plain), "-m", "trees", "-o", str(tmp_path / "x.gpkg")])
    cli_line = r.stderr.strip().splitlines()[-1].removeprefix("error: ")
    assert bad["raised"] == cli_line and "georeference" in cli_line and not bad["left"]
    assert "choose a model" in qgis_report["no_model_file"]
