"""Loading a model never runs code from it unless the user says they trust the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from geovision.cli.main import main
from geovision.config import sha256_file
from geovision.registry import resolve_model

torch = pytest.importorskip("torch")  # every test here needs it

ROOT = Path(__file__).parent.parent
TILE = ROOT / "sample_tiles" / "OSBS_029.tif"
TREES = ROOT / "configs" / "models" / "trees" / "weights.pt"


class Payload:
    """What a hostile checkpoint carries: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker), "train_args": {}}, path)
    return path, marker


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(r, marker: Path) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "would call posix.system" in lines[0] and "--trust-model" in lines[0], r.stderr
    assert not marker.exists(), "the payload ran"


def test_a_hostile_checkpoint_is_refused_everywhere_without_running(evil, tmp_path):
    path, marker = evil
    refused(invoke("detect", TILE, "--model", path, "-o", tmp_path / "o.gpkg", "-q"), marker)
    refused(invoke("detect", TILE, "--model", path, "-o", tmp_path / "o.gpkg", "--backend", "torch", "-q"), marker)
    refused(invoke("export", path, "-o", tmp_path / "e.onnx", "-q"), marker)
    # a model YAML that names the file with its correct sha256 proves which file it is, not that it is safe
    (tmp_path / "m.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "detect",
                "backend": "yolo",
                "weights": "evil.pt",
                "sha256": sha256_file(path),
                "classes": ["tree"],
                "tile_size": 320,
                "overlap": 32,
                "resolution": 0.1,
            }
        )  # fmt: skip
    )
    refused(invoke("detect", TILE, "--model", tmp_path / "m.yaml", "--backend", "torch", "-q"), marker)
    (tmp_path / "in").mkdir()
    os.symlink(TILE, tmp_path / "in" / "a.tif")
    refused(invoke("batch", tmp_path / "in", "--model", path, "-o", tmp_path / "b", "-q"), marker)
    refused(invoke("train", "detect", "--images", TILE, "--labels", ROOT / "sample_tiles" / "OSBS_029.csv",
                   "--classes", "tree", "--weights", path, "-o", tmp_path / "t", "-q"), marker)  # fmt: skip
    assert not (tmp_path / "o.gpkg").exists() and not (tmp_path / "e.onnx").exists()
    assert not (tmp_path / "t").exists() and not (tmp_path / "b").exists()


def test_trust_model_is_the_explicit_way_past_the_check(evil, tmp_path):
    path, marker = evil
    r = invoke("detect", TILE, "--model", path, "-o", tmp_path / "o.gpkg", "--trust-model", "-q")
    assert marker.exists()  # the user vouched for it: ultralytics' own loader ran it
    assert r.exit_code == 2 and "not a loadable YOLO weights file" in r.stderr


def test_real_ultralytics_checkpoints_load_without_trust():
    cfg = resolve_model(TREES)
    assert cfg.classes == ("tree",) and cfg.tile_size > 0 and not cfg.trusted


def test_a_corrupt_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(TREES.read_bytes()[:50_000])
    r = invoke("detect", TILE, "--model", bad, "-o", tmp_path / "o.gpkg", "-q")
    assert r.exit_code == 2 and "bad.pt: not a loadable YOLO weights file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_model_name_is_never_a_path(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    outside = tmp_path / "outside.yaml"
    outside.write_text("task: detect\n")
    monkeypatch.setenv("GEOVISION_MODELS", str(models))
    for name in ("../outside", str(tmp_path / "outside")):
        r = invoke("detect", TILE, "--model", name, "-o", tmp_path / "o.gpkg", "-q")
        assert r.exit_code == 2 and "unknown model" in r.stderr, r.stderr
