"""Synthetic EM noise (Gaussian-Poisson mixture, film noise) of Wang et al., MICCAI 2024."""

from .array import RandFilmNoise, RandGaussianPoissonNoise
from .dictionary import (
    RandFilmNoised,
    RandFilmNoiseD,
    RandFilmNoiseDict,
    RandGaussianPoissonNoised,
    RandGaussianPoissonNoiseD,
    RandGaussianPoissonNoiseDict,
)

__all__ = [
    "RandGaussianPoissonNoise",
    "RandFilmNoise",
    "RandGaussianPoissonNoised",
    "RandGaussianPoissonNoiseD",
    "RandGaussianPoissonNoiseDict",
    "RandFilmNoised",
    "RandFilmNoiseD",
    "RandFilmNoiseDict",
]
