"""Boxes from label images and detection scores (the second paper's plaque-recognition IoU / F1), against
scipy.ndimage, MONAI's own mask-to-box conversion and hand-computed values."""

import numpy as np
import pytest
import torch
from monai.apps.detection.transforms.box_ops import convert_mask_to_box
from scipy import ndimage
from skimage.draw import ellipse

from monai_denoiseg.metrics import DetectionMetric, match_boxes
from monai_denoiseg.transforms import LabelToBoxes, LabelToBoxesd


def blobs(shape, n, rng):
    """A binary image of ``n`` random, possibly touching ellipses (2-D), or ellipsoid-ish stacks (3-D)."""
    mask = np.zeros(shape, dtype=bool)
    plane = shape[-2:]
    for _ in range(n):
        r, c = rng.integers(0, plane[0]), rng.integers(0, plane[1])
        rr, cc = ellipse(r, c, rng.integers(2, 9), rng.integers(2, 9), shape=plane, rotation=rng.uniform(0, np.pi))
        if len(shape) == 2:
            mask[rr, cc] = True
        else:
            z0 = rng.integers(0, shape[0] - 2)
            mask[z0:z0 + rng.integers(1, 5), rr, cc] = True
    return mask


def scipy_boxes(ids: np.ndarray) -> np.ndarray:
    """[starts..., stops...] of every object of an id image, by scipy's find_objects."""
    rows = [[s.start for s in sl] + [s.stop for s in sl] for sl in ndimage.find_objects(ids) if sl is not None]
    return np.asarray(sorted(rows), dtype=np.float32).reshape(-1, 2 * ids.ndim)


@pytest.mark.parametrize("shape", [(96, 80), (12, 64, 48)])
def test_boxes_of_generated_blobs_equal_scipy(shape):
    rng = np.random.default_rng(len(shape))
    mask = blobs(shape, 25, rng)
    full = ndimage.generate_binary_structure(len(shape), len(shape))  # 8 / 26 neighbours, as LabelToBoxes' default
    components, n = ndimage.label(mask, structure=full)
    assert n > 5
    boxes, classes = LabelToBoxes(spatial_dims=len(shape), binary=True)(mask[None].astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(sorted(boxes.tolist()), dtype=np.float32), scipy_boxes(components))
    assert boxes.dtype == np.float32 and classes.dtype == np.int64 and (classes == 0).all()
    # instance ids: every id one object, even where two touch (which the binary mode would merge)
    ids = np.zeros(shape, dtype=np.int64)
    for i in range(1, 12):
        ids[blobs(shape, 1, rng)] = i
    boxes, _ = LabelToBoxes(spatial_dims=len(shape))(torch.as_tensor(ids[None]))
    assert isinstance(boxes, torch.Tensor) and boxes.dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(sorted(boxes.tolist()), dtype=np.float32), scipy_boxes(ids))


def test_boxes_follow_monais_mask_to_box_convention():
    label = np.zeros((1, 20, 30), dtype=np.int64)
    label[0, 3, 7] = 5  # one pixel: spans [3, 4) x [7, 8)
    label[0, 10:15, 2:29] = 2
    ours, _ = LabelToBoxes()(label)
    per_object = np.stack([np.where(label[0] == i, 1, -1) for i in (2, 5)])  # one channel per box, MONAI's input
    monai_boxes, _ = convert_mask_to_box(per_object, bg_label=-1)
    np.testing.assert_array_equal(ours, np.asarray(monai_boxes, dtype=np.float32))
    np.testing.assert_array_equal(ours[1], [3, 7, 4, 8])


