"""benchmarks/eval_models.py, run as a user runs it: held-out scores must come from models that never saw the site."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.test_training import scene

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_models.py"


def test_a_second_stage_is_not_scored_from_weights_that_saw_the_held_out_site(tmp_path):
    img, labels = scene(tmp_path)
    # a first-stage package that trained on both sites (its weights file is never opened: the check comes first)
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    (stage1 / "weights.pt").write_bytes(b"")
    (stage1 / "model.yaml").write_text(yaml.safe_dump({"training": {"data": {"sites": ["east", "west"]}}}))
    datasets = [{"site": s, "images": img.name, "labels": labels.name} for s in ("east", "west")]
    cfg = tmp_path / "stage2.yaml"
    settings = {"classes": ["hut"], "class_field": "kind", "resolution": 0.1, "tile_size": 64, "epochs": 1}
    config = {"task": "detect", "datasets": datasets, **settings, "weights": "stage1/weights.pt", "output": "tuned"}
    cfg.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), str(cfg), "--work", str(work), "--sites", "east"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0
    assert "trained on east" in r.stderr and "--start" in r.stderr, r.stderr
    assert not (work / "east" / "model").exists(), "a fold model was trained from weights that saw its site"
