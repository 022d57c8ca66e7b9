"""`geovision detect` and `geovision models` driven the way a user drives them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from click.testing import CliRunner

from geovision.cli.main import main
from tests.conftest import ROOT, SAMPLE_TREES, damaged_raster, squares_image, write_raster

TREES_YAML = ROOT / "configs" / "models" / "trees" / "model.yaml"


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, pattern: str, *outputs: Path, code: int = 2):
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert pattern.lower() in lines[0].lower(), lines[0]
    for o in outputs:
        assert not o.exists()
        assert not list(o.parent.glob(f".{o.name}*")), "temporary files left behind"


@pytest.fixture
def scene(tmp_path) -> Path:
    return write_raster(tmp_path / "scene.tif", squares_image(128, 128, [(10, 10, 30, 30)]))


@pytest.fixture
def model_yaml(tmp_path) -> Path:
    """A copy of the trees model YAML whose weights live in tmp_path (so tests may damage them)."""
    cfg = yaml.safe_load(TREES_YAML.read_text())
    cfg.pop("onnx"), cfg.pop("onnx_sha256")  # the weights are what these tests damage: export them
    weights = tmp_path / "w.pt"
    shutil.copyfile((TREES_YAML.parent / cfg["weights"]).resolve(), weights)
    cfg["weights"] = str(weights)
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_missing_raster(tmp_path):
    out = tmp_path / "o.gpkg"
    assert_user_error(run("detect", tmp_path / "nope.tif", "-m", "trees", "-o", out), "no such file", out)


def test_not_a_raster(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"this is not a tiff" * 10)
    out = tmp_path / "o.gpkg"
    assert_user_error(run("detect", bad, "-m", "trees", "-o", out), "not a raster", out)


def test_no_georeference_refused_unless_pixel_coords(tmp_path, model_yaml):
    path = write_raster(tmp_path / "plain.tif", squares_image(64, 64, []), crs=None)
    out = tmp_path / "o.geojson"
    assert_user_error(run("detect", path, "-m", model_yaml, "-o", out), "no georeference", out)
    # GeoJSON means longitude/latitude: pixel columns would come back as degrees and be scored so
    assert_user_error(run("detect", path, "-m", model_yaml, "-o", out, "--pixel-coords"), "use .gpkg or .shp", out)
    gpkg = tmp_path / "o.gpkg"
    r = run("detect", path, "-m", model_yaml, "-o", gpkg, "--pixel-coords", "-q")
    assert r.exit_code == 0, r.stderr
    assert gpd.read_file(gpkg).crs is None  # no CRS: evaluate refuses to score it against a map layer
    r = run("evaluate", gpkg, gpkg)
    assert r.exit_code == 2 and "layer has no CRS" in r.stderr


def test_unknown_model_lists_known(scene, tmp_path):
    out = tmp_path / "o.gpkg"
    r = run("detect", scene, "-m", "no-such-model", "-o", out)
    assert_user_error(r, "unknown model 'no-such-model'", out)
    assert "trees" in r.stderr


def test_missing_weights(scene, tmp_path, model_yaml):
    Path(yaml.safe_load(model_yaml.read_text())["weights"]).unlink()
    out = tmp_path / "o.gpkg"
    assert_user_error(run("detect", scene, "-m", model_yaml, "-o", out), "does not exist", out)


def test_hash_mismatch(scene, tmp_path, model_yaml):
    w = Path(yaml.safe_load(model_yaml.read_text())["weights"])
    w.write_bytes(w.read_bytes() + b"\0")
    out = tmp_path / "o.gpkg"
    assert_user_error(run("detect", scene, "-m", model_yaml, "-o", out), "sha256", out)


def test_corrupt_weights_without_hash(scene, tmp_path, model_yaml):
    cfg = yaml.safe_load(model_yaml.read_text())
    Path(cfg["weights"]).write_bytes(b"garbage" * 100)
    cfg["sha256"] = None
    model_yaml.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "o.gpkg"
    r = run("detect", scene, "-m", model_yaml, "-o", out)
    lines = r.stderr.strip().splitlines()  # a YAML without a hash is loaded with a warning first
    assert r.exit_code == 2 and not out.exists() and "Traceback" not in r.stderr
    assert any("gives no sha256" in line for line in lines) and "not a loadable" in lines[-1]


@pytest.mark.parametrize(
    "value, ok",
    [
        ("0" * 64, True),  # unquoted digits: YAML reads an integer
        ("'" + "A" * 64 + "'", True),  # quoted, upper case
        ("12345", False),
        ("'" + "g" * 64 + "'", False),
        ("[1, 2]", False),
    ],
)
def test_sha256_is_64_hex_characters_quoted_or_not(tmp_path, model_yaml, value, ok):
    from geovision.errors import ModelError
    from geovision.registry import resolve_model

    text = model_yaml.read_text()
    start = text.index("sha256:")
    end = text.index("\n", start)
    model_yaml.write_text(text[:start] + f"sha256: {value}" + text[end:])
    if ok:
        assert resolve_model(model_yaml).sha256 == value.strip("'").lower()
        # and it is checked, not skipped: these are not the weights' hash
        r = run("detect", SAMPLE_TREES, "-m", model_yaml, "-o", tmp_path / "o.gpkg")
        assert r.exit_code == 2 and "sha256" in r.stderr
    else:
        with pytest.raises(ModelError, match="64 hexadecimal"):
            resolve_model(model_yaml)
        r = run("detect", SAMPLE_TREES, "-m", model_yaml, "-o", tmp_path / "o.gpkg")
        assert r.exit_code == 2 and "64 hexadecimal" in r.stderr and "Traceback" not in r.stderr


def test_wrong_bands(tmp_path):
    path = write_raster(tmp_path / "grey.tif", squares_image(64, 64, [], bands=1))
    out = tmp_path / "o.gpkg"
    assert_user_error(run("detect", path, "-m", "trees", "-o", out), "needs 3 band", out)
    assert_user_error(run("detect", path, "-m", "trees", "-o", out, "--bands", "1,2,3"), "do not exist", out)


def test_all_nodata_raster(tmp_path):
    path = write_raster(tmp_path / "nd.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    out = tmp_path / "o.gpkg"
    assert_user_error(run("detect", path, "-m", "trees", "-o", out), "no valid pixels", out)


def test_gcp_only_raster_refused(tmp_path):
    from rasterio.control import GroundControlPoint

    path = write_raster(tmp_path / "g.tif", squares_image(64, 64, []), crs=None)

    with pytest.warns(rasterio.errors.NotGeoreferencedWarning), rasterio.open(path, "r+") as ds:
        ds.gcps = (
            [
                GroundControlPoint(0, 0, 500000, 4000000),
                GroundControlPoint(64, 64, 500006, 3999994),
                GroundControlPoint(0, 64, 500000, 3999994),
            ],
            rasterio.crs.CRS.from_epsg(32617),
        )
    out = tmp_path / "o.gpkg"
    assert_user_error(run("detect", path, "-m", "trees", "-o", out), "ground control points", out)


def test_existing_output_refused_unless_overwrite(scene, tmp_path):
    out = tmp_path / "o.gpkg"
    out.write_text("precious")
    assert_user_error(run("detect", scene, "-m", "trees", "-o", out), "already exists")
    assert out.read_text() == "precious"
    r = run("detect", scene, "-m", "trees", "-o", out, "--overwrite", "-q")
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[:15] == b"SQLite format 3"


def test_unwritable_output(scene, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "o.gpkg"
    assert_user_error(run("detect", scene, "-m", "trees", "-o", out), "does not exist")
    out = tmp_path / "o.xyz"
    assert_user_error(run("detect", scene, "-m", "trees", "-o", out), "unknown output format", out)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not __import__("os").access(ro, __import__("os").W_OK):  # root can write anywhere
            assert_user_error(run("detect", scene, "-m", "trees", "-o", ro / "o.gpkg"), "not writable")
    finally:
        ro.chmod(0o700)


def test_usage_error_exits_2(scene):
    r = run("detect", scene)
    assert r.exit_code == 2


def test_models_json_describes_each_model():
    r = run("models", "--json")
    assert r.exit_code == 0, r.stderr
    models = {m["name"]: m for m in json.loads(r.stdout)}
    trees = models["trees"]
    assert trees["task"] == "detect"
    assert Path(trees["weights"]).is_absolute() and Path(trees["weights"]).is_file()
    assert len(trees["sha256"]) == 64
    assert trees["tile_size"] > 0 and 0 <= trees["overlap"] < trees["tile_size"]
    assert trees["resolution"] > 0 and trees["classes"] == ["tree"]
    assert trees["object_size_m"] == 4.0 and models["buildings"]["object_size_m"] == 8.25  # for --object-size
    table = run("models")
    assert table.exit_code == 0 and "trees" in table.stdout
    header, *rows = table.stdout.splitlines()
    column = header.index("OBJECTS")
    assert next(r for r in rows if r.startswith("trees ")).startswith("4 m", column)


def test_real_yolo_on_sample_tile_end_to_end(tmp_path):
    """The README's main job, through the installed console script."""
    out = tmp_path / "trees.gpkg"
    exe = Path(sys.executable).with_name("geovision")
    cmd = [str(exe) if exe.exists() else "geovision", "detect", str(SAMPLE_TREES), "--model", "trees", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tree" in proc.stderr and "MP/s" in proc.stderr
    import geopandas as gpd

    gdf = gpd.read_file(out)
    assert gdf.crs.to_epsg() == 32617
    assert 25 <= len(gdf) <= 120  # OSBS_029 holds 61 labelled crowns; the model finds 46

    with rasterio.open(SAMPLE_TREES) as ds:
        left, bottom, right, top = ds.bounds
    b = gdf.total_bounds
    assert left - 1 <= b[0] and b[2] <= right + 1 and bottom - 1 <= b[1] and b[3] <= top + 1
    assert gdf["score"].between(0, 1).all() and (gdf["area_m2"] > 0).all()
    assert set(gdf["class"]) == {"tree"} and (gdf["source"] == SAMPLE_TREES.name).all()


def test_object_size_reads_larger_objects_coarser(tmp_path, model_yaml):
    """``--object-size 8`` with `trees` (crowns of 4 m learned at 0.1 m) reads at 0.2 m, so that the model
    sees such crowns at the size it learned, into a layer in the raster's place; objects near the learned
    size keep the resolution."""
    r = run("detect", SAMPLE_TREES, "-m", "trees", "--object-size", "8", "-o", tmp_path / "coarse.gpkg")
    assert r.exit_code == 0, r.stderr
    assert "reading at 0.2 m, not 0.1: objects of 8.0 m look the size of those 'trees' learned on (4.0 m)" in r.stderr
    import geovision

    r = run("detect", SAMPLE_TREES, "-m", "trees", "--object-size", "3", "-o", tmp_path / "small.gpkg")
    assert "reading at 0.1 m, as 'trees' does: objects of 3.0 m are not much larger" in r.stderr  # never finer
    fine = geovision.detect(SAMPLE_TREES, "trees", object_size=4.5)
    assert fine.model.resolution_m == 0.1 and geovision.resolve_model("trees").object_size_m == 4.0
    coarse = gpd.read_file(tmp_path / "coarse.gpkg", layer="coarse")
    assert coarse.crs.to_epsg() == 32617 and len(coarse) > 5
    with rasterio.open(SAMPLE_TREES) as ds:
        left, bottom, right, top = ds.bounds
    b = coarse.total_bounds
    assert left - 1 <= b[0] and b[2] <= right + 1 and bottom - 1 <= b[1] and b[3] <= top + 1
    assert geovision.detect(SAMPLE_TREES, "trees", object_size=40).model.resolution_m == 0.4  # at most 4x
    with pytest.raises(geovision.ModelError, match="more than zero"):
        geovision.detect(SAMPLE_TREES, "trees", object_size=0)
    cfg = yaml.safe_load(model_yaml.read_text())
    cfg.pop("training")  # a package made before sizes were recorded
    model_yaml.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "none.gpkg"
    r = run("detect", SAMPLE_TREES, "-m", model_yaml, "--object-size", "8", "-o", out)
    assert_user_error(r, "records no object size; --object-size cannot be matched", out)


def test_geojson_and_shapefile_outputs(tmp_path):
    import geopandas as gpd

    t = Affine(0.1, 0, 500000, 0, -0.1, 4000000)
    scene = write_raster(tmp_path / "s.tif", squares_image(64, 64, []), transform=t)
    for name in ("a.geojson", "b.shp"):
        r = run("detect", scene, "-m", "trees", "-o", tmp_path / name, "-q")
        assert r.exit_code == 0, r.stderr
    g = json.loads((tmp_path / "a.geojson").read_text())
    assert g["type"] == "FeatureCollection"
    shp = gpd.read_file(tmp_path / "b.shp")
    assert shp.crs.to_epsg() == 32617 and (tmp_path / "b.prj").exists()


def test_loading_the_yolo_backend_leaves_threads_alone():
    """ultralytics sets OMP_NUM_THREADS=1 on import; inference (and processes started later) must keep every core."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    probe = (
        "import os, subprocess, sys\n"
        "from geovision.backends.yolo import import_ultralytics\n"
        "import_ultralytics()\n"
        "import torch\n"
        "child = subprocess.run([sys.executable, '-c', 'import torch; print(torch.get_num_threads())'],"
        " capture_output=True, text=True).stdout.strip()\n"
        "print(os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads(), child)\n"
    )
    bare = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", bare, bare]


def test_an_output_is_never_the_input_or_another_output(tmp_path):
    tile = tmp_path / "scene.tif"
    shutil.copy(SAMPLE_TREES, tile)
    before = tile.read_bytes()
    r = run("detect", tile, "-m", "buildings-unet", "-o", tmp_path / "b.gpkg", "--mask-out", tile, "--overwrite")
    assert_user_error(r, "input raster", tmp_path / "b.gpkg")
    assert tile.read_bytes() == before
    m = tmp_path / "m.tif"
    r = run("detect", tile, "-m", "buildings-unet", "-o", tmp_path / "b.gpkg", "--mask-out", m, "--prob-out", m)
    assert_user_error(r, "another output", tmp_path / "b.gpkg", m)


def test_a_shapefile_exists_when_any_of_its_parts_does(tmp_path):
    dbf = tmp_path / "o.dbf"
    dbf.write_bytes(b"someone else's table")
    r = run("detect", SAMPLE_TREES, "-m", "trees", "-o", tmp_path / "o.shp")
    assert r.exit_code == 2 and "o.dbf already exists" in r.stderr and dbf.read_bytes() == b"someone else's table"
    (tmp_path / "o.prj").write_text("PROJCS[stale]")
    plain = write_raster(tmp_path / "plain.tif", squares_image(64, 64, [(10, 10, 30, 30)]), crs=None)
    r = run("detect", plain, "-m", "trees", "-o", tmp_path / "o.shp", "--pixel-coords", "--overwrite", "-q")
    assert r.exit_code == 0, r.stderr
    assert not (tmp_path / "o.prj").exists()  # pixel coordinates: no CRS, and no stale one left behind
    assert dbf.read_bytes() != b"someone else's table"


def test_a_corrupt_tile_inside_a_raster_is_one_line_naming_the_window(tmp_path):
    path = damaged_raster(tmp_path / "c.tif", 512, 512, block=(1, 1))
    out = tmp_path / "o.gpkg"
    r = run("detect", path, "-m", "trees", "-o", out, "-q")
    assert_user_error(r, "c.tif: cannot read pixels", out)
    assert "window" in r.stderr


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_and_sigterm_stop_with_one_line_and_no_temporary_files(tmp_path, sig, code, word):
    data = np.random.default_rng(0).integers(0, 255, (3, 4000, 4000), dtype=np.uint8)
    scene = write_raster(tmp_path / "big.tif", data, transform=Affine(0.3, 0, 500000, 0, -0.3, 4000000), tiled=True)
    out, mask = tmp_path / "o.gpkg", tmp_path / "m.tif"
    cmd = [sys.executable, "-m", "geovision.cli.main", "detect", str(scene), "-m", "buildings-unet"]
    # as from a terminal: a job started in the background (CI under nohup, say) inherits SIGINT ignored
    default_int = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    args = [*cmd, "-o", str(out), "--mask-out", str(mask), "-q"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, preexec_fn=default_int)
    for _ in range(600):  # until the mask is being written: the run is under way
        if list(tmp_path.glob(".m.tif.*")) or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "finished before it could be stopped"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.strip().splitlines() == [word], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]