def test_min_size_connectivity_class_and_the_dict_twin():
    mask = np.zeros((1, 10, 10), dtype=np.uint8)
    mask[0, 1, 1] = mask[0, 2, 2] = 1  # diagonal neighbours: one object at full connectivity, two at 1
    mask[0, 5:8, 5:8] = 1
    assert len(LabelToBoxes(binary=True)(mask)[0]) == 2
    assert len(LabelToBoxes(binary=True, connectivity=1)(mask)[0]) == 3
    assert len(LabelToBoxes(binary=True, connectivity=1, min_size=2)(mask)[0]) == 1
    d = LabelToBoxesd("mask", binary=True, class_label=1)({"mask": mask, "image": np.zeros((1, 10, 10))})
    np.testing.assert_array_equal(d["boxes"], [[1, 1, 3, 3], [5, 5, 8, 8]])
    np.testing.assert_array_equal(d["labels"], [1, 1])
    empty, classes = LabelToBoxes()(np.zeros((1, 4, 4), dtype=np.int64))
    assert empty.shape == (0, 4) and classes.shape == (0,)


def test_bad_label_images_are_refused():
    with pytest.raises(ValueError, match="label: expected a 2-D"):
        LabelToBoxes()(np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="one channel"):
        LabelToBoxes()(np.zeros((2, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="integer instance ids"):
        LabelToBoxes()(np.full((1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="non-negative"):
        LabelToBoxes()(-np.ones((1, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="finite"):
        LabelToBoxes(binary=True)(np.full((1, 4, 4), np.nan))
    with pytest.raises(ValueError, match="spatial_dims"):
        LabelToBoxes(spatial_dims=1)


GT = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])


def scores(pred, gt, **kw):
    m = DetectionMetric(**kw)
    m([torch.as_tensor(p, dtype=torch.float32).reshape(-1, 4) for p in pred], [torch.as_tensor(g) for g in gt])
    return m.aggregate()


def test_detection_scores_equal_hand_computed_values():
    perfect = scores([GT], [GT])
    assert perfect == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0}
    # shifted by 2 of 10: IoU 80 / 120 = 2/3 >= 0.5, recognised; by 5: 50 / 150 = 1/3, not
    near = scores([GT + torch.tensor([2.0, 0, 2, 0])], [GT])
    assert near["f1"] == 1.0 and near["iou"] == pytest.approx(2 / 3)
    far = scores([GT + torch.tensor([5.0, 0, 5, 0])], [GT])
    assert far["f1"] == 0.0 and far["precision"] == 0.0 and far["recall"] == 0.0 and np.isnan(far["iou"])
    assert scores([GT + torch.tensor([5.0, 0, 5, 0])], [GT], iou_threshold=0.3)["iou"] == pytest.approx(1 / 3)
    missing = scores([GT[:1]], [GT])  # one of two found: P 1, R 1/2, F1 2/3
    assert (missing["precision"], missing["recall"], missing["f1"]) == (1.0, 0.5, pytest.approx(2 / 3))
    twice = scores([torch.cat([GT[:1], GT[:1], GT[1:]])], [GT])  # a duplicate is a false positive: P 2/3, R 1
    assert (twice["precision"], twice["recall"], twice["f1"]) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))
    # per image then averaged (the paper's tables), or from the summed counts
    two = [GT, torch.zeros(0, 4)], [GT, GT[:1]]
    per_image = scores(*two)  # image 2: nothing found, P undefined (left out), R 0, F1 0
    assert (per_image["precision"], per_image["recall"], per_image["f1"]) == (1.0, 0.5, 0.5)
    total = scores(*two, reduction="total")  # tp 2, fp 0, fn 1
    assert (total["precision"], total["recall"], total["f1"]) == (1.0, pytest.approx(2 / 3), pytest.approx(0.8))


def test_matching_is_greedy_one_to_one_in_the_given_order():
    a = torch.tensor([[0.0, 0, 10, 10]])
    pred = torch.tensor([[0.0, 0, 10, 12], [0.0, 0, 10, 10]])  # the first (higher score) takes the box
    p, g, iou = match_boxes(pred, a)
    assert p.tolist() == [0] and g.tolist() == [0] and iou[0] == pytest.approx(100 / 120)
    with pytest.raises(ValueError, match="boxes"):
        DetectionMetric()([torch.zeros(2, 3)], [a])
    with pytest.raises(ValueError, match="lists"):
        DetectionMetric()(a, a)
