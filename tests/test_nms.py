import numpy as np
import torch  # noqa: F401  - so batched_nms takes the torchvision path
from hypothesis import given, settings
from hypothesis import strategies as st

from geovision.nms import batched_nms, nms_numpy


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
    np.testing.assert_array_equal(nms_numpy(boxes, scores, classes, iou), batched_nms(boxes, scores, classes, iou))


def test_hand_case():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 0])
    # box 1 overlaps box 0 (IoU 9/11) and goes; box 2 is another class and stays
    assert nms_numpy(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]
