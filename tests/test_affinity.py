"""LabelToAffinity(d): affinity targets checked against a plain pixel loop, bioimage-cpp and hand computations."""

import bioimage_cpp as bic
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlipd

from monai_denoiseg.transforms.affinity import (
    DEFAULT_OFFSETS_3D,
    PAPER_OFFSETS_2D,
    LabelToAffinity,
    LabelToAffinityD,
    LabelToAffinityd,
)

CASTS = {"numpy": np.asarray, "torch": torch.as_tensor, "metatensor": MetaTensor}


def loop_affinities(label, offsets, background=None, ignore=None):
    """Reference: nested loops over offsets and pixels."""
    aff = np.zeros((len(offsets), *label.shape), np.float32)
    mask = np.zeros_like(aff)
    for c, off in enumerate(offsets):
        for p in np.ndindex(*label.shape):
            q = tuple(pi + oi for pi, oi in zip(p, off))
            if not all(0 <= qi < n for qi, n in zip(q, label.shape)):
                continue
            u, v = label[p], label[q]
            if ignore is not None and (u == ignore or v == ignore):
                continue
            mask[(c, *p)] = 1
            aff[(c, *p)] = float(u == v and (background is None or u != background))
    return aff, mask


def _as_numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


OFFSETS_2D = [(-1, 0), (0, -1), (2, 1), (-2, 3), (1, -1), (0, 4), (-3, -2), (0, 12)]  # last leaves the 9x11 image
OFFSETS_3D = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (1, 2, -1), (0, -2, 3), (-2, 1, 1), (2, 0, 0), (-5, 0, 0)]


@pytest.mark.parametrize("cast", CASTS.values(), ids=CASTS.keys())
@pytest.mark.parametrize("shape,fixed", [((9, 11), OFFSETS_2D), ((4, 6, 7), OFFSETS_3D)], ids=["2d", "3d"])
@pytest.mark.parametrize("background,ignore", [(None, None), (0, None), (None, 0), (0, 2)])
def test_matches_pixel_loop(rng, cast, shape, fixed, background, ignore):
    label = rng.integers(0, 4, shape)  # few ids: many equal pairs
    nd = len(shape)
    offsets = fixed + [tuple(o) for o in rng.integers(-3, 4, (4, nd))]
    aff, weight, mask = LabelToAffinity(offsets, background, ignore).compute(cast(label[None]))
    assert isinstance(aff, np.ndarray if cast is np.asarray else torch.Tensor)
    assert aff.dtype in (np.float32, torch.float32)
    ref_aff, ref_mask = loop_affinities(label, offsets, background, ignore)
    np.testing.assert_array_equal(_as_numpy(aff), ref_aff)
    np.testing.assert_array_equal(_as_numpy(mask), ref_mask)
    assert np.all(_as_numpy(weight)[ref_mask == 0] == 0) and np.all(_as_numpy(weight)[ref_mask == 1] >= 1)


@pytest.mark.parametrize("ignore", [None, 5])
def test_matches_bioimage_cpp_on_medulla(medulla, ignore):
    """An independent C++ implementation (bioimage-cpp, used by elf) on real dense neuron ids (uint64)."""
    _, lab = medulla
    aff, _, mask = LabelToAffinity(DEFAULT_OFFSETS_3D, ignore_label=ignore).compute(lab[None])
    ref_aff, ref_mask = bic.affinities.compute_affinities(lab, DEFAULT_OFFSETS_3D, ignore_label=ignore)
    np.testing.assert_array_equal(aff, ref_aff)
    np.testing.assert_array_equal(mask, ref_mask)


def test_2d_offsets_on_a_stack_are_per_slice(isbi):
    _, lab, _ = isbi
    stack = LabelToAffinity(background_label=0)(lab[None])
    assert stack.shape == (10, *lab.shape)
    for z in range(lab.shape[0]):
        np.testing.assert_array_equal(stack[:, z], LabelToAffinity(background_label=0)(lab[None, z]))


