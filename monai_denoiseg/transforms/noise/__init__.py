"""Synthetic EM noise: Gaussian-Poisson mixture and film noise (Wang et al., MICCAI 2024), clipped Gaussian (the N2V paper)."""

from .array import RandClippedGaussianNoise, RandFilmNoise, RandGaussianPoissonNoise
from .dictionary import (
    RandClippedGaussianNoised,
    RandClippedGaussianNoiseD,
    RandClippedGaussianNoiseDict,
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
    "RandClippedGaussianNoise",
    "RandClippedGaussianNoised",
    "RandClippedGaussianNoiseD",
    "RandClippedGaussianNoiseDict",
]
