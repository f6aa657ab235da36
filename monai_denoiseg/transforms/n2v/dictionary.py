"""Dictionary twin of :class:`RandN2VMask`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type

from .array import RandN2VMask

__all__ = ["RandN2VMaskd", "RandN2VMaskD", "RandN2VMaskDict"]


class RandN2VMaskd(RandomizableTransform, MapTransform):
    """Dictionary-based :class:`RandN2VMask`: Noise2Void blind-spot masking of ``keys``.

    For each key it writes three entries:

    - the masked image, in place of ``key`` (default) or at ``f"{key}{masked_key_postfix}"``;
    - the boolean blind-spot mask at ``f"{key}{mask_key_postfix}"`` (default ``"{key}_n2v_mask"``);
    - the untouched target at ``f"{key}{target_key_postfix}"`` (default ``"{key}_n2v_target"``): the
      input in the masked image's ``dtype``, the same object when no cast is needed (no copy).
      Set ``target_key_postfix=None`` to skip it, e.g. when the masked image goes beside the input.

    All keys share one draw of blind spots (as MONAI's ``RandGaussianNoised`` shares its noise), so
    they must have the same shape; mask keys separately for independent draws. The blind-spot
    guarantee of :class:`RandN2VMask` (no replacement reads any blind spot or hidden pixel) holds
    for every key, since the excluded pixels come from that shared draw.
    Other arguments: see :class:`RandN2VMask`.
    """

    backend = RandN2VMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        masked_pixel_percentage: float = 0.2,
        grid_shape: int | Sequence[int] | None = None,
        strategy: str = "uniform",
        window: int = 11,
        struct_mask: NdarrayOrTensor | Sequence | None = None,
        spatial_dims: int = 2,
        dtype: DtypeLike | torch.dtype = np.float32,
        masked_key_postfix: str | None = None,
        mask_key_postfix: str = "_n2v_mask",
        target_key_postfix: str | None = "_n2v_target",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        written = ["" if masked_key_postfix is None else masked_key_postfix, mask_key_postfix]
        written += [] if target_key_postfix is None else [target_key_postfix]
        if len(set(written)) < len(written):
            raise ValueError(
                "masked_key_postfix, mask_key_postfix, target_key_postfix: expected distinct postfixes "
                f"(None or '' for the masked image writes it in place of the key), got {masked_key_postfix!r}, "
                f"{mask_key_postfix!r}, {target_key_postfix!r}."
            )
        self.masker = RandN2VMask(
            masked_pixel_percentage=masked_pixel_percentage,
            grid_shape=grid_shape,
            strategy=strategy,
            window=window,
            struct_mask=struct_mask,
            spatial_dims=spatial_dims,
            dtype=dtype,
        )
        self.masked_key_postfix = masked_key_postfix
        self.mask_key_postfix = mask_key_postfix
        self.target_key_postfix = target_key_postfix

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandN2VMaskd:
        super().set_random_state(seed, state)
        self.masker.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        first_key = self.first_key(d)
        if first_key == ():
            return d
        self.masker.randomize(d[first_key], key=str(first_key))  # one draw shared by all keys
        for key in self.key_iterator(d):
            img = d[key]
            masked, mask = self.masker._mask(img, randomize=False, key=str(key))
            if self.target_key_postfix is not None:
                d[f"{key}{self.target_key_postfix}"] = convert_to_dst_type(img, dst=img, dtype=masked.dtype)[0]
            d[f"{key}{self.mask_key_postfix}"] = mask
            d[key if self.masked_key_postfix is None else f"{key}{self.masked_key_postfix}"] = masked
        return d


RandN2VMaskD = RandN2VMaskDict = RandN2VMaskd
