"""Box detection with a segmentation network: a heatmap of object centres, and each object's size.

The design of CenterNet (Zhou et al., "Objects as Points", 2019) on a
segmentation-models-pytorch encoder-decoder, so that a detector can start
from an ImageNet encoder (:mod:`geovision.training.pretrained`) as the
segmenters do. Per pixel the network gives one logit per class (is an
object centred here?) and the log of the object's width and height. Peaks
of the heatmap (3 x 3 local maxima) are objects. The graph hands on every
pixel as a YOLO head does, (4 + classes, pixels) of centre x, centre y,
width, height and class scores (zero off the peaks), so that decoding and
duplicate removal are :mod:`.base`'s, on torch and in ONNX alike.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from geovision.backends.base import Detections, decode
from geovision.backends.smp import SmpNetwork, input_stats, network_module
from geovision.config import ModelConfig

#: sizes are learned as log(size / SIZE_SCALE) pixels, so that a typical object is near 0
SIZE_SCALE = 32.0


class CentreDetector(SmpNetwork):
    """Batched centre-heatmap detection on torch (the ``smp`` backend with task ``detect``)."""

    def __init__(self, cfg: ModelConfig, device: str | None = None, threads: int | None = None) -> None:
        super().__init__(cfg, device, threads)
        stats = input_stats(cfg)
        self.module = boxes_module()(
            self.net, *stats, len(cfg.classes), cfg.tile_size, self.half, cfg.smp.output_stride
        ).to(self.device)

    def fit_batch(self, base: int) -> int:
        """On CUDA, the batch size that fits half of the free GPU memory (measured on blank tiles)."""
        from geovision.backends.device import cuda_batch_size

        return cuda_batch_size(self.detect, self.cfg, base, self.device)

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, iou: float | None = None
    ) -> list[Detections]:
        if not images:
            return []
        torch = self.torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.stack(images)).to(self.device)).cpu().numpy()
        conf = self.cfg.confidence if confidence is None else confidence
        iou = self.cfg.iou if iou is None else iou
        return [decode(o, conf, iou, self.cfg.tile_size) for o in out]


@functools.cache
def boxes_module() -> Any:
    """The module class, defined on first use so that importing this file does not import torch."""
    import torch

    class CentreBoxes(network_module()):  # type: ignore[misc]
        """uint8 NHWC tiles in; (n, 4 + classes, pixels) of cx, cy, w, h and peak scores out. With an
        output ``stride``, each heatmap pixel stands for ``stride`` x ``stride`` input pixels."""

        def __init__(
            self,
            net: Any,
            mean: np.ndarray,
            std: np.ndarray,
            n_classes: int,
            size: int,
            half: bool = False,
            stride: int = 1,
        ) -> None:
            super().__init__(net, mean, std, half)
            self.n_classes = n_classes
            self.grid: torch.Tensor
            centres = (torch.arange(size // stride, dtype=torch.float32) + 0.5) * stride
            ys, xs = torch.meshgrid(centres, centres, indexing="ij")
            self.register_buffer("grid", torch.stack([xs, ys])[None])  # (1, 2, size / stride, size / stride)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            out = self.logits(images)
            heat = out[:, : self.n_classes].sigmoid()
            pool = torch.nn.functional
            top = pool.max_pool2d(heat, 3, stride=1, padding=1) == heat
            rises = heat > pool.avg_pool2d(heat, 3, stride=1, padding=1, count_include_pad=False)  # not a plateau
            peaks = heat * (top & rises).float()
            size = out[:, self.n_classes : self.n_classes + 2].clamp(-8, 8).exp() * SIZE_SCALE
            grid = self.grid.expand(out.shape[0], -1, -1, -1)
            return torch.cat([grid, size, peaks], dim=1).flatten(2)

    return CentreBoxes
