"""Semantic segmentation with segmentation-models-pytorch (U-Net, DeepLabV3+, FPN, ...).

The model package names the architecture, encoder and activation; weights
are a state dict (saved in half precision to keep packages small). Networks
are always built with ``encoder_weights=None``: nothing is downloaded, the
package's weights are the whole model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from geovision.config import ModelConfig
from geovision.errors import ModelError, WeightsError, first_line

#: smp architectures by the names model YAML files use.
ARCHITECTURES = ("Unet", "UnetPlusPlus", "DeepLabV3Plus", "DeepLabV3", "FPN", "PSPNet", "Linknet", "MAnet", "PAN")
#: those whose decoder takes one channel count per stage (``decoder_channels``)
STAGED_DECODERS = ("Unet", "UnetPlusPlus", "MAnet")


def build_network(cfg: ModelConfig) -> Any:
    """An untrained smp network as ``cfg`` describes it (no pretrained encoder)."""
    import segmentation_models_pytorch as smp

    arch = cfg.smp.arch
    if arch not in ARCHITECTURES:
        raise ModelError(f"model '{cfg.name}': unknown architecture '{arch}'; known: {', '.join(ARCHITECTURES)}")
    kwargs: dict[str, Any] = dict(
        encoder_name=cfg.smp.encoder,
        encoder_weights=None,
        in_channels=cfg.in_channels,
        classes=network_outputs(cfg),
    )
    if cfg.smp.encoder_depth:
        kwargs["encoder_depth"] = cfg.smp.encoder_depth
    if cfg.smp.decoder_channels and arch in STAGED_DECODERS:
        kwargs["decoder_channels"] = cfg.smp.decoder_channels
    stride = cfg.smp.output_stride
    if stride != 1:
        if arch != "FPN" or stride not in (2, 4) or cfg.task != "detect":
            raise ModelError(f"model '{cfg.name}': output_stride {stride} needs a centre detector on FPN (2 or 4)")
        kwargs["upsampling"] = 4 // stride  # FPN's decoder works at a quarter of the input
    try:
        net = getattr(smp, arch)(**kwargs)
    except (KeyError, ValueError) as e:
        raise ModelError(f"model '{cfg.name}': cannot build {arch} with encoder {kwargs['encoder_name']} ({e})") from e
    _drop_unused_stages(net, kwargs.get("encoder_depth", 5))
    return net


def _drop_unused_stages(net: Any, depth: int) -> None:
    """smp keeps a ResNet's deeper stages even when ``encoder_depth`` leaves them unused;
    dropping them keeps the package small (resnet18 at depth 4: 12 M -> 4 M parameters)."""
    import torch

    for stage in range(depth, 5):  # depth d uses layer1 .. layer(d-1)
        if hasattr(net.encoder, f"layer{stage}"):
            setattr(net.encoder, f"layer{stage}", torch.nn.Identity())


def activation(cfg: ModelConfig) -> str:
    """'sigmoid' (one output per class) or 'softmax' (background plus one per class)."""
    act = cfg.smp.activation or ("sigmoid" if len(cfg.classes) == 1 and not has_boundary(cfg) else "softmax")
    if act == "sigmoid" and has_boundary(cfg):
        raise ModelError(f"model '{cfg.name}': a boundary class needs activation softmax")
    return str(act)


def n_outputs(cfg: ModelConfig) -> int:
    """Probabilities per pixel handed on: background first, then each class."""
    return len(cfg.classes) + 1


def has_boundary(cfg: ModelConfig) -> bool:
    """Whether the network also predicts object outlines as a last class.

    Touching buildings are one region in a plain mask; trained to mark a thin
    band along every outline, the network separates them. The band counts as
    background downstream, so each object comes out as its own, slightly
    shrunk region, grown back when it is vectorised (``vectorize.grow_m``).
    """
    return cfg.smp.boundary


def network_outputs(cfg: ModelConfig) -> int:
    """Channels the network itself produces (the boundary class included; a centre detector's sizes)."""
    if cfg.task == "detect":  # a centre detector (backends.centres): a heatmap per class, log width, log height
        return len(cfg.classes) + 2
    if activation(cfg) == "sigmoid":
        return len(cfg.classes)
    return n_outputs(cfg) + int(has_boundary(cfg))


def input_stats(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (of 0-1 pixel values) the network was trained with."""
    mean = np.asarray(cfg.smp.mean or [0.5] * cfg.in_channels, np.float32)
    std = np.asarray(cfg.smp.std or [0.25] * cfg.in_channels, np.float32)
    if mean.shape != (cfg.in_channels,) or std.shape != (cfg.in_channels,):
        raise ModelError(f"model '{cfg.name}': mean and std need {cfg.in_channels} values each")
    return mean, std


def load_network(cfg: ModelConfig) -> Any:
    """``cfg``'s network with the package's weights (a state dict, loaded with ``weights_only``)."""
    import torch

    net = build_network(cfg)
    try:
        state = torch.load(cfg.weights, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise WeightsError(f"{cfg.weights.name}: not loadable weights for this model ({first_line(e)})") from e
    return net


class SmpNetwork:
    """A package's smp network on its device, in half precision on CUDA: what the segmenter and the
    centre detector (:mod:`.centres`) run."""

    def __init__(self, cfg: ModelConfig, device: str | None = None, threads: int | None = None) -> None:
        import torch

        from geovision.backends.device import pick_device, torch_threads

        self.cfg = cfg
        self.device = pick_device(device)
        torch_threads(self.device, threads)
        self.torch = torch
        net = load_network(cfg)
        self.half = self.device.startswith("cuda")
        self.net = (net.half() if self.half else net).eval().to(self.device)


class SmpSegmenter(SmpNetwork):
    """Batched smp inference on uint8 tiles: (n, outputs, size, size) probabilities."""

    def __init__(self, cfg: ModelConfig, device: str | None = None, threads: int | None = None) -> None:
        super().__init__(cfg, device, threads)
        self.module = self.as_module()

    def as_module(self) -> Any:
        """The whole step as one torch module: uint8 NHWC tiles in, probabilities out
        (what ``geovision export`` writes to ONNX)."""
        return _probabilities_module()(
            self.net, *input_stats(self.cfg), activation(self.cfg) == "softmax", self.half, has_boundary(self.cfg)
        ).to(self.device)

    def fit_batch(self, base: int) -> int:
        """On CUDA, the batch size that fits half of the free GPU memory (measured on blank tiles)."""
        from geovision.backends.device import cuda_batch_size

        return cuda_batch_size(self.segment, self.cfg, base, self.device)

    def segment(self, images: Sequence[np.ndarray]) -> np.ndarray:
        torch = self.torch
        batch = torch.from_numpy(np.stack(images))
        if self.device.startswith("cuda"):
            batch = batch.pin_memory()
        with torch.inference_mode():
            return self.module(batch.to(self.device, non_blocking=True)).cpu().numpy()


@functools.cache
def network_module() -> Any:
    """The base of the graphs ``geovision export`` writes for smp networks: uint8 NHWC tiles in,
    normalised with the training statistics, the network's float logits out. Defined on first use
    so that importing this file does not import torch."""
    import torch

    class OnTiles(torch.nn.Module):
        def __init__(self, net: Any, mean: np.ndarray, std: np.ndarray, half: bool) -> None:
            super().__init__()
            self.net, self.use_half = net, half
            self.scale: torch.Tensor
            self.shift: torch.Tensor
            self.register_buffer("scale", torch.from_numpy(1 / (255 * std)).view(1, -1, 1, 1))
            self.register_buffer("shift", torch.from_numpy(mean / std).view(1, -1, 1, 1))

        def logits(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
            return self.net(x.half() if self.use_half else x).float()

    return OnTiles


@functools.cache
def _probabilities_module() -> Any:
    """The module class, defined on first use so that importing this file does not import torch."""
    import torch

    class Probabilities(network_module()):  # type: ignore[misc]
        """Normalise uint8 NHWC tiles, run the network, turn logits into probabilities (background first)."""

        def __init__(
            self, net: Any, mean: np.ndarray, std: np.ndarray, softmax: bool, half: bool, boundary: bool = False
        ) -> None:
            super().__init__(net, mean, std, half)
            self.use_softmax, self.boundary = softmax, boundary

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            logits = self.logits(images)
            if self.use_softmax:
                probs = logits.softmax(dim=1)
                if self.boundary:  # the outline band is background to everything downstream
                    return torch.cat([probs[:, :1] + probs[:, -1:], probs[:, 1:-1]], dim=1)
                return probs
            fg = logits.sigmoid()
            # one-class sigmoid: background is 1 - p; several: background is 1 - max
            bg = 1 - fg.max(dim=1, keepdim=True).values
            return torch.cat([bg, fg], dim=1)

    return Probabilities
