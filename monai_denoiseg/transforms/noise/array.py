"""Synthetic EM noise of Wang et al. (MICCAI 2024, "instance-aware interaction"), as MONAI array transforms.

The paper names its two noise models only by their parameters (Gaussian sigma 55-85 and Poisson
lambda 0.6-0.8 "randomly set" per image; film noise with kernel size 5 and maximum intensity 1.5) and
publishes no synthesis code, so the exact formulas below are this package's documented choice
(see ``docs/noise.md``). Both work on the paper's 0-255 intensity scale: ``value_range`` says where
0 and 255 lie for the input (``(0, 255)`` for uint8-range images, ``(0, 1)`` or ``(-1, 1)`` for
normalised ones). Output is always float32, clipped to ``value_range``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from monai_denoiseg.utils.validation import check_finite, check_spatial_ndim

__all__ = ["RandGaussianPoissonNoise", "RandFilmNoise", "RandClippedGaussianNoise"]

FULL_SCALE = 255.0  # the paper's intensity scale, on which sigma, lambda and the film amplitude are defined


def to_float32(img: NdarrayOrTensor) -> NdarrayOrTensor:
    """``img`` as float32 of its own kind (numpy, tensor or MetaTensor): the output type of every noise transform."""
    out, *_ = convert_to_dst_type(convert_to_tensor(img, track_meta=get_track_meta()), dst=img, dtype=torch.float32)
    return out


def _check_range(name: str, value: Sequence[float], low: float = 0.0) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not low <= lo <= hi:
        raise ValueError(f"{name}: expected (min, max) with {low} <= min <= max, got {tuple(value)!r}.")
    return lo, hi


class _RandSyntheticNoise(RandomizableTransform):
    """Shared machinery: value-range mapping, per-image or per-slice draws, seeded noise, clipping.

    ``randomize`` draws, with ``self.R``, the parameters of every noise unit (the whole image, or each
    z-slice of a (C, D, H, W) volume when ``per_slice``) and one integer seed per unit; the noise of a
    unit is then sampled (on the CPU) from ``numpy.random.default_rng(seed)``. The same
    ``set_random_state`` seed therefore gives the same output on any device, and with ``per_slice`` a
    volume holds the noise of one slice at a time.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, prob: float, value_range: Sequence[float], per_slice: bool, **ranges: Sequence[float]) -> None:
        RandomizableTransform.__init__(self, prob)
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"value_range: expected (low, high) with high > low, got {tuple(value_range)!r}.")
        self.value_range = (lo, hi)
        self.per_slice = bool(per_slice)
        self.ranges = {name: _check_range(f"{name}_range", r) for name, r in ranges.items()}
        self.params: dict[str, np.ndarray] | None = None  # one value per noise unit, see ``randomize``
        self.seeds: np.ndarray | None = None

    def randomize(self, img: NdarrayOrTensor) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        n = int(img.shape[1]) if self.per_slice and img.ndim == 4 else 1
        self.params = {name: self.R.uniform(lo, hi, size=n) for name, (lo, hi) in self.ranges.items()}
        self.seeds = self.R.randint(0, np.iinfo(np.int64).max, size=n, dtype=np.int64)

    def _add_noise(self, u: torch.Tensor, rng: np.random.Generator, **params: float) -> torch.Tensor:
        """Noisy version of ``u`` (float32, 0-255 scale, before clipping)."""
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Add the noise to a channel-first (C, H, W) or (C, D, H, W) image; float32 out, same kind as ``img``."""
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        check_spatial_ndim(img_t, (2, 3), key="img")
        check_finite(img_t, key="img")
        if randomize:
            self.randomize(img_t)
        if not self._do_transform:
            return to_float32(img)
        if self.seeds is None or self.params is None:
            raise RuntimeError(f"{type(self).__name__}: call randomize() before calling with randomize=False.")
        x = (img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t).to(torch.float32)
        n = len(self.seeds)
        if n > 1 and (x.ndim != 4 or x.shape[1] != n):
            raise ValueError(f"img: per-slice parameters were drawn for {n} slices, got shape {tuple(x.shape)}.")
        lo, hi = self.value_range
        scale = FULL_SCALE / (hi - lo)
        u = (x.clamp(lo, hi) - lo) * scale
        y = torch.empty_like(u)
        for i, seed in enumerate(self.seeds):
            unit = (slice(None),) if n == 1 else (slice(None), i)
            params = {name: float(values[i]) for name, values in self.params.items()}
            y[unit] = self._add_noise(u[unit], np.random.default_rng(int(seed)), **params).clamp_(0.0, FULL_SCALE)
        out, *_ = convert_to_dst_type(y / scale + lo, dst=img, dtype=torch.float32)
        return out


class RandGaussianPoissonNoise(_RandSyntheticNoise):
    """Gaussian-Poisson mixture noise of Wang et al. (MICCAI 2024), on the 0-255 scale:

        y = clip(Poisson(lam * x) / lam + sigma * z, 0, 255),   z ~ N(0, 1),
        sigma ~ U(sigma_range), lam ~ U(lam_range), drawn per image (or per z-slice, ``per_slice``).

    ``lam`` is the photon count per grey level (shot noise, variance x / lam) and ``sigma`` the
    signal-independent read-out noise. Before clipping E[y] = x and Var[y] = x / lam + sigma**2.

    Args:
        prob: probability of adding noise (the output is float32 either way).
        sigma_range: range of the Gaussian standard deviation, in 0-255 grey levels.
        lam_range: range of the Poisson scale lambda (counts per grey level).
        value_range: input values that correspond to 0 and 255; inputs are clipped to it first.
        per_slice: for (C, D, H, W) volumes draw sigma and lambda for every z-slice (the paper's
            "per image" for stacks of 2-D sections); otherwise one draw per call.
    """

    def __init__(
        self,
        prob: float = 1.0,
        sigma_range: Sequence[float] = (55.0, 85.0),
        lam_range: Sequence[float] = (0.6, 0.8),
        value_range: Sequence[float] = (0.0, 255.0),
        per_slice: bool = False,
    ) -> None:
        super().__init__(prob, value_range, per_slice, sigma=sigma_range, lam=lam_range)
        if self.ranges["lam"][0] <= 0:
            raise ValueError(f"lam_range: expected a positive Poisson scale, got {tuple(lam_range)!r}.")

    def _add_noise(self, u: torch.Tensor, rng: np.random.Generator, sigma: float, lam: float) -> torch.Tensor:
        counts = rng.poisson(lam * u.cpu().numpy())
        read = rng.standard_normal(u.shape, dtype=np.float32)
        noisy = torch.from_numpy(counts.astype(np.float32)) / lam + sigma * torch.from_numpy(read)
        return noisy.to(u.device)


class RandFilmNoise(_RandSyntheticNoise):
    """Film noise of Wang et al. (MICCAI 2024): additive, spatially correlated grain, on the 0-255 scale:

        y = clip(x + 255 * a * (B_k * w), 0, 255),   w ~ N(0, 1) i.i.d.,   a ~ U(intensity_range),

    where ``B_k * w`` is the k x k mean (box) filter of white noise, taken over a (H+k-1, W+k-1) field
    so that it is stationary up to the border. The grain is N(0, (255 a / k)^2) with correlation
    (1 - |dy|/k)(1 - |dx|/k) for |dy|, |dx| < k and exactly 0 beyond; it lies in the (H, W) plane and is
    independent across z-slices and channels (the support film is a 2-D layer under each section).
    Defaults follow the paper: kernel size 5 and maximum intensity 1.5 (a ~ U(0, 1.5)).

    Args:
        prob: probability of adding noise (the output is float32 either way).
        kernel_size: side k of the box filter, in pixels.
        intensity_range: range of the amplitude a (grain std is 255 a / k grey levels).
        value_range: input values that correspond to 0 and 255; inputs are clipped to it first.
        per_slice: for (C, D, H, W) volumes draw a for every z-slice; otherwise one draw per call.
    """

    def __init__(
        self,
        prob: float = 1.0,
        kernel_size: int = 5,
        intensity_range: Sequence[float] = (0.0, 1.5),
        value_range: Sequence[float] = (0.0, 255.0),
        per_slice: bool = False,
    ) -> None:
        super().__init__(prob, value_range, per_slice, intensity=intensity_range)
        if int(kernel_size) != kernel_size or kernel_size < 1:
            raise ValueError(f"kernel_size: expected a positive integer, got {kernel_size!r}.")
        self.kernel_size = int(kernel_size)

    def _add_noise(self, u: torch.Tensor, rng: np.random.Generator, intensity: float) -> torch.Tensor:
        k = self.kernel_size
        *lead, h, w = u.shape
        white = rng.standard_normal((int(np.prod(lead)), 1, h + k - 1, w + k - 1), dtype=np.float32)
        grain = F.avg_pool2d(torch.from_numpy(white).to(u.device), k, stride=1).reshape(u.shape)
        return u + (FULL_SCALE * intensity) * grain


class RandClippedGaussianNoise(_RandSyntheticNoise):
    """Additive white Gaussian noise on the 0-255 scale, the noise of the second paper's EM experiment
    (Lucchi mitochondria "with different variance"):

        y = clip(x + sigma * z, 0, 255),   z ~ N(0, 1),   sigma ~ U(sigma_range).

    Unlike MONAI's ``RandGaussianNoise`` the standard deviation is in grey levels of the 0-255 scale,
    the result is clipped to the value range, and per-slice draws and seeding match the EM noises.
    A fixed level is ``sigma_range=(s, s)``.

    Args:
        prob: probability of adding noise (the output is float32 either way).
        sigma_range: range of the standard deviation, in 0-255 grey levels.
        value_range: input values that correspond to 0 and 255; inputs are clipped to it first.
        per_slice: for (C, D, H, W) volumes draw sigma for every z-slice; otherwise one draw per call.
    """

    def __init__(
        self,
        prob: float = 1.0,
        sigma_range: Sequence[float] = (25.0, 25.0),
        value_range: Sequence[float] = (0.0, 255.0),
        per_slice: bool = False,
    ) -> None:
        super().__init__(prob, value_range, per_slice, sigma=sigma_range)

    def _add_noise(self, u: torch.Tensor, rng: np.random.Generator, sigma: float) -> torch.Tensor:
        return u + sigma * torch.from_numpy(rng.standard_normal(u.shape, dtype=np.float32)).to(u.device)
