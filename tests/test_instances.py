"""AffinityToInstances(d): mutex watershed round trips on real EM labels, elf equivalence, the weight convention."""

import numpy as np
import pytest
import torch
from elf.segmentation.mutex_watershed import mutex_watershed as elf_mutex_watershed
from monai.data import MetaTensor
from scipy.ndimage import binary_dilation, find_objects
from skimage.measure import label as connected_components
from skimage.metrics import adapted_rand_error
from skimage.segmentation import relabel_sequential

from monai_denoiseg.transforms.affinity import DEFAULT_OFFSETS_3D, PAPER_OFFSETS_2D, LabelToAffinity
from monai_denoiseg.transforms.instances import AffinityToInstances, AffinityToInstancesD, AffinityToInstancesd

CASTS = {"numpy": np.asarray, "torch": torch.as_tensor, "metatensor": MetaTensor}


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def arand(true, test, ignore_background=False):
    ignore = (0,) if ignore_background else ()
    return adapted_rand_error(true.astype(np.int64), _np(test).astype(np.int64), ignore_labels=ignore)[0]


def components(label, in_plane):
    """Ground truth as the mutex watershed can produce it: face-connected pieces of each id (per slice if in_plane)."""
    label = label.astype(np.int64) + 1
    if in_plane:
        return np.stack([connected_components(s, connectivity=1) for s in label])
    return connected_components(label, connectivity=1)


@pytest.mark.parametrize("cast", CASTS.values(), ids=CASTS.keys())
def test_round_trip_medulla_per_slice(medulla, cast):
    _, lab = medulla
    aff = LabelToAffinity()(lab[None])
    seg = AffinityToInstances(strides=(1, 1))(cast(aff))  # every mutex edge: exact affinities give exact labels
    assert isinstance(seg, np.ndarray if cast is np.asarray else torch.Tensor) and seg.shape == (1, *lab.shape)
    assert seg.dtype in (np.int64, torch.int64) and int(seg.min()) == 1
    seg = _np(seg)[0]
    gt = components(lab, in_plane=True)
    assert max(arand(gt[z], seg[z]) for z in range(len(lab))) < 0.01
    # slices are segmented independently: no id is shared by two slices
    assert all(s[0].stop - s[0].start == 1 for s in find_objects(seg) if s is not None)


def test_round_trip_medulla_3d(medulla):
    _, lab = medulla
    aff = LabelToAffinity(DEFAULT_OFFSETS_3D)(lab[None])
    seg = AffinityToInstances(DEFAULT_OFFSETS_3D, strides=(1, 1, 1))(aff)[0]
    assert arand(components(lab, in_plane=False), seg) < 0.01


@pytest.mark.parametrize("offsets", [PAPER_OFFSETS_2D, DEFAULT_OFFSETS_3D], ids=["per-slice", "3d"])
def test_round_trip_isbi_with_foreground_mask(isbi, offsets):
    _, lab, _ = isbi
    aff = LabelToAffinity(offsets, background_label=0)(lab[None])
    fg = lab[None] != 0
    segment = AffinityToInstancesd("aff", offsets, (1,) * len(offsets[0]), mask_key="fg", output_keys="seg")
    seg = segment({"aff": aff, "fg": fg})["seg"][0]
    np.testing.assert_array_equal(seg == 0, lab == 0)  # 0 exactly on the masked-out membranes
    np.testing.assert_array_equal(np.unique(seg[seg > 0]), np.arange(1, seg.max() + 1))  # consecutive ids
    if len(offsets[0]) == 2:
        assert max(arand(lab[z], seg[z], ignore_background=True) for z in range(len(lab))) < 0.01
    else:
        assert arand(lab, seg, ignore_background=True) < 0.01


def test_same_as_elf_with_boundary_probabilities(medulla, isbi):
    """elf's mutex_watershed expects 1 - affinity (the reference's `mutex_watershed(1 - affs, ...)` is right)."""
    _, lab = medulla
    aff = LabelToAffinity()(lab[None])
    ours = AffinityToInstances()(aff)[0]  # per slice, default strides: the reference's (5, 5)
    ref, n = np.zeros(lab.shape, np.int64), 0
    for z in range(len(lab)):  # elf slice by slice, ids offset to be disjoint
        ref[z] = elf_mutex_watershed(1 - aff[:, z], PAPER_OFFSETS_2D, [5, 5]).astype(np.int64) + n
        n = ref[z].max()
    np.testing.assert_array_equal(ours, ref)
    _, ilab, _ = isbi
    aff = LabelToAffinity(DEFAULT_OFFSETS_3D, background_label=0)(ilab[None])
    ours = AffinityToInstances(DEFAULT_OFFSETS_3D, strides=(1, 1, 1))(aff, mask=ilab[None] != 0)[0]
    ref = elf_mutex_watershed(1 - aff, DEFAULT_OFFSETS_3D, [1, 1, 1], mask=ilab != 0)
    np.testing.assert_array_equal(ours, relabel_sequential(ref.astype(np.int64))[0])  # elf leaves id gaps


def test_wrong_convention_is_clearly_worse(isbi, rng):
    """Soft, noisy predictions: right convention near-perfect; boundary maps given as affinities (or
    affinities given raw to elf) wreck the segmentation."""
    _, lab, _ = isbi
    gt_aff = LabelToAffinity(background_label=0)(lab[None, :2])
    pred = np.clip(0.1 + 0.8 * gt_aff + rng.normal(0, 0.1, gt_aff.shape), 0, 1).astype(np.float32)
    fg = lab[None, :2] != 0
    good = AffinityToInstances()(pred, mask=fg)[0]
    inverted = AffinityToInstances()(1 - pred, mask=fg)[0]
    raw_to_elf = [elf_mutex_watershed(pred[:, z].copy(), PAPER_OFFSETS_2D, [1, 1], mask=fg[0, z]) for z in range(2)]
    for z in range(2):
        assert arand(lab[z], good[z], True) < 0.02
        assert arand(lab[z], inverted[z], True) > 0.5
        assert arand(lab[z], raw_to_elf[z], True) > 0.5


