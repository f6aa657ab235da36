"""Dictionary twins of the synthetic EM noise transforms (Wang et al., MICCAI 2024).

One draw (apply or not, the parameters and the noise seeds) is shared by all keys: keys of the same
shape get the same sigma/lambda (or film amplitude) and the same random stream. For independent noisy
copies (e.g. Noise2Noise pairs) use one transform per key.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform

from monai_denoiseg.utils.validation import check_spatial_ndim

from .array import RandClippedGaussianNoise, RandFilmNoise, RandGaussianPoissonNoise, _RandSyntheticNoise, to_float32

__all__ = [
    "RandGaussianPoissonNoised",
    "RandGaussianPoissonNoiseD",
    "RandGaussianPoissonNoiseDict",
    "RandFilmNoised",
    "RandFilmNoiseD",
    "RandFilmNoiseDict",
    "RandClippedGaussianNoised",
    "RandClippedGaussianNoiseD",
    "RandClippedGaussianNoiseDict",
]


class _RandSyntheticNoised(RandomizableTransform, MapTransform):
    """Applies one array noise transform to every key with a single shared draw."""

    backend = _RandSyntheticNoise.backend

    def __init__(self, keys: KeysCollection, prob: float, noise: _RandSyntheticNoise, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.noise = noise

    def set_random_state(self, seed: int | None = None, state=None):
        super().set_random_state(seed, state)
        self.noise.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            check_spatial_ndim(d[key], (2, 3), key=str(key))
        self.randomize(None)
        first_key = self.first_key(d)
        if first_key == ():
            return d
        if self._do_transform:
            self.noise.randomize(d[first_key])
        for key in self.key_iterator(d):
            d[key] = self.noise(d[key], randomize=False) if self._do_transform else to_float32(d[key])
        return d


class RandGaussianPoissonNoised(_RandSyntheticNoised):
    """Dictionary version of :class:`RandGaussianPoissonNoise`; arguments as there, plus ``keys``."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        sigma_range: Sequence[float] = (55.0, 85.0),
        lam_range: Sequence[float] = (0.6, 0.8),
        value_range: Sequence[float] = (0.0, 255.0),
        per_slice: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        noise = RandGaussianPoissonNoise(1.0, sigma_range, lam_range, value_range, per_slice)
        super().__init__(keys, prob, noise, allow_missing_keys)


class RandFilmNoised(_RandSyntheticNoised):
    """Dictionary version of :class:`RandFilmNoise`; arguments as there, plus ``keys``."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        kernel_size: int = 5,
        intensity_range: Sequence[float] = (0.0, 1.5),
        value_range: Sequence[float] = (0.0, 255.0),
        per_slice: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        noise = RandFilmNoise(1.0, kernel_size, intensity_range, value_range, per_slice)
        super().__init__(keys, prob, noise, allow_missing_keys)


class RandClippedGaussianNoised(_RandSyntheticNoised):
    """Dictionary version of :class:`RandClippedGaussianNoise`; arguments as there, plus ``keys``."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        sigma_range: Sequence[float] = (25.0, 25.0),
        value_range: Sequence[float] = (0.0, 255.0),
        per_slice: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        noise = RandClippedGaussianNoise(1.0, sigma_range, value_range, per_slice)
        super().__init__(keys, prob, noise, allow_missing_keys)


RandGaussianPoissonNoiseD = RandGaussianPoissonNoiseDict = RandGaussianPoissonNoised
RandFilmNoiseD = RandFilmNoiseDict = RandFilmNoised
RandClippedGaussianNoiseD = RandClippedGaussianNoiseDict = RandClippedGaussianNoised
