"""The model registry: names, YAML files, weights files, hashes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from geovision.config import load_config, sha256_file, verify_weights
from geovision.errors import ModelError, WeightsError
from geovision.registry import list_models, resolve_model


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
    import geovision.backends.device
    import geovision.errors as errors
    import geovision.evaluate
    import geovision.labels
    import geovision.training.run

    kinds = [errors.DeviceError, errors.LabelError, errors.TrainingError, errors.EvaluationError, errors.WeightsError]
    assert all(issubclass(k, errors.GeovisionError) for k in kinds)
    assert geovision.training.run.TrainingError is errors.TrainingError  # the modules use these, not their own
    assert sys.modules["geovision.evaluate"].EvaluationError is errors.EvaluationError
    assert geovision.labels.LabelError is errors.LabelError
    assert geovision.backends.device.DeviceError is errors.DeviceError
    assert errors.first_line(RuntimeError()) == "RuntimeError"  # was IndexError: a bug instead of one line
    assert errors.first_line(OSError("  first\nsecond")) == "first"


def test_a_misspelt_key_is_refused_in_one_line_naming_it(tmp_path):
    with pytest.raises(ModelError, match="unknown model YAML key.*confidance") as e:
        load_config(write_model(tmp_path / "m", confidance=0.4))
    assert "\n" not in str(e.value)
    seg = {"task": "segment", "backend": "smp", "vectorize": {"min_area_m2": 4, "simplfy_m": 0.3}}
    with pytest.raises(ModelError, match="unknown vectorize setting.*simplfy_m"):
        load_config(write_model(tmp_path / "s", **seg))
    with pytest.raises(ModelError, match="activation must be sigmoid or softmax"):
        load_config(write_model(tmp_path / "a", task="segment", backend="smp", activation="relu"))


def test_backend_settings_are_typed_and_survive_a_round_trip():
    from geovision.config import PackagedOnnx, SmpOptions, VectorizeOptions, config_from_dict, config_to_dict

    cfg = resolve_model("buildings-unet")
    assert cfg.smp == SmpOptions(
        arch="Unet",
        encoder="resnet18",
        encoder_depth=4,
        decoder_channels=(128, 64, 32, 16),
        activation="softmax",
        boundary=True,
        mean=cfg.smp.mean,
        std=cfg.smp.std,
    )
    assert len(cfg.smp.mean or ()) == 3 and all(isinstance(m, float) for m in cfg.smp.mean or ())
    assert cfg.vectorize == VectorizeOptions(
        simplify_m=0.3, min_area_m2=6.0, fill_holes=True, grow_m=0.3, regularize=True
    )
    assert isinstance(cfg.packaged_onnx, PackagedOnnx) and len(cfg.packaged_onnx.sha256) == 64
    assert {"training", "metrics"} <= set(cfg.record)  # records kept as written
    assert cfg.source is not None
    again = config_from_dict(config_to_dict(cfg), cfg.source)
    assert again == cfg
    trees = resolve_model("trees")
    assert "arch" not in config_to_dict(trees) and "vectorize" not in config_to_dict(trees)  # detectors: none
