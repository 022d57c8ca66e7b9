"""Which runtime runs a model, and that ONNX Runtime and torch find the same objects.

On the CPU the default is ONNX Runtime: the package's weights are exported
once into the cache (named by their sha256) and later runs import neither
torch nor ultralytics.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from click.testing import CliRunner

import geovision
from geovision.backends import choose_runtime, load_backend
from geovision.cli.main import main
from geovision.config import sha256_file
from geovision.errors import ModelError
from geovision.registry import resolve_model
from tests.conftest import without_onnx

SAMPLES = Path(__file__).resolve().parents[1] / "sample_tiles"


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def sorted_bounds(path: Path) -> np.ndarray:
    b = gpd.read_file(path).geometry.bounds.to_numpy()
    return b[np.lexsort((b[:, 1], b[:, 0]))]


def test_auto_picks_onnx_on_the_cpu_and_torch_on_a_gpu(monkeypatch):
    cfg = resolve_model("trees")
    assert choose_runtime(cfg, "cpu") == "onnx"
    assert choose_runtime(cfg, "cuda:1") == "torch"
    assert choose_runtime(cfg, "cpu", "torch") == "torch"
    monkeypatch.setattr("geovision.backends.device.cuda_present", lambda: True)
    assert choose_runtime(cfg, None) == "torch"
    monkeypatch.setattr("geovision.backends.device.cuda_present", lambda: False)
    assert choose_runtime(cfg, "auto") == "onnx"
    with pytest.raises(ModelError, match="unknown backend"):
        choose_runtime(cfg, None, "tensorrt")


@pytest.mark.parametrize(
    ("model", "tile", "n_min"),
    [
        ("trees", "OSBS_029.tif", 30),
        ("buildings", "spacenet_rio.tif", 10),
        ("buildings-unet", "spacenet_atlanta.tif", 10),
    ],
)
def test_onnx_and_torch_find_the_same_objects(tmp_path, model, tile, n_min):
    outs = {}
    for backend in ("torch", "onnx"):
        outs[backend] = tmp_path / f"{backend}.gpkg"
        r = run_cli("detect", str(SAMPLES / tile), "-m", model, "-o", str(outs[backend]), "--backend", backend, "-q")
        assert r.exit_code == 0, r.stderr
    torch_boxes, onnx_boxes = sorted_bounds(outs["torch"]), sorted_bounds(outs["onnx"])
    assert len(torch_boxes) == len(onnx_boxes) >= n_min
    with __import__("rasterio").open(SAMPLES / tile) as ds:
        pixel = abs(ds.transform.a)
    assert np.abs(torch_boxes - onnx_boxes).max() <= pixel  # within one source pixel


def test_export_happens_once_and_is_reported(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GEOVISION_CACHE", str(cache))
    model = str(without_onnx("trees-fast", tmp_path))  # a package without its ONNX: exported on first use
    args = ["detect", str(SAMPLES / "OSBS_029.tif"), "-m", model, "--overwrite", "-o"]
    first = run_cli(*args, str(tmp_path / "a.gpkg"))
    assert first.exit_code == 0, first.stderr
    digest = sha256_file(resolve_model("trees-fast").weights)
    assert (cache / f"{digest}.onnx").is_file()
    assert "exported model 'trees-fast' to ONNX once" in first.stderr
    second = run_cli(*args, str(tmp_path / "b.gpkg"))
    assert second.exit_code == 0 and "exported" not in second.stderr
    assert len(gpd.read_file(tmp_path / "a.gpkg")) == len(gpd.read_file(tmp_path / "b.gpkg")) > 0


def test_a_damaged_cached_export_is_made_again(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GEOVISION_CACHE", str(cache))
    args = ["detect", str(SAMPLES / "OSBS_029.tif"), "-m", str(without_onnx("trees-fast", tmp_path)), "-o"]
    assert run_cli(*args, str(tmp_path / "a.gpkg")).exit_code == 0
    cached = cache / f"{sha256_file(resolve_model('trees-fast').weights)}.onnx"
    assert (cached.parent / (cached.name + ".sha256")).read_text().strip() == sha256_file(cached)
    raw = bytearray(cached.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 4096] = bytes(4096)  # weights zeroed: the graph still loads
    cached.write_bytes(bytes(raw))
    second = run_cli(*args, str(tmp_path / "b.gpkg"))
    assert second.exit_code == 0, second.stderr
    assert "does not match its recorded sha256" in second.stderr and "exported model" in second.stderr
    assert len(gpd.read_file(tmp_path / "a.gpkg")) == len(gpd.read_file(tmp_path / "b.gpkg")) > 0


def test_cpu_path_imports_neither_torch_nor_ultralytics(tmp_path):
    load_backend(resolve_model("trees"), "cpu")  # makes sure the export is in the cache
    script = (
        "import sys, geovision\n"
        f"r = geovision.detect({str(SAMPLES / 'OSBS_029.tif')!r}, 'trees', device='cpu')\n"
        "assert len(r.features) > 30, len(r.features)\n"
        "print(sorted(m for m in ('torch', 'ultralytics', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, check=True)
    assert out.stdout.strip() == "[]"


def test_int8_runs_and_keeps_most_objects(tmp_path):
    r = geovision.detect(SAMPLES / "OSBS_029.tif", "trees", device="cpu", quantize="int8")
    full = geovision.detect(SAMPLES / "OSBS_029.tif", "trees", device="cpu")
    digest = sha256_file(resolve_model("trees").weights)
    assert (Path(os.environ["GEOVISION_CACHE"]) / f"{digest}.int8.onnx").is_file()
    assert r.stats.backend == full.stats.backend == "OnnxDetector on cpu"
    assert abs(len(r.features) - len(full.features)) <= 0.2 * len(full.features)


def test_backend_errors_are_one_line(tmp_path):
    scene = SAMPLES / "OSBS_029.tif"
    r = run_cli(
        "detect", str(scene), "-m", "trees", "-o", str(tmp_path / "x.gpkg"), "--backend", "torch", "--quantize", "int8"
    )
    assert r.exit_code == 2 and "--quantize needs the onnx runtime (--backend onnx)" in r.stderr
    onnx_file = tmp_path / "trees.onnx"
    assert run_cli("export", "trees", "-o", str(onnx_file)).exit_code == 0
    r = run_cli("detect", str(scene), "-m", str(onnx_file), "-o", str(tmp_path / "y.gpkg"), "--backend", "torch")
    assert r.exit_code == 2 and "runs on the onnx backend only" in r.stderr
    assert not (tmp_path / "x.gpkg").exists() and not (tmp_path / "y.gpkg").exists()


def test_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    model = str(without_onnx("trees", tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GEOVISION_CACHE", str(blocker / "cache"))
    r = run_cli("detect", str(SAMPLES / "OSBS_029.tif"), "-m", model, "-o", str(tmp_path / "z.gpkg"))
    assert r.exit_code == 2 and "cannot create the model cache" in r.stderr and "GEOVISION_CACHE" in r.stderr
    assert not (tmp_path / "z.gpkg").exists()
    # a folder that exists but cannot be written to (as a non-root user sees a read-only one)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    monkeypatch.setenv("GEOVISION_CACHE", str(readonly))
    writable = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == readonly else writable(p, mode))
    r = run_cli("detect", str(SAMPLES / "OSBS_029.tif"), "-m", model, "-o", str(tmp_path / "z.gpkg"))
    assert r.exit_code == 2 and "is not writable" in r.stderr and "exported" not in r.stderr
    assert not list(readonly.iterdir()) and not (tmp_path / "z.gpkg").exists()


def test_gpu_batch_grows_to_fit_half_the_free_memory():
    from geovision.backends.device import fit_batch

    mib = 1 << 20
    assert fit_batch(8, 10 * mib, 4096 * mib) == 64  # room for 204 tiles: capped
    assert fit_batch(8, 100 * mib, 4096 * mib) == 16  # room for 20 tiles: whole batches of 8
    assert fit_batch(8, 1000 * mib, 4096 * mib) == 8  # never below the model's own batch
    assert fit_batch(8, 0, 4096 * mib) == 8


def test_the_users_ultralytics_settings_file_is_left_alone(tmp_path):
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "cfg")}
    make = "from ultralytics import settings; settings.update({'sync': True})"  # the user's own choice
    subprocess.run([sys.executable, "-c", make], env=env, check=True, capture_output=True)
    [settings] = (tmp_path / "cfg").rglob("settings.json")
    before = settings.read_bytes()
    assert b'"sync": true' in before
    cmd = [sys.executable, "-m", "geovision.cli.main", "detect", str(SAMPLES / "OSBS_029.tif"), "-m", "trees"]
    out = subprocess.run(
        [*cmd, "--backend", "torch", "-o", str(tmp_path / "o.gpkg"), "-q"], env=env, capture_output=True
    )
    assert out.returncode == 0, out.stderr
    assert settings.read_bytes() == before


def test_int8_quantisation_silences_only_onnxruntime(tmp_path):
    """Other loggers of the process keep logging while a model is quantised (no logging.disable)."""
    import logging
    import threading

    from geovision.backends.export import cached_onnx, quantize_int8

    source = cached_onnx(resolve_model("trees-fast")).weights
    received: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = received.append  # type: ignore[method-assign]
    mine = logging.getLogger("a-users-own")
    mine.addHandler(handler)
    done, sent = threading.Event(), [0]
    roots = list(logging.root.handlers)

    def chatter() -> None:
        while not done.is_set():
            mine.warning("still here")
            sent[0] += 1
            time.sleep(0.001)

    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        quantize_int8(source, tmp_path / "int8.onnx")
    finally:
        done.set()
        thread.join()
        mine.removeHandler(handler)
    assert (tmp_path / "int8.onnx").is_file()
    assert sent[0] > 10 and len(received) == sent[0]
    assert logging.root.handlers == roots  # no handler left behind (basicConfig would add one)


def test_one_table_names_every_backend_and_what_it_loads_and_exports():
    from geovision.backends.registry import BACKENDS, resolve

    for name, entry in BACKENDS.items():
        for task, target in entry.loaders.items():
            assert callable(resolve(target)), (name, task)
        if entry.exporter:
            assert callable(resolve(entry.exporter)), name
    cfg = resolve_model("trees")
    with pytest.raises(ModelError, match=r"unknown backend 'tflite' \(known: yolo, smp, onnx\)"):
        load_backend(replace(cfg, backend="tflite"), runtime="torch")
    with pytest.raises(ModelError, match="the 'yolo' backend runs no segment models"):
        load_backend(replace(cfg, task="segment"), runtime="torch")
