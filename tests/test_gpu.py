"""The CUDA path: same objects as on the CPU. Skipped where there is no GPU."""

from __future__ import annotations

import numpy as np
import pytest

import geovision
from tests.conftest import SAMPLE_TREES

pytestmark = pytest.mark.gpu


def test_auto_device_picks_cuda():
    from geovision.backends.device import pick_device

    assert pick_device(None) == "cuda"


def test_yolo_on_cuda_matches_cpu():
    cpu = geovision.detect(SAMPLE_TREES, "trees", device="cpu", confidence=0.1)
    gpu = geovision.detect(SAMPLE_TREES, "trees", device="cuda", confidence=0.1)
    # fp16 on the GPU: the same objects, boxes within a pixel (0.1 m)
    assert abs(len(gpu.features) - len(cpu.features)) <= max(1, len(cpu.features) // 20)
    a = np.array([g.centroid.coords[0] for g in cpu.features.geometry])
    b = np.array([g.centroid.coords[0] for g in gpu.features.geometry])
    # every CPU box has a GPU box centred within a pixel, bar the few that fp16 puts across the threshold
    nearest = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    assert (nearest < 0.1).mean() >= 0.95, np.sort(nearest)[-5:]


def test_unet_segmenter_on_cuda_matches_cpu():
    from tests.conftest import ROOT

    tile = ROOT / "sample_tiles" / "spacenet_atlanta.tif"
    cpu = geovision.detect(tile, "buildings-unet", device="cpu")
    gpu = geovision.detect(tile, "buildings-unet", device="cuda")
    assert cpu.features.union_all().symmetric_difference(gpu.features.union_all()).area < 0.02 * max(
        cpu.features.area.sum(), 1
    )


def test_gpu_run_uses_torch_with_a_batch_fitted_to_memory():
    r = geovision.detect(SAMPLE_TREES, "trees")
    assert r.stats.backend == "YoloDetector on cuda"
    assert r.model.batch_size >= 8 and r.model.batch_size % 8 == 0
    fixed = geovision.detect(SAMPLE_TREES, "trees", batch_size=4)
    assert fixed.model.batch_size == 4 and len(fixed.features) == len(r.features)
