import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from geovision.backends.yolo import batched_nms_torchvision
from geovision.geometry import batched_nms


def random_boxes(seed: int, n: int):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    boxes = np.c_[xy, xy + wh]
    scores = rng.permutation(n) / n + 0.001  # distinct scores: no ties to break differently
    classes = rng.integers(0, 3, n)
    return boxes, scores, classes


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 200), st.sampled_from([0.3, 0.5, 0.7]))
def test_numpy_nms_keeps_what_torchvision_keeps(seed, n, iou):
    boxes, scores, classes = random_boxes(seed, n)
    np.testing.assert_array_equal(
        batched_nms(boxes, scores, classes, iou), batched_nms_torchvision(boxes, scores, classes, iou)
    )


def test_sets_past_the_matrix_size_go_box_by_box_and_keep_the_same(monkeypatch):
    import geovision.geometry

    boxes, scores, classes = random_boxes(7, 600)
    whole = batched_nms(boxes, scores, classes, 0.5)
    monkeypatch.setattr(geovision.geometry, "MATRIX_MAX", 100)  # 600 boxes: the bounded-memory path
    np.testing.assert_array_equal(batched_nms(boxes, scores, classes, 0.5), whole)
    np.testing.assert_array_equal(whole, batched_nms_torchvision(boxes, scores, classes, 0.5))


def test_hand_case():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 0])
    # box 1 overlaps box 0 (IoU 9/11) and goes; box 2 is another class and stays
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]


def test_the_onnx_path_uses_numpy_even_with_torch_loaded(monkeypatch):
    """Which NMS runs is the backend's choice, not a consequence of torch happening to be imported."""
    import torch  # noqa: F401 - loaded, as in a notebook that used torch before
    import torchvision.ops

    import geovision
    from tests.conftest import SAMPLE_TREES

    def refuse(*args, **kwargs):
        raise AssertionError("torchvision NMS called on the ONNX path")

    monkeypatch.setattr(torchvision.ops, "batched_nms", refuse)
    result = geovision.detect(SAMPLE_TREES, "trees", device="cpu")
    assert result.stats.backend.startswith("OnnxDetector") and len(result.features) > 20
