"""One raster split into bands of tile rows over a real dask.distributed cluster: the same layer
as one process, object for object, for a detector and a segmenter, with a worker killed too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
from click.testing import CliRunner

import geovision
from geovision.cli.main import main
from geovision.cluster import check_readable, connect
from geovision.raster import open_raster, plan_read
from geovision.tiling import TileGrid
from tests.conftest import ROOT, SAMPLE_TREES, damaged_raster, tiled_copy

pytest.importorskip("dask.distributed")


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def forest(tmp_path_factory) -> Path:
    """OSBS_029 repeated 4 x 4: 1600 px at 0.1 m, five rows of the trees model's 416 px tiles."""
    return tiled_copy(tmp_path_factory.mktemp("forest") / "forest.tif", SAMPLE_TREES, 4)


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    """The Rio tile repeated 3 x 3: ten rows of buildings-unet's 256 px tiles at 0.3 m."""
    return tiled_copy(tmp_path_factory.mktemp("city") / "city.tif", ROOT / "sample_tiles" / "spacenet_rio.tif", 3)


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as c:
        yield c


def assert_same_layer(one: gpd.GeoDataFrame, other: gpd.GeoDataFrame) -> None:
    assert len(one) == len(other) > 0
    assert list(one.columns) == list(other.columns)
    assert one.geometry.geom_equals_exact(other.geometry, 1e-9).all()
    assert (one["score"].to_numpy() == other["score"].to_numpy()).all()
    assert (one["class"].to_numpy() == other["class"].to_numpy()).all()


def crossing(layer: gpd.GeoDataFrame, raster: Path, model: geovision.ModelConfig, band_rows: int) -> int:
    """How many objects straddle a seam between two bands (model-grid rows band_rows * k * stride)."""
    with open_raster(raster) as ds:
        plan = plan_read(ds, model.resolution_m, model.in_channels, None, model.normalization, True)
    grid = TileGrid(plan.width, plan.height, model.tile_size, model.overlap)
    seams = [(plan.transform @ (0, grid.row_start(r)))[1] for r in range(band_rows, grid.n_rows, band_rows)]
    _, ymin, _, ymax = layer.geometry.bounds.to_numpy().T
    return int(sum(((ymin < y) & (ymax > y)).sum() for y in seams))


def test_a_detector_split_over_local_workers_writes_the_single_process_layer(forest, tmp_path):
    trees = geovision.resolve_model("trees")
    one = geovision.detect(forest, trees, tmp_path / "one.gpkg")
    bands: list[tuple[int, int]] = []
    split = geovision.detect(
        forest, trees, tmp_path / "split.gpkg", workers=2, band_rows=1, progress=lambda d, n: bands.append((d, n))
    )
    assert bands == [(k, 5) for k in range(1, 6)]  # five bands of one tile row, counted as they finish
    assert crossing(one.features, forest, trees, 1) >= 10  # trees cut by band seams, found once
    assert_same_layer(one.features, split.features)
    assert_same_layer(gpd.read_file(tmp_path / "one.gpkg"), gpd.read_file(tmp_path / "split.gpkg"))
    assert split.stats.tiles == one.stats.tiles == 25
    assert "5 bands on 2 Dask workers" in split.stats.backend


def test_a_segmenter_split_over_a_cluster_blends_and_joins_across_band_seams(city, cluster):
    model = geovision.resolve_model("buildings-unet")
    one = geovision.detect(city, model).features
    split = geovision.detect(city, model, scheduler=cluster.scheduler_address, band_rows=2).features
    assert crossing(one, city, model, 2) >= 5  # polygons across band seams come out whole, once
    assert_same_layer(one, split)