def _fragmented(lab, rng, sigma=0.25):
    gt_aff = LabelToAffinity(background_label=0)(lab[None])
    return np.clip(gt_aff + rng.normal(0, sigma, gt_aff.shape), 0, 1).astype(np.float32)  # noisy: many fragments


def _check_big_segments_survive(raw, merged, min_size):
    ids, sizes = np.unique(raw[raw > 0], return_counts=True)
    assert np.sum(sizes < min_size) > 5  # the noise does produce small fragments
    new_ids = [np.unique(merged[raw == i]) for i in ids[sizes >= min_size]]
    assert all(len(n) == 1 for n in new_ids) and len({int(n[0]) for n in new_ids}) == len(new_ids)
    m_ids = np.unique(merged[merged > 0])
    assert len(m_ids) < len(ids) and np.all(np.diff(m_ids) == 1) and m_ids[0] == 1


def test_min_size_merges_small_segments_dense(medulla, rng):
    _, lab = medulla
    pred = _fragmented(lab[0] + 1, rng)
    raw = AffinityToInstances(strides=(1, 1))(pred)[0]  # every (noisy) mutex edge: many fragments
    merged = AffinityToInstances(strides=(1, 1), min_size=30)(pred)[0]
    _check_big_segments_survive(raw, merged, 30)
    assert np.unique(merged, return_counts=True)[1].min() >= 30  # dense: every small segment has a neighbour


def test_min_size_with_foreground_mask(isbi, rng):
    _, lab, _ = isbi
    pred = _fragmented(lab[0], rng)
    fg = lab[None, 0] != 0
    raw = AffinityToInstances(strides=(1, 1))(pred, mask=fg)[0]
    merged = AffinityToInstances(strides=(1, 1), min_size=40)(pred, mask=fg)[0]
    _check_big_segments_survive(raw, merged, 40)
    np.testing.assert_array_equal(merged == 0, ~fg[0])  # the background stays background, nothing else is 0
    ids, sizes = np.unique(merged[merged > 0], return_counts=True)
    for i in ids[sizes < 40]:  # a survivor below min_size touches no other segment inside the mask
        touching = binary_dilation(merged == i) & fg[0]
        assert set(np.unique(merged[touching])) == {i}


def test_randomized_strides_reproducible(medulla):
    _, lab = medulla
    aff = LabelToAffinity(DEFAULT_OFFSETS_3D)(lab[None, :4])
    seg = AffinityToInstances(DEFAULT_OFFSETS_3D, strides=(1, 4, 4), randomize_strides=True)
    first = seg.set_random_state(3)(aff)
    again = seg.set_random_state(3)(aff)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, seg.set_random_state(4)(aff))  # the draw does matter
    d = AffinityToInstancesd(["a", "b"], DEFAULT_OFFSETS_3D, (1, 4, 4), True, output_keys=["sa", "sb"])
    d.set_random_state(5)
    out = d({"a": aff, "b": aff.copy()})
    np.testing.assert_array_equal(out["sa"], out["sb"])  # one draw shared by the keys
    assert AffinityToInstancesD is AffinityToInstancesd


def test_global_numpy_rng_untouched(medulla):
    _, lab = medulla
    aff = LabelToAffinity()(lab[None, :2])
    state = np.random.get_state()
    AffinityToInstances(strides=(3, 3), randomize_strides=True)(aff)
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]


def test_metatensor_meta_kept():
    affine = torch.diag(torch.tensor([2.0, 3.0, 1.0]))
    aff = MetaTensor(np.ones((10, 16, 16), np.float32), affine=affine, meta={"id": 7})
    seg = AffinityToInstances()(aff)
    assert isinstance(seg, MetaTensor) and seg.meta["id"] == 7 and torch.equal(seg.affine, aff.affine)
    assert torch.all(seg == 1)  # all-connected affinities: one instance


@pytest.mark.parametrize(
    "aff,mask,kwargs,match",
    [
        (np.ones((9, 8, 8)), None, {}, "10 channels"),
        (np.full((10, 8, 8), 1.5), None, {}, r"\[0, 1\]"),
        (np.full((10, 8, 8), np.nan), None, {}, "finite"),
        (np.ones((10, 8)), None, {}, "got shape"),
        (np.ones((13, 8, 8)), None, {"offsets": DEFAULT_OFFSETS_3D}, "3-component"),
        (np.ones((10, 8, 8)), np.ones((1, 8, 9)), {}, "fg"),
        (np.ones((10, 8, 8)), np.ones((2, 8, 8)), {}, "fg"),
        (np.ones((10, 8, 8)), None, {"strides": (2, 2, 2)}, "strides"),
        (np.ones((10, 8, 8)), None, {"strides": (0, 2)}, "strides"),
        (np.ones((10, 8, 8)), None, {"num_attractive": 0}, "num_attractive"),
        (np.ones((10, 8, 8)), None, {"min_size": -1}, "min_size"),
        (np.ones((10, 8, 8)), None, {"offsets": []}, "non-empty"),
    ],
)
def test_bad_input(aff, mask, kwargs, match):
    data = {"aff": aff} if mask is None else {"aff": aff, "fg": mask}
    with pytest.raises(ValueError, match=match):
        AffinityToInstancesd("aff", mask_key=None if mask is None else "fg", **kwargs)(data)
