"""The model registry: names, YAML files, weights files, hashes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geovision.errors import ModelError, WeightsError
from geovision.models import list_models, load_config, resolve_model, sha256_file, verify_weights


def write_model(folder: Path, name: str = "cars", **over) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "w.pt").write_bytes(b"weights")
    cfg = {
        "task": "detect",
        "backend": "yolo",
        "weights": "w.pt",
        "classes": ["car", "truck"],
        "tile_size": 512,
        "overlap": 48,
        "resolution": 0.3,
        "sha256": sha256_file(folder / "w.pt"),
    }
    cfg.update(over)
    p = folder / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_yaml_fields_and_relative_weights(tmp_path):
    cfg = load_config(write_model(tmp_path / "m"))
    assert cfg.name == "cars" and cfg.classes == ("car", "truck")
    assert cfg.weights == (tmp_path / "m" / "w.pt").resolve()
    assert (cfg.tile_size, cfg.overlap, cfg.resolution_m) == (512, 48, 0.3)
    verify_weights(cfg)


def test_named_models_come_from_the_search_path(tmp_path, monkeypatch):
    write_model(tmp_path / "mine", "cars")
    monkeypatch.setenv("GEOVISION_MODELS", str(tmp_path / "mine"))
    assert resolve_model("cars").classes == ("car", "truck")
    names = [m.name for m in list_models()]
    assert "cars" in names and "trees" in names


def test_model_packages_are_named_by_their_folder(tmp_path, monkeypatch):
    """What ``geovision train`` writes (NAME/model.yaml + weights) is a named model as it stands."""
    package = tmp_path / "mine" / "my-trees"
    write_model(package, "model", classes=["tree"])
    write_model(tmp_path / "mine" / ".my-trees.tmp123", "model")  # an unfinished training run
    monkeypatch.setenv("GEOVISION_MODELS", str(tmp_path / "mine"))
    cfg = resolve_model("my-trees")
    assert cfg.name == "my-trees" and cfg.classes == ("tree",)
    assert cfg.weights == (package / "w.pt").resolve()
    assert resolve_model(package).name == "my-trees"
    names = [m.name for m in list_models()]
    assert "my-trees" in names and not any(n.startswith(".") for n in names)
    assert {"trees", "trees-fast", "buildings"} <= set(names)


def test_unknown_name_lists_known_models():
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*trees"):
        resolve_model("nope")


def test_hash_mismatch_is_refused(tmp_path):
    cfg = load_config(write_model(tmp_path, sha256="0" * 64))
    with pytest.raises(WeightsError, match="sha256"):
        verify_weights(cfg)


@pytest.mark.parametrize(
    "over, msg",
    [({"task": "classify"}, "task must be"), ({"overlap": 600}, "overlap"), ({"tile_size": "big"}, "invalid")],
)
def test_invalid_yaml_is_refused(tmp_path, over, msg):
    with pytest.raises(ModelError, match=msg):
        load_config(write_model(tmp_path, **over))


def test_missing_keys_and_missing_files(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("task: detect\n")
    with pytest.raises(ModelError, match="lacks"):
        load_config(p)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(tmp_path / "none.yaml")
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_model(tmp_path / "none.pt")


def test_bare_yolo_weights_describe_themselves():
    trees = resolve_model("trees")
    cfg = resolve_model(trees.weights)
    assert cfg.classes == ("tree",) and cfg.tile_size == trees.tile_size and cfg.resolution_m is None


def test_user_errors_live_in_one_module_and_an_empty_message_is_still_one_line():
    import geovision.device
    import geovision.errors as errors
    import geovision.evaluate
    import geovision.labels
    import geovision.training

    kinds = [errors.DeviceError, errors.LabelError, errors.TrainingError, errors.EvaluationError, errors.WeightsError]
    assert all(issubclass(k, errors.GeovisionError) for k in kinds)
    assert geovision.training.TrainingError is errors.TrainingError  # the modules use these, not their own
    assert geovision.evaluate.EvaluationError is errors.EvaluationError
    assert geovision.labels.LabelError is errors.LabelError and geovision.device.DeviceError is errors.DeviceError
    assert errors.first_line(RuntimeError()) == "RuntimeError"  # was IndexError: a bug instead of one line
    assert errors.first_line(OSError("  first\nsecond")) == "first"