def test_a_worker_killed_during_the_run_changes_nothing(forest, cluster):
    from dask.distributed import Client

    trees = geovision.resolve_model("trees")
    one = geovision.detect(forest, trees).features
    killed: list[int] = []
    with Client(cluster) as client:
        pids = client.run(os.getpid)

        def kill_one(done: int, total: int) -> None:
            if not killed:  # a worker holding tasks dies; Dask runs its bands again elsewhere
                busy = [w for w, keys in client.processing().items() if keys] or list(pids)
                killed.append(pids[busy[0]])
                os.kill(pids[busy[0]], signal.SIGKILL)

        split = geovision.detect(
            forest, trees, scheduler=cluster.scheduler_address, band_rows=1, progress=kill_one
        ).features
        client.wait_for_workers(2, timeout=60)  # the nanny brings the worker back for the next test
    assert killed
    assert_same_layer(one, split)


def test_a_raster_some_worker_cannot_read_is_refused_before_any_task(cluster, tmp_path):
    from dask.distributed import Client

    with Client(cluster) as client:
        with pytest.raises(geovision.RasterError, match="2 of 2 Dask workers cannot read it"):
            check_readable(client, str(tmp_path / "only-here.tif"))


def test_cli_workers_and_one_line_errors(forest, tmp_path, monkeypatch):
    out = tmp_path / "o.gpkg"
    monkeypatch.chdir(forest.parent)  # a relative path works: the workers get it made absolute
    r = run(
        "detect", forest.name, "-m", "trees", "-o", out, "--workers", "2", "--band-rows", "2", "--progress", "lines"
    )
    assert r.exit_code == 0, r.stderr
    assert "progress 3/3" in r.stderr and "bands on 2 Dask workers" in r.stderr
    assert_same_layer(geovision.detect(forest, "trees").features, gpd.read_file(out))
    r = run(
        "detect",
        ROOT / "sample_tiles" / "spacenet_rio.tif",
        "-m",
        "buildings-unet",
        "-o",
        tmp_path / "b.gpkg",
        "--mask-out",
        tmp_path / "m.tif",
        "--workers",
        "2",
    )
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "error: --mask-out and --prob-out are one GeoTIFF written by one process; run without a cluster for them"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg"]


def test_a_damaged_block_in_a_band_is_the_one_line_of_one_process(tmp_path):
    path = damaged_raster(tmp_path / "c.tif", 1200, 512, block=(3, 1))  # a block far down the raster
    alone = run("detect", path, "-m", "trees", "-o", tmp_path / "a.gpkg", "-q")
    split = run("detect", path, "-m", "trees", "-o", tmp_path / "b.gpkg", "-q", "--workers", "2", "--band-rows", "1")
    assert alone.exit_code == split.exit_code == 2
    assert split.stderr.strip().splitlines() == alone.stderr.strip().splitlines()
    assert "c.tif: cannot read pixels" in split.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif"]


def test_connect_makes_and_closes_a_local_cluster():
    with connect(workers=2) as client:
        assert len(client.nthreads()) == 2
        address = client.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    with pytest.raises(geovision.GeovisionError, match=f"cannot reach the Dask scheduler at {address}"):
        with connect(address, timeout="2s"):
            pass


def test_ctrl_c_cancels_the_bands_and_leaves_nothing(tmp_path):
    big = tiled_copy(tmp_path / "big.tif", SAMPLE_TREES, 14)  # 5600 px: sixteen bands of one tile row
    out = tmp_path / "o.gpkg"
    cmd = [sys.executable, "-m", "geovision.cli.main", "detect", str(big), "-m", "trees", "-o", str(out)]
    cmd += ["--workers", "2", "--band-rows", "1", "--progress", "lines"]
    default_int = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731 - as from a terminal
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=default_int, cwd=tmp_path)
    assert proc.stderr is not None
    seen = []
    while not seen or not seen[-1].startswith("progress 1/16"):  # bands are coming back: stop it now
        line = proc.stderr.readline()
        assert line, f"ended before it could be stopped: {seen}"
        seen.append(line)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1:] == ["interrupted"] and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]
