"""geovision batch: many scenes, failures isolated, resumable, local or on a Dask cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from rasterio.windows import Window

from geovision.batch import dedupe_overlaps, run_batch, worker_device
from geovision.cli.main import main
from geovision.registry import resolve_model
from tests.conftest import SAMPLE_TREES


def crop(src: Path, dst: Path, window: Window) -> Path:
    """A crop of a real raster, georeferenced."""
    with rasterio.open(src) as ds:
        data = ds.read(window=window)
        profile = ds.profile | {
            "width": window.width,
            "height": window.height,
            "transform": ds.window_transform(window),
        }
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def survey(folder: Path, n: int = 3, size: int = 300) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    offsets = [(0, 0), (100, 0), (0, 100), (100, 100), (50, 50), (100, 50)]
    return [crop(SAMPLE_TREES, folder / f"scene{i}.tif", Window(*offsets[i], size, size)) for i in range(n)]


def test_batch_with_a_corrupt_scene(tmp_path):
    scenes = survey(tmp_path / "survey")
    (tmp_path / "survey" / "broken.tif").write_bytes(b"II*\0 not really a tiff")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["batch", str(tmp_path / "survey"), "-m", "trees", "-o", str(out), "--conf", "0.05"])
    assert r.exit_code == 2
    assert "broken.tif" in r.stderr and "Traceback" not in r.stderr
    assert "3/4 scenes done" in r.stderr and "failed: " in r.stderr
    assert f":{os.getpid()}" in r.stderr  # the per-worker status line (this process ran them)
    manifest = json.loads((out / "manifest.json").read_text())["scenes"]
    status = {Path(s["input"]).name: s for s in manifest}
    assert status["broken.tif"]["status"] == "failed" and "not a raster" in status["broken.tif"]["error"]
    assert all(status[p.name]["status"] == "done" for p in scenes)
    per_scene = [gpd.read_file(status[p.name]["output"]) for p in scenes]
    merged = gpd.read_file(out / "merged.gpkg")
    assert len(merged) == sum(len(g) for g in per_scene) > 0
    assert set(merged["source"]) == {p.name for p in scenes}
    assert all(status[p.name]["objects"] == len(g) for p, g in zip(scenes, per_scene))


def test_interrupted_batch_resumes_without_redoing(tmp_path):
    scenes = survey(tmp_path / "survey", n=6, size=300)
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("geovision")
    cmd = [str(exe), "batch", str(tmp_path / "survey"), "-m", "trees", "-o", str(out), "-q", "--conf", "0.05"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["scenes"]) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    first = {s["input"]: s for s in json.loads(manifest.read_text())["scenes"]}
    if len(first) == len(scenes):
        pytest.skip("the batch finished before it could be interrupted")
    assert proc.returncode == -signal.SIGKILL
    done_before = {k: Path(v["output"]).stat().st_mtime_ns for k, v in first.items() if v["status"] == "done"}
    # scenes not recorded as done have no output layer: nothing half-written under a real name
    from geovision.batch import scene_output

    for scene in scenes:
        if str(scene) not in done_before:
            assert not scene_output(out, scene).exists()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    final = {s["input"]: s for s in json.loads(manifest.read_text())["scenes"]}
    assert len(final) == len(scenes) and all(s["status"] == "done" for s in final.values())
    for path, mtime in done_before.items():  # not redone
        assert Path(final[path]["output"]).stat().st_mtime_ns == mtime
    merged = gpd.read_file(out / "merged.gpkg")
    assert len(merged) == sum(s["objects"] for s in final.values())
    # a third run does nothing at all
    r = CliRunner().invoke(main, ["batch", str(tmp_path / "survey"), "-m", "trees", "-o", str(out), "--conf", "0.05"])
    assert r.exit_code == 0 and f"({len(scenes)} already done before)" in r.stderr


def test_a_rerun_with_other_settings_redoes_the_scenes(tmp_path):
    """The manifest records the confidence and reading resolution: the same command skips every scene,
    another --conf or --object-size redoes them (a layer of the old settings is no answer to the new)."""
    survey(tmp_path / "survey", n=2, size=200)
    base = ["batch", str(tmp_path / "survey"), "-m", "trees", "-o", str(tmp_path / "out")]

    def runs(*extra: str) -> list[dict]:
        r = CliRunner().invoke(main, [*base, *extra])
        assert r.exit_code == 0, r.stderr
        return json.loads((tmp_path / "out" / "manifest.json").read_text())["scenes"]

    first = runs("--conf", "0.05")
    assert {s["settings"] for s in first} == {"confidence 0.05, resolution 0.1"}
    r = CliRunner().invoke(main, [*base, "--conf", "0.05"])
    assert "(2 already done before)" in r.stderr
    higher = runs("--conf", "0.3")
    assert all(s["objects"] < f["objects"] for s, f in zip(higher, first))
    coarse = runs("--conf", "0.3", "--object-size", "8")
    assert {s["settings"] for s in coarse} == {"confidence 0.3, resolution 0.2"}
    assert sum(s["objects"] for s in coarse) == len(gpd.read_file(tmp_path / "out" / "merged.gpkg", layer="merged"))


def test_worker_processes_and_dask_local_cluster_give_the_same_results(tmp_path):
    from dask.distributed import LocalCluster

    scenes = survey(tmp_path / "survey", n=2, size=200)
    local = run_batch(scenes, "trees", tmp_path / "local", confidence=0.05)
    pool = run_batch(scenes, "trees", tmp_path / "pool", confidence=0.05, workers=2)
    assert len(gpd.read_file(pool.merged)) == len(gpd.read_file(local.merged))
    # the manifest says who ran each scene: this process, or worker processes
    assert {s.worker.rsplit(":", 1)[1] for s in local.scenes} == {str(os.getpid())}
    assert str(os.getpid()) not in {s.worker.rsplit(":", 1)[1] for s in pool.scenes}
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        remote = run_batch(scenes, "trees", tmp_path / "dask", scheduler=cluster.scheduler_address, confidence=0.05)
    assert [s.status for s in remote.scenes] == ["done", "done"]
    # each model gets its process's share of the cores, passed to it, not read from the environment
    cores = len(os.sched_getaffinity(0))
    assert {s.threads for s in local.scenes} == {cores}
    assert {s.threads for s in pool.scenes} == {max(1, cores // 2)}
    assert {s.threads for s in remote.scenes} == {max(1, cores // 2)}  # two tasks at a time on the worker
    assert "GEOVISION_THREADS" not in os.environ
    a, b = gpd.read_file(local.merged), gpd.read_file(remote.merged)
    assert len(a) == len(b) > 0
    # the same objects; a worker running torch on one thread may differ in the last float bits
    ba = np.array(sorted(map(tuple, a.geometry.bounds.to_numpy().round(2))))
    bb = np.array(sorted(map(tuple, b.geometry.bounds.to_numpy().round(2))))
    np.testing.assert_allclose(ba, bb, atol=0.011)
    assert sorted(a["source"]) == sorted(b["source"])


def test_local_workers_take_one_gpu_each_when_there_are_several():
    assert [worker_device(i, 4) for i in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]
    assert worker_device(0, 1) is None and worker_device(3, 0) is None  # one GPU or none: --device decides


def test_dedupe_keeps_an_object_in_the_overlap_once(tmp_path):
    # two scenes overlapping by 100 px; one tree-sized object in the overlap, seen by both
    t = Affine(0.1, 0, 500000, 0, -0.1, 4000000)
    for name, x0 in (("a.tif", 0), ("b.tif", 200)):
        with rasterio.open(
            tmp_path / name,
            "w",
            driver="GTiff",
            width=300,
            height=300,
            count=3,
            dtype="uint8",
            crs="EPSG:32617",
            transform=t @ Affine.translation(x0, 0),
        ) as ds:
            ds.write(np.zeros((3, 300, 300), np.uint8))
    obj = shapely.box(500022, 3999980, 500026, 3999984)  # pixels 220..260 of the raster grid: in both
    other = shapely.box(500001, 3999980, 500004, 3999984)  # only in a.tif
    merged = gpd.GeoDataFrame(
        {
            "class": ["tree"] * 3,
            "class_id": [0, 0, 0],
            "score": [0.9, 0.8, 0.7],
            "area_m2": [16, 16, 12],
            "source": ["a.tif", "b.tif", "a.tif"],
        },
        geometry=[obj, obj.buffer(0.05, join_style="mitre"), other],
        crs="EPSG:32617",
    )
    cfg = resolve_model("trees")
    out = dedupe_overlaps(merged, {"a.tif": str(tmp_path / "a.tif"), "b.tif": str(tmp_path / "b.tif")}, cfg)
    assert len(out) == 2
    assert sorted(out["score"]) == [0.7, 0.9]


def test_unreadable_input_list(tmp_path):
    r = CliRunner().invoke(main, ["batch", str(tmp_path / "nothing-*.tif"), "-m", "trees", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no rasters found" in r.stderr


def test_same_file_names_in_two_folders_stay_two_sources(tmp_path):
    """source is the path below the batch input, so --dedupe keys each scene apart."""
    import shutil

    from tests.conftest import SAMPLE_TREES

    for year in ("2023", "2024"):
        (tmp_path / "survey" / year).mkdir(parents=True)
        shutil.copy(SAMPLE_TREES, tmp_path / "survey" / year / "plot.tif")
    r = run_batch(tmp_path / "survey", "trees", tmp_path / "out")
    merged = gpd.read_file(r.merged)
    assert set(merged["source"]) == {"2023/plot.tif", "2024/plot.tif"}
    per_source = merged.groupby("source").size()
    assert per_source["2023/plot.tif"] == per_source["2024/plot.tif"] > 10
    # the same scene twice overlaps itself completely: dedupe keeps each object once
    d = run_batch(tmp_path / "survey", "trees", tmp_path / "out-dedupe", dedupe=True)
    assert len(gpd.read_file(d.merged)) == per_source["2023/plot.tif"]


def test_every_object_layer_has_the_same_fields_in_the_same_order(tmp_path):
    """Boxes, segment outlines, a survey's merged layer and an empty one: one schema a QGIS style can rely on."""
    import geovision
    from geovision.writers import OBJECT_COLUMNS

    expected = [*OBJECT_COLUMNS, "geometry"]
    boxes = geovision.detect(SAMPLE_TREES, "trees", tmp_path / "t.gpkg").features
    rio = SAMPLE_TREES.parent / "spacenet_rio.tif"
    outlines = geovision.detect(rio, "buildings", tmp_path / "b.gpkg").features
    assert len(boxes) and len(outlines)
    for layer in (boxes, outlines, gpd.read_file(tmp_path / "t.gpkg"), gpd.read_file(tmp_path / "b.gpkg")):
        assert list(layer.columns) == expected
    merged = run_batch([SAMPLE_TREES], "trees", tmp_path / "survey").merged
    empty = run_batch([SAMPLE_TREES], "trees", tmp_path / "none", confidence=1.0).merged
    assert list(gpd.read_file(merged).columns) == expected and len(gpd.read_file(merged)) == len(boxes)
    assert list(gpd.read_file(empty).columns) == expected and len(gpd.read_file(empty)) == 0


def test_a_workers_share_of_the_cores_reaches_torch_without_touching_the_environment():
    """A batch worker running the torch backend on the CPU gives torch its threads directly
    (OMP_NUM_THREADS was written into the worker's environment before)."""
    code = (
        "import os, torch\n"
        "from geovision.backends import load_backend\n"
        "from geovision.registry import resolve_model\n"
        "load_backend(resolve_model('trees'), 'cpu', 'torch', threads=1)\n"
        "print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS', 'unset'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "unset"]
