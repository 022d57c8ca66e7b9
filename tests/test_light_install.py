"""`pip install geovision` without extras: every shipped model runs; extras are named, never an ImportError.

The child process below cannot import torch, ultralytics, smp, albumentations,
matplotlib or dask (as on a machine where they were never installed) and
starts with an empty model cache, so nothing can be exported either.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_tiles"
ABSENT = ("torch", "torchvision", "ultralytics", "segmentation_models_pytorch", "albumentations", "timm",
          "matplotlib", "dask", "distributed")  # fmt: skip
CHILD = f"""
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from geovision.cli.main import main
main()
"""


def light(tmp_path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    env = {"GEOVISION_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-c", CHILD, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(("model", "tile", "floor"), [("trees", "OSBS_029.tif", 30), ("trees-fast", "OSBS_029.tif", 20),
                                                      ("buildings", "spacenet_rio.tif", 10)])  # fmt: skip
def test_every_shipped_model_runs_without_torch(tmp_path, model, tile, floor):
    out = tmp_path / "o.gpkg"
    r = light(tmp_path, "detect", SAMPLES / tile, "--model", model, "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    assert len(gpd.read_file(out)) >= floor
    assert not (tmp_path / "cache").exists()  # the package's own ONNX ran: nothing exported


def test_what_needs_an_extra_says_which_in_one_line(tmp_path):
    labels = SAMPLES / "OSBS_029.csv"
    cases = [
        (("detect", SAMPLES / "OSBS_029.tif", "--model", "trees", "--backend", "torch", "-o", tmp_path / "a.gpkg"),
         "torch"),
        (("train", "detect", "--images", SAMPLES / "OSBS_029.tif", "--labels", labels, "--classes", "tree",
          "-o", tmp_path / "t"), "torch"),
        (("export", "trees", "-o", tmp_path / "x.onnx"), "torch"),
        (("detect", SAMPLES / "OSBS_029.tif", "--model", ROOT / "configs" / "models" / "trees" / "weights.pt",
          "-o", tmp_path / "a.gpkg"), "torch"),  # a bare .pt is read by ultralytics
        (("batch", SAMPLES, "--model", "trees", "-o", tmp_path / "b", "--scheduler", "tcp://127.0.0.1:9"), "dask"),
        (("detect", SAMPLES / "OSBS_029.tif", "--model", "trees", "-o", tmp_path / "a.gpkg", "--workers", "2"), "dask"),
    ]  # fmt: skip
    for args, extra in cases:
        r = light(tmp_path, *args, "-q")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert f"pip install 'geovision[{extra}]'" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "a.gpkg").exists() and not (tmp_path / "t").exists() and not (tmp_path / "x.onnx").exists()


def test_a_packaged_onnx_that_was_altered_is_refused(tmp_path):
    import shutil

    pkg = tmp_path / "trees"
    shutil.copytree(ROOT / "configs" / "models" / "trees", pkg)
    raw = bytearray((pkg / "model.onnx").read_bytes())
    raw[-5000:-4000] = bytes(1000)
    (pkg / "model.onnx").write_bytes(bytes(raw))
    r = light(tmp_path, "detect", SAMPLES / "OSBS_029.tif", "--model", pkg / "model.yaml", "-o", tmp_path / "o.gpkg")
    assert r.returncode == 2 and "does not match the model YAML's onnx_sha256" in r.stderr, r.stderr
    assert not (tmp_path / "o.gpkg").exists()


@pytest.mark.slow
def test_a_built_wheel_installs_the_core_alone_and_runs_named_models(tmp_path):
    """The real thing: the wheel in a fresh virtual environment, core dependencies from the registry."""
    import venv

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", ROOT], check=True)
    venv.create(tmp_path / "env", with_pip=True)
    bin_dir = tmp_path / "env" / "bin"
    [wheel] = (tmp_path / "dist").glob("geovision-*.whl")
    subprocess.run([bin_dir / "pip", "install", "-q", wheel], check=True, timeout=900)
    listed = subprocess.run([bin_dir / "pip", "list"], capture_output=True, text=True, check=True).stdout.lower()
    assert "onnxruntime" in listed and "torch" not in listed and "ultralytics" not in listed
    env = {"GEOVISION_CACHE": str(tmp_path / "cache"), "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for model, tile in (("trees", "OSBS_029.tif"), ("buildings", "spacenet_rio.tif")):
        out = tmp_path / f"{model}.gpkg"
        cmd = [bin_dir / "geovision", "detect", SAMPLES / tile, "--model", model, "-o", out, "-q"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        assert len(gpd.read_file(out)) >= 10
    assert not (tmp_path / "cache").exists()


def test_the_suite_collects_on_a_core_install(tmp_path):
    """Without torch and the other extras the suite still collects: what needs them skips."""
    child = CHILD.replace("from geovision.cli.main import main\nmain()", "import pytest\nsys.exit(pytest.main())")
    cmd = [sys.executable, "-c", child, "--collect-only", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")]
    env = {"GEOVISION_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "error" not in r.stdout.splitlines()[-1] and "collected" in r.stdout.splitlines()[-1]
    assert "could not import 'torch'" in r.stdout or "skipped" in r.stdout.splitlines()[-1]