def test_background_and_ignore():
    label = np.array([[[0, 0, 1], [0, 1, 1]]])
    # background: 0-0 pairs are not "the same instance"; pairs are still valid
    aff, _, mask = LabelToAffinity([(0, -1)], background_label=0).compute(label)
    np.testing.assert_array_equal(aff[0], [[0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(mask[0], [[0, 1, 1], [0, 1, 1]])
    # label 0 as an ordinary instance
    aff = LabelToAffinity([(0, -1)])(label)
    np.testing.assert_array_equal(aff[0], [[0, 1, 0], [0, 0, 1]])
    # ignore: pairs touching 0 are masked out and weigh nothing
    aff, weight, mask = LabelToAffinity([(0, -1)], ignore_label=0).compute(label)
    np.testing.assert_array_equal(mask[0], [[0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(aff[0], [[0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(weight[0], [[0, 0, 0], [0, 0, 1]])


def test_validity_mask_at_borders():
    label = np.arange(6 * 7).reshape(1, 6, 7)
    offsets = [(-3, 0), (0, 2), (2, -1), (-1, 5), (6, 0), (0, -7)]
    mask = LabelToAffinity(offsets).compute(label)[2]
    for m, (dy, dx) in zip(mask, offsets):
        ys, xs = np.nonzero(m)
        assert m.sum() == max(0, 6 - abs(dy)) * max(0, 7 - abs(dx))
        if m.sum():  # exactly the pixels whose partner is inside the image
            assert ys.min() == max(0, -dy) and ys.max() == 5 - max(0, dy)
            assert xs.min() == max(0, -dx) and xs.max() == 6 - max(0, dx)


def test_class_balance_weight_by_hand():
    label = np.array([[[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 2, 2], [1, 1, 2, 2]]])
    offsets = [(-1, 0), (0, -1)]
    # 12 valid pairs per channel, 10 positive: f = 10/12 > 0.5 -> negatives weigh f / (1 - f) = 5, positives 1.
    # (over all 16 pixels f would be 10/16 and the weight 5/3: the fraction is over valid pairs only)
    aff, w, m = LabelToAffinity(offsets).compute(label)
    np.testing.assert_allclose(w, np.where(m == 0, 0, np.where(aff == 1, 1.0, 5.0)), rtol=1e-6)
    assert w[0, 2, 2] == pytest.approx(5.0) and w[0, 0, 0] == 0
    # label 1 as background: 2 positives of 12 -> f = 1/6 -> positives weigh 5, negatives 1
    aff, w, m = LabelToAffinity(offsets, background_label=1).compute(label)
    np.testing.assert_allclose(w, np.where(m == 0, 0, np.where(aff == 1, 5.0, 1.0)), rtol=1e-6)
    # one positive in 99 valid pairs: f = 1/99 clipped to 0.05 -> weight 19
    label = np.arange(110).reshape(1, 10, 11)
    label[0, 4, 3] = label[0, 3, 3]
    w = LabelToAffinity([(-1, 0)]).compute(label)[1][0]
    assert w[4, 3] == pytest.approx(19.0) and np.all(w[0] == 0) and np.sum(w == 1) == 98
    # a single class: f = 1 clipped to 0.99, nothing of the minority class: uniform weights
    w = LabelToAffinity([(-1, 0)]).compute(np.ones((1, 5, 5), int))[1][0]
    np.testing.assert_array_equal(w[1:], 1.0)


def test_uint64_ids_differing_in_high_bits_stay_distinct():
    low = np.uint64(7)
    label = np.array([[[low, low + np.uint64(2**40)], [low + np.uint64(2**33), low]]], dtype=np.uint64)
    aff = LabelToAffinity([(0, -1), (-1, 0), (1, 1)])(label)
    assert aff[0, 0, 1] == 0 and aff[1, 1, 0] == 0 and aff[2, 0, 0] == 1  # only true equalities connect
    big = label + np.uint64(2**63 + 5)  # even ids beyond int64 are compared exactly
    np.testing.assert_array_equal(LabelToAffinity([(0, -1), (-1, 0), (1, 1)])(big), aff)
    np.testing.assert_array_equal(LabelToAffinity([(0, -1), (-1, 0), (1, 1)])(torch.as_tensor(big)).numpy(), aff)


def test_affinity_must_follow_flips(isbi):
    """In a pipeline, a flip before LabelToAffinityd gives affinity(flip(label)), which is not flip(affinity(label))."""
    _, lab, _ = isbi
    label = lab[:1]  # (1, H, W)
    pipeline = Compose([RandFlipd("label", prob=1.0, spatial_axis=0), LabelToAffinityd("label", background_label=0)])
    out = pipeline({"label": MetaTensor(label)})
    to_aff = LabelToAffinity(background_label=0)
    expected = to_aff(np.flip(label, axis=1).copy())
    np.testing.assert_array_equal(_as_numpy(out["affinity"]), expected)
    flipped_after = np.flip(to_aff(label), axis=1)
    assert np.mean(_as_numpy(out["affinity"]) != flipped_after) > 0.01


@pytest.mark.parametrize("cast", CASTS.values(), ids=CASTS.keys())
def test_dictionary_keys_and_types(medulla, cast):
    _, lab = medulla
    meta = MetaTensor(lab[None, 0].astype(np.int64), affine=torch.diag(torch.tensor([4.0, 4.0, 1.0])))
    label = meta if cast is MetaTensor else cast(lab[None, 0].astype(np.int64))
    d = LabelToAffinityd("label", affinity_keys="aff", weight_keys="w", mask_keys=None)({"label": label})
    assert set(d) == {"label", "aff", "w"} and d["label"] is label
    assert d["aff"].shape == (10, 96, 96) and isinstance(d["aff"], np.ndarray if cast is np.asarray else torch.Tensor)
    if cast is MetaTensor:
        assert torch.equal(d["aff"].affine, meta.affine)
    assert LabelToAffinityD is LabelToAffinityd


@pytest.mark.parametrize(
    "label,kwargs,match",
    [
        (np.full((1, 4, 4), 1.5), {}, "integer"),
        (-np.ones((1, 4, 4), int), {}, "non-negative"),
        (np.ones((4, 4), int), {}, r"got shape \(4, 4\)"),
        (np.ones((2, 4, 4), int), {}, "single-channel"),
        (np.ones((1, 2, 3, 4, 4), int), {}, "3-D"),
        (np.ones((1, 4, 4), int), {"offsets": []}, "non-empty"),
        (np.ones((1, 4, 4), int), {"offsets": [(1,)]}, "components"),
        (np.ones((1, 4, 4), int), {"offsets": [(1, 0), (0, 1, 0)]}, "components"),
        (np.ones((1, 4, 4), int), {"offsets": DEFAULT_OFFSETS_3D}, "3-component"),
        (np.ones((1, 4, 4), int), {"background_label": 0, "ignore_label": 0}, "differ"),
        (np.ones((1, 4, 4), int), {"background_label": -1}, "background_label"),
        (np.ones((1, 4, 4), int), {"weight_clip": (0.0, 0.99)}, "weight_clip"),
    ],
)
def test_bad_input(label, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelToAffinityd("seg", **kwargs)({"seg": label})


def test_bad_input_names_the_key():
    with pytest.raises(ValueError, match="seg.*integer"):
        LabelToAffinityd("seg")({"seg": np.full((1, 4, 4), 0.5)})
    with pytest.raises(ValueError, match="distinct"):
        LabelToAffinityd(["a", "b"])
    assert PAPER_OFFSETS_2D[:4] == ((-1, 0), (0, -1), (-3, 0), (0, -3))
