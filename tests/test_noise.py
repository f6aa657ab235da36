"""Synthetic EM noise transforms: moments against closed forms, correlation, seeds, types, real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import stats

from monai_denoiseg.data.noisy_copy import make_noisy_copy
from monai_denoiseg.transforms.noise import (
    RandClippedGaussianNoise,
    RandClippedGaussianNoised,
    RandFilmNoise,
    RandFilmNoised,
    RandFilmNoiseD,
    RandGaussianPoissonNoise,
    RandGaussianPoissonNoised,
    RandGaussianPoissonNoiseDict,
)

KINDS = ["numpy", "torch", "metatensor"]


def as_kind(x: np.ndarray, kind: str):
    if kind == "numpy":
        return x
    if kind == "torch":
        return torch.as_tensor(x)
    return MetaTensor(torch.as_tensor(x), meta={"filename_or_obj": "crop.h5", "pixdim": 10.0})


def to_numpy(y) -> np.ndarray:
    return y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


# ---------- independent references: moments of a normal variable clipped to [lo, hi] ----------


def clipped_normal_moments(m, s, lo=0.0, hi=255.0):
    """E[Y], E[Y^2] for Y = clip(N(m, s^2), lo, hi), in closed form (vectorised over m, s)."""
    m, s = np.asarray(m, float), np.asarray(s, float)
    a, b = (lo - m) / s, (hi - m) / s
    pa, pb, fa, fb = stats.norm.cdf(a), stats.norm.cdf(b), stats.norm.pdf(a), stats.norm.pdf(b)
    inside = pb - pa
    e1 = lo * pa + hi * (1 - pb) + m * inside + s * (fa - fb)
    e2 = lo**2 * pa + hi**2 * (1 - pb) + m**2 * inside + 2 * m * s * (fa - fb) + s**2 * (inside + a * fa - b * fb)
    return e1, e2


def gaussian_poisson_moments(x, sigma, lam):
    """E[Y], E[Y^2] for Y = clip(K/lam + sigma Z, 0, 255), K ~ Poisson(lam x): a sum over the Poisson pmf."""
    x = np.atleast_1d(np.asarray(x, float))
    k = np.arange(0, int(lam * 255 + 12 * np.sqrt(lam * 255) + 20))
    pmf = stats.poisson.pmf(k[None, :], lam * x[:, None])
    e1, e2 = clipped_normal_moments(k[None, :] / lam, sigma)
    return (pmf * e1).sum(1), (pmf * e2).sum(1)


# ---------- Gaussian-Poisson ----------


@pytest.mark.parametrize(
    "x, sigma, lam",
    [(128.0, 10.0, 0.7), (128.0, 0.0, 0.6), (60.0, 5.0, 0.8)],  # clipping negligible: closed form x, x/lam + sigma^2
)
def test_gaussian_poisson_moments_unclipped(x, sigma, lam):
    t = RandGaussianPoissonNoise(sigma_range=(sigma, sigma), lam_range=(lam, lam)).set_random_state(0)
    y = t(np.full((2, 256, 256), x, np.float32))
    n, var = y.size, x / lam + sigma**2
    assert abs(y.mean() - x) < 4 * np.sqrt(var / n)
    assert y.var() == pytest.approx(var, rel=4 * np.sqrt(2 / n))
    if sigma == 0:  # pure shot noise: every value is a photon count / lambda
        counts = y * lam
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)


@pytest.mark.parametrize("x", [128.0, 40.0, 230.0])
def test_gaussian_poisson_moments_with_clipping_match_exact_expectation(x):
    sigma, lam = 70.0, 0.7  # the paper's regime: 6-60 % of the values clip
    t = RandGaussianPoissonNoise(sigma_range=(sigma, sigma), lam_range=(lam, lam)).set_random_state(1)
    y = t(np.full((1, 384, 384), x, np.float32)).astype(np.float64)
    e1, e2 = gaussian_poisson_moments(x, sigma, lam)
    mean, var = e1[0], e2[0] - e1[0] ** 2
    assert abs(y.mean() - mean) < 4 * np.sqrt(var / y.size)
    assert y.var() == pytest.approx(var, rel=0.03)
    assert y.min() >= 0 and y.max() <= 255


def test_gaussian_poisson_per_slice_draws_follow_their_parameters():
    t = RandGaussianPoissonNoise(sigma_range=(20, 85), lam_range=(0.6, 0.8), per_slice=True).set_random_state(3)
    y = t(np.full((1, 12, 96, 96), 128.0, np.float32))[0]
    sigma, lam = t.params["sigma"], t.params["lam"]
    assert sigma.shape == lam.shape == (12,) and len(np.unique(sigma)) == 12
    assert (20 <= sigma).all() and (sigma <= 85).all() and (0.6 <= lam).all() and (lam <= 0.8).all()
    e1, e2 = zip(*(gaussian_poisson_moments(128.0, s, l_) for s, l_ in zip(sigma, lam)))
    expected = np.array(e2)[:, 0] - np.array(e1)[:, 0] ** 2
    np.testing.assert_allclose(y.reshape(12, -1).var(1), expected, rtol=0.1)
    # one draw per call without per_slice
    t2 = RandGaussianPoissonNoise(per_slice=False).set_random_state(3)
    t2(np.zeros((1, 4, 8, 8), np.float32))
    assert t2.params["sigma"].shape == (1,)


def test_value_range_maps_normalised_images_onto_the_paper_scale(rng):
    x = rng.integers(0, 256, (1, 40, 40)).astype(np.float32)
    ref = RandGaussianPoissonNoise().set_random_state(5)(x)
    unit = RandGaussianPoissonNoise(value_range=(0, 1)).set_random_state(5)(x / 255)
    signed = RandGaussianPoissonNoise(value_range=(-1, 1)).set_random_state(5)(x / 127.5 - 1)
    np.testing.assert_allclose(unit * 255, ref, atol=2e-3)
    np.testing.assert_allclose((signed + 1) * 127.5, ref, atol=2e-3)
    assert unit.min() >= 0 and unit.max() <= 1 and signed.min() >= -1 and signed.max() <= 1


# ---------- film noise ----------


def box_correlation(dy: int, dx: int, k: int) -> float:
    return max(0.0, 1 - abs(dy) / k) * max(0.0, 1 - abs(dx) / k)


def test_film_noise_moments_and_spatial_correlation():
    k, a = 5, 0.5
    t = RandFilmNoise(kernel_size=k, intensity_range=(a, a)).set_random_state(0)
    noise = t(np.full((2, 512, 512), 128.0, np.float32)) - 128.0
    std = 255 * a / k  # 25.5 grey levels: clipping at 0/255 is > 5 sigma away
    n_eff = noise.size / k**2  # box-correlated samples: ~k^2 pixels per independent value
    assert abs(noise.mean()) < 4 * std / np.sqrt(n_eff)
    assert noise.std() == pytest.approx(std, rel=0.03)
    z = noise / noise.std()
    for dy, dx in [(0, 1), (1, 0), (1, 1), (0, 2), (2, 3), (0, 4), (4, 4), (0, 5), (5, 0), (3, 7)]:
        rho = np.mean(z[:, : 512 - dy, : 512 - dx] * z[:, dy:, dx:])
        assert rho == pytest.approx(box_correlation(dy, dx, k), abs=0.03), (dy, dx)


def test_film_noise_is_independent_across_sections_and_follows_per_slice_amplitudes():
    t = RandFilmNoise(per_slice=True, intensity_range=(0.2, 0.6)).set_random_state(2)
    noise = t(np.full((1, 10, 160, 160), 128.0, np.float32))[0] - 128.0
    a = t.params["intensity"]
    assert a.shape == (10,) and (0.2 <= a).all() and (a <= 0.6).all()
    np.testing.assert_allclose(noise.reshape(10, -1).std(1), 255 * a / 5, rtol=0.12)
    z = noise / noise.std(axis=(1, 2), keepdims=True)
    assert abs(np.mean(z[1:] * z[:-1])) < 0.03  # no correlation between neighbouring sections


@pytest.mark.parametrize("x", [128.0, 30.0])
def test_film_noise_with_clipping_matches_exact_expectation(x):
    t = RandFilmNoise(intensity_range=(1.5, 1.5)).set_random_state(4)
    y = t(np.full((4, 256, 256), x, np.float32)).astype(np.float64)
    e1, e2 = clipped_normal_moments(x, 255 * 1.5 / 5)
    assert y.mean() == pytest.approx(e1, abs=2.0)
    assert y.var() == pytest.approx(e2 - e1**2, rel=0.05)


# ---------- MONAI conventions: types, meta, seeds, dictionary twins ----------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 32, 48), (2, 4, 16, 24)])
@pytest.mark.parametrize("cls", [RandGaussianPoissonNoise, RandFilmNoise])
def test_types_shapes_meta_and_float32_output(cls, shape, kind, rng):
    x = rng.integers(0, 256, shape).astype(np.uint8)
    img = as_kind(x, kind)
    y = cls(per_slice=True).set_random_state(0)(img)
    assert type(y) is type(img) and tuple(y.shape) == shape
    assert y.dtype in (np.float32, torch.float32)
    if kind == "metatensor":
        assert y.meta["filename_or_obj"] == "crop.h5" and y.meta["pixdim"] == 10.0
    out = to_numpy(y)
    assert out.min() >= 0 and out.max() <= 255 and not np.array_equal(out, x)
    # the same seed gives the same output whatever the input kind
    np.testing.assert_array_equal(out, to_numpy(cls(per_slice=True).set_random_state(0)(x)))


@pytest.mark.parametrize("cls", [RandGaussianPoissonNoise, RandFilmNoise])
def test_seeds_and_reuse_of_a_draw(cls, rng):
    x = rng.integers(0, 256, (1, 3, 32, 32)).astype(np.float32)
    a, b, c = (cls().set_random_state(s)(x) for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    t = cls().set_random_state(7)
    first = t(x)
    np.testing.assert_array_equal(t(x, randomize=False), first)  # the last draw is reused
    assert not np.array_equal(t(x), first)  # a new draw
    with pytest.raises(RuntimeError, match="randomize"):
        cls()(x, randomize=False)


def test_prob_zero_returns_input_as_float32(rng):
    x = rng.integers(0, 256, (1, 16, 16)).astype(np.uint8)
    for t in (RandGaussianPoissonNoise(prob=0.0), RandFilmNoise(prob=0.0)):
        y = t(x)
        assert y.dtype == np.float32 and np.array_equal(y, x)


@pytest.mark.parametrize("kind", KINDS)
def test_dictionary_twins_share_one_draw_and_match_the_array_transform(kind, rng):
    x = rng.integers(0, 256, (1, 3, 24, 24)).astype(np.float32)
    for dcls, acls in [(RandGaussianPoissonNoised, RandGaussianPoissonNoise), (RandFilmNoised, RandFilmNoise)]:
        t = dcls(keys=["image", "copy"], per_slice=True).set_random_state(11)
        d = t({"image": as_kind(x, kind), "copy": x, "label": x})
        np.testing.assert_array_equal(to_numpy(d["image"]), d["copy"])  # shared parameters and noise stream
        np.testing.assert_array_equal(to_numpy(d["image"]), acls(per_slice=True).set_random_state(11)(x))
        assert d["label"] is x  # keys not listed are untouched
        if kind == "metatensor":
            assert d["image"].meta["filename_or_obj"] == "crop.h5"
    assert RandGaussianPoissonNoiseDict is RandGaussianPoissonNoised and RandFilmNoiseD is RandFilmNoised
    skipped = RandFilmNoised(keys="image", prob=0.0)({"image": x.astype(np.uint8)})
    assert skipped["image"].dtype == np.float32 and np.array_equal(skipped["image"], x)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"noisy: expected a 2/3-D array .* got shape \(16, 16\)"):
        RandGaussianPoissonNoised(keys="noisy")({"noisy": np.zeros((16, 16))})
    with pytest.raises(ValueError, match="img: expected a 2/3-D"):
        RandFilmNoise()(np.zeros((1, 1, 2, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        RandGaussianPoissonNoise()(np.full((1, 4, 4), np.nan))
    with pytest.raises(ValueError, match="sigma_range"):
        RandGaussianPoissonNoise(sigma_range=(85, 55))
    with pytest.raises(ValueError, match="lam_range"):
        RandGaussianPoissonNoise(lam_range=(0.0, 0.5))
    with pytest.raises(ValueError, match="kernel_size"):
        RandFilmNoise(kernel_size=0)
    with pytest.raises(ValueError, match="value_range"):
        RandFilmNoise(value_range=(1, 0))
    with pytest.raises(ValueError, match="per-slice parameters were drawn for 3 slices"):
        t = RandGaussianPoissonNoise(per_slice=True)
        t.randomize(np.zeros((1, 3, 4, 4)))
        t(np.zeros((1, 5, 4, 4)), randomize=False)


# ---------- real data ----------


def psnr(noisy, clean) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((np.asarray(noisy, np.float64) - clean) ** 2)))


def test_gaussian_poisson_on_real_em_matches_the_formula_and_documented_psnr(medulla):
    raw = medulla[0].astype(np.float32)
    sigma, lam = 70.0, 0.7
    y = RandGaussianPoissonNoise(sigma_range=(sigma, sigma), lam_range=(lam, lam)).set_random_state(0)(raw[None])[0]
    # expected squared error per pixel, clipping included: E[y^2] - 2 x E[y] + x^2, from the exact moments
    values, counts = np.unique(raw, return_counts=True)
    e1, e2 = gaussian_poisson_moments(values, sigma, lam)
    expected_mse = np.sum(counts * (e2 - 2 * values * e1 + values**2)) / raw.size
    assert np.mean((y - raw) ** 2.0) == pytest.approx(expected_mse, rel=0.03)
    # default ranges: docs/noise.md gives 10.5-14 dB per slice on the medulla and ISBI volumes
    default = RandGaussianPoissonNoise(per_slice=True).set_random_state(0)(raw[None])[0]
    assert all(10.5 < psnr(default[z], raw[z]) < 14.0 for z in range(raw.shape[0]))


def test_film_noise_on_real_em_matches_documented_psnr(isbi):
    raw = isbi[0].astype(np.float32)
    y = RandFilmNoise(intensity_range=(1.5, 1.5), per_slice=True).set_random_state(0)(raw[None])[0]
    assert all(11.0 < psnr(y[z], raw[z]) < 13.5 for z in range(raw.shape[0]))  # docs/noise.md: ~12 dB at a = 1.5
    t = RandFilmNoise(per_slice=True).set_random_state(0)
    y = t(raw[None])[0]
    for z in range(raw.shape[0]):  # the unclipped grain std 255 a / 5 bounds the RMS error (clipping only lowers it)
        assert np.sqrt(np.mean((y[z] - raw[z]) ** 2)) <= 255 * t.params["intensity"][z] / 5 * 1.05


# ---------- clipped Gaussian (the N2V paper's EM experiment) ----------


@pytest.mark.parametrize("x, sigma", [(128.0, 10.0), (10.0, 25.0), (240.0, 50.0)])
def test_clipped_gaussian_mean_and_variance_match_the_censored_normal(x, sigma):
    from scipy.stats import norm

    t = RandClippedGaussianNoise(sigma_range=(sigma, sigma)).set_random_state(0)
    y = t(np.full((1, 512, 512), x, np.float32)).astype(np.float64)
    a, b = (0 - x) / sigma, (255 - x) / sigma  # censored at 0 and 255: E and Var in closed form
    pa, pb = norm.cdf(a), norm.sf(b)
    inner = norm.cdf(b) - pa
    m1 = x * inner + sigma * (norm.pdf(a) - norm.pdf(b)) + 255 * pb
    ez2 = inner + a * norm.pdf(a) - b * norm.pdf(b)  # E[z^2; a < z < b]
    m2 = (x**2 * inner + 2 * x * sigma * (norm.pdf(a) - norm.pdf(b)) + sigma**2 * ez2 + 255**2 * pb)
    var = m2 - m1**2
    assert abs(y.mean() - m1) < 4 * np.sqrt(var / y.size)
    assert y.var() == pytest.approx(var, rel=0.02)
    assert y.min() >= 0 and y.max() <= 255


def test_clipped_gaussian_dictionary_twin_shares_one_draw_and_makes_noisy_copies():
    img = np.full((1, 64, 64), 100.0, np.float32)
    d = RandClippedGaussianNoised(["a", "b"], sigma_range=(5, 30)).set_random_state(3)({"a": img, "b": img})
    np.testing.assert_array_equal(d["a"], d["b"])
    arr = RandClippedGaussianNoise(sigma_range=(5, 30)).set_random_state(3)(img)
    np.testing.assert_array_equal(arr, d["a"])
    vol = np.full((4, 32, 32), 128, np.uint8)
    copy = make_noisy_copy(vol, "gaussian", seed=1, sigma_range=(20.0, 20.0))
    assert copy.dtype == np.uint8 and copy.shape == vol.shape
    assert copy.astype(float).std() == pytest.approx(20.0, rel=0.1)
    np.testing.assert_array_equal(copy, make_noisy_copy(vol, "gaussian", seed=1, sigma_range=(20.0, 20.0)))
