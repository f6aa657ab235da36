"""Noise2Void blind-spot masking (N2V, N2V2, structN2V) as MONAI transforms."""

from .array import N2V_STRATEGIES, RandN2VMask
from .dictionary import RandN2VMaskd, RandN2VMaskD, RandN2VMaskDict

__all__ = ["N2V_STRATEGIES", "RandN2VMask", "RandN2VMaskd", "RandN2VMaskD", "RandN2VMaskDict"]
