"""Shared input checks and the pad-and-crop network wrapper."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from torch import nn

from monai_denoiseg.networks.utils import PadToMultiple, crop_spatial, pad_to_multiple
from monai_denoiseg.utils import (
    check_finite,
    check_instance_labels,
    check_offsets,
    check_same_spatial_shape,
    check_spatial_ndim,
)


@pytest.mark.parametrize("cast", [np.asarray, torch.as_tensor, MetaTensor])
def test_checks_accept_good_input(cast):
    img = cast(np.zeros((1, 8, 9), dtype=np.float32))
    lab = cast(np.arange(72, dtype=np.int64).reshape(1, 8, 9))
    assert check_spatial_ndim(img, (2, 3), "image") == 2
    check_finite(img, "image")
    check_instance_labels(lab, "label")
    check_instance_labels(cast(np.ones((1, 4, 4), dtype=np.float32)), "label")  # whole-number floats are ids
    check_same_spatial_shape(img, lab)


def test_uint64_labels_above_int63_accepted():
    check_instance_labels(np.array([[[2**63 + 5, 1]]], dtype=np.uint64), "label")


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: check_spatial_ndim(np.zeros((8, 9)), 3, "image"), ["image", "(8, 9)", "3-D"]),
        (lambda: check_spatial_ndim(np.zeros((1, 1, 2, 8, 9)), (2, 3), "raw"), ["raw", "(1, 1, 2, 8, 9)", "2/3-D"]),
        (lambda: check_finite(torch.tensor([[1.0, float("nan")]]), "noisy"), ["noisy", "NaN", "(1, 2)"]),
        (lambda: check_instance_labels(np.full((1, 3, 3), 0.5), "seg"), ["seg", "integer", "(1, 3, 3)"]),
        (lambda: check_instance_labels(torch.tensor([[[-1, 2]]]), "seg"), ["seg", "negative", "(1, 1, 2)"]),
        (lambda: check_same_spatial_shape(np.zeros((1, 4, 4)), np.zeros((1, 4, 5))), ["label", "(1, 4, 5)", "(4, 4)"]),
        (lambda: check_offsets([]), ["offsets", "non-empty"]),
        (lambda: check_offsets([[1, 0], [0, 1, 0]]), ["offsets", "2 or 3"]),
        (lambda: check_offsets([[1, 0]], spatial_dims=3), ["offsets", "3 components"]),
    ],
)
def test_checks_reject_bad_input_with_clear_message(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_check_offsets_normalises_to_int_tuples():
    assert check_offsets(np.array([[-1, 0], [0, -3]])) == ((-1, 0), (0, -3))


class _Strided(nn.Module):
    """Down by 8 then up by 8: only works on multiples of 8, like the reference UNet."""

    def forward(self, x):
        assert all(s % 8 == 0 for s in x.shape[2:]), x.shape
        y = nn.functional.avg_pool2d(x, 8)
        up = nn.functional.interpolate(y, scale_factor=8)
        return {"image": up + x, "pair": (x, up)}


def test_pad_to_multiple_pads_at_end_and_replicates_border():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    p = pad_to_multiple(x, (4, 4))
    assert p.shape == (1, 1, 4, 4)
    assert torch.equal(p[..., :3, :], x) and torch.equal(p[..., 3, :], x[..., 2, :])
    assert pad_to_multiple(x, (3, 2)) is x


def test_pad_to_multiple_wrapper_restores_size_of_every_output():
    net = PadToMultiple(_Strided(), 8)
    x = torch.rand(2, 1, 250, 37)
    out = net(x)
    assert out["image"].shape == x.shape
    assert [t.shape for t in out["pair"]] == [x.shape, x.shape]
    # the crop keeps the original pixels where the network is the identity plus a smooth term
    assert torch.equal(out["pair"][0], x)
    assert crop_spatial([torch.zeros(1, 1, 5, 5)], (2, 3))[0].shape == (1, 1, 2, 3)
