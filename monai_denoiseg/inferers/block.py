"""Sliding-window inference of one block of a volume, on the same window grid as the whole volume.

The one prediction code of the toolkit. A block is predicted from its write region plus a context of
``stride`` voxels before it and ``roi - stride`` after it (``stride = int(roi * (1 - overlap))``, MONAI's
scan interval), clipped to the volume. When the block's write size is a multiple of the stride, the windows
MONAI places inside that read region are exactly the windows it would place over the whole volume, so every
voxel of the write region is blended from the same windows with the same Gaussian weights as a whole-volume
sliding window. Blocks therefore tile a volume of any size without seams, and with bounded memory.

- :class:`BlockInferer`: the window grid, the context it implies, and the prediction of one read region.
- :func:`predict_volume`: an in-memory volume, block by block as :mod:`monai_denoiseg.blockwise` runs a file,
  with RAM as the output store (the evaluator's path).
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from tqdm import tqdm

__all__ = ["BlockInferer", "predict_volume", "unit_range"]

#: float32 bytes one 2-D inferer call may hold in blended output buffers before it batches fewer slices
_BUFFER_BYTES = 512 * 2**20


def unit_range(x, intensity_range: Sequence[float] | None = None) -> torch.Tensor:
    """An image as float32 in [0, 1]: uint8 / 255, or ``(x - low) / (high - low)`` for a declared range.

    Floats without a declared range are taken to be in [0, 1] already (the trainer's scale)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if intensity_range is None and t.dtype == torch.uint8:
        intensity_range = (0.0, 255.0)
    t = t.to(torch.float32)
    if intensity_range is not None:
        low, high = (float(v) for v in intensity_range)
        t = (t - low) / (high - low)
    return t


def _as_dict(out) -> dict[str, torch.Tensor]:
    if isinstance(out, Mapping):
        return dict(out)
    if isinstance(out, torch.Tensor):
        return {"pred": out}
    if isinstance(out, Sequence):
        return {str(i): o for i, o in enumerate(out)}
    raise TypeError(f"network output: expected a dict, a tensor or a sequence of tensors, got {type(out).__name__}.")


def _unaliased(out: dict[str, torch.Tensor], window: torch.Tensor) -> dict[str, torch.Tensor]:
    """MONAI's blending multiplies every output by the importance map **in place** (``buffer *= w_t``): an
    output sharing memory with another one (``JointDenoiSegNet``'s ``"denoised"`` *is* its ``"final"``) would
    be weighted twice, and one sharing memory with the window (an identity head) would change the input.
    Such outputs are copied."""
    seen = {window.untyped_storage().data_ptr()}
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            ptr = value.untyped_storage().data_ptr()
            if ptr in seen:
                out[key] = value = value.clone()
                ptr = value.untyped_storage().data_ptr()
            seen.add(ptr)
    return out


def _blended(key: str, value: torch.Tensor) -> torch.Tensor:
    """A blended ``*_prob`` output is a convex combination of probabilities: clamp the float32 rounding of
    Gaussian blending (up to ~1e-3 past 1 at the window borders) back into [0, 1]."""
    return value.clamp(0.0, 1.0) if key.endswith("_prob") else value


def _default_device(network) -> torch.device:
    if isinstance(network, torch.nn.Module):
        for p in itertools.chain(network.parameters(), network.buffers()):
            return p.device
    return torch.device("cpu")


class BlockInferer:
    """MONAI sliding-window inference of a network over a (C, D, H, W) read region, 2-D per slice or 3-D.

    Args:
        roi_size: window size, (H, W) for a 2-D network applied to every z-slice (the paper's protocol) or
            (D, H, W) for a 3-D network; an int with ``spatial_dims``.
        overlap, mode: MONAI's window overlap and blending (``"gaussian"``).
        sw_batch_size: windows per forward pass; in 2-D, slices are batched so that windows of several small
            slices share a forward pass.
        device: where the network runs and the windows are blended (default: the network's device).
        amp: float16 autocast on CUDA (blending stays float32); ignored on the CPU, as in training: bfloat16
            there changes the predictions and is slower than float32 for these networks.
        progress: MONAI's progress bar over the windows of each call.
    """

    def __init__(self, roi_size: Sequence[int] | int, overlap: float = 0.25, sw_batch_size: int = 4,
                 mode: str = "gaussian", device: str | torch.device | None = None, amp: bool = False,
                 spatial_dims: int | None = None, progress: bool = False) -> None:
        if isinstance(roi_size, numbers.Integral):
            if spatial_dims not in (2, 3):
                raise ValueError(f"spatial_dims: expected 2 or 3 with an int roi_size, got {spatial_dims!r}.")
            roi_size = (int(roi_size),) * spatial_dims
        self.roi_size = tuple(int(r) for r in roi_size)
        if len(self.roi_size) not in (2, 3) or (spatial_dims is not None and len(self.roi_size) != spatial_dims):
            raise ValueError(f"roi_size: expected 2 (H, W) or 3 (D, H, W) sizes, got {roi_size!r}.")
        if min(self.roi_size) < 1:
            raise ValueError(f"roi_size: expected positive sizes, got {roi_size!r}.")
        if not 0 <= float(overlap) < 1:
            raise ValueError(f"overlap: expected a fraction in [0, 1), got {overlap!r}.")
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size: expected a positive int, got {sw_batch_size!r}.")
        self.spatial_dims = len(self.roi_size)
        self.overlap, self.sw_batch_size, self.mode = float(overlap), int(sw_batch_size), mode
        self.device = None if device is None else torch.device(device)
        self.amp, self.progress = bool(amp), bool(progress)
        #: MONAI's scan interval: windows start at multiples of it
        self.stride = tuple(max(int(r * (1 - self.overlap)), 1) for r in self.roi_size)

    # ------------------------------------------------------------------------------------ geometry
    def _zyx(self, values: Sequence[int], fill: int) -> tuple[int, int, int]:
        return (fill, *values) if self.spatial_dims == 2 else tuple(values)

    @property
    def context(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(before, after) context in (z, y, x) voxels: one stride before a block, a window minus a stride after."""
        return self._zyx(self.stride, 0), self._zyx([r - s for r, s in zip(self.roi_size, self.stride)], 0)

    def check_block_shape(self, block_shape: Sequence[int], key: str = "block_shape") -> tuple[int, int, int]:
        """A (z, y, x) block write shape whose in-plane (2-D) or every (3-D) size is a multiple of the stride."""
        shape = tuple(int(b) for b in block_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"{key}: expected 3 positive sizes (z, y, x), got {tuple(block_shape)!r}.")
        step = self._zyx(self.stride, 1)
        if any(b % s for b, s in zip(shape, step)):
            fixed = tuple(max(s, round(b / s) * s) for b, s in zip(shape, step))
            raise ValueError(
                f"{key}: expected multiples of the window stride {step} (roi_size {self.roi_size}, overlap "
                f"{self.overlap}) so that blocks reuse the whole volume's windows, got {shape}; e.g. {fixed}. "
                f"The context it needs is {self.context[0]} before and {self.context[1]} after each block."
            )
        return shape

    def default_block_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """2-D: 8 whole slices (in-plane tiles of 8 strides when slices are larger than 2048, so that no in-plane
        context is computed twice on ordinary slices); 3-D: 4 strides per axis, never much more than the volume."""
        stride = self._zyx(self.stride, 1)

        def fit(n: int, s: int, most: int) -> int:  # the multiple of s covering min(n, most)
            return max(s, -(-min(n, most) // s) * s)

        if self.spatial_dims == 2:
            return (min(8, int(shape[0])), *(fit(n, s, n if n <= 2048 else 8 * s) for n, s in zip(shape[1:], stride[1:])))
        return tuple(fit(n, s, 4 * s) for n, s in zip(shape, stride))

    # ---------------------------------------------------------------------------------- prediction
    def __call__(self, network: torch.nn.Module | Callable[..., Any], x: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
        """Every output of ``network(window, **kwargs)`` over the (C, D, H, W) float image ``x``, as float32
        (C', D, H, W) on the CPU (``kwargs`` as MONAI's inferers, e.g. ``stages=`` of :class:`JointDenoiSegNet`).

        A module is put in eval mode under ``torch.inference_mode()`` (batch norm with its running statistics,
        no dropout, nothing updated); every submodule's training flag is restored afterwards (frozen stages stay
        frozen). Pass the module itself, not a closure over it: a plain callable runs in whatever mode its modules
        are in. MONAI's ``buffer_steps`` is never used: it returns only the first output of a dict predictor.
        """
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"image: expected a float (C, D, H, W) tensor, got {x.dtype} of shape {tuple(x.shape)}.")
        device = self.device or _default_device(network)
        inferer = SlidingWindowInferer(roi_size=self.roi_size, sw_batch_size=self.sw_batch_size, overlap=self.overlap,
                                       mode=self.mode, progress=self.progress, sw_device=device, device=device)

        def predictor(window: torch.Tensor):
            with torch.autocast(device_type=device.type, enabled=self.amp and device.type == "cuda"):
                return _unaliased(_as_dict(network(window, **kwargs)), window)

        modules = list(network.modules()) if isinstance(network, torch.nn.Module) else []
        flags = [m.training for m in modules]
        for m in modules:
            m.training = False
        def run(batch: torch.Tensor) -> dict[str, torch.Tensor]:
            with torch.inference_mode():
                return inferer(batch.to(device, torch.float32), predictor)

        try:
            if self.spatial_dims == 3:
                res = run(x[None])  # key by key, freeing each blended buffer as we go; ordinary tensors out
                return {k: _blended(k, res.pop(k)[0].to("cpu", torch.float32)).clone() for k in list(res)}
            return self._slices(run, x.permute(1, 0, 2, 3))  # the slices are the batch
        finally:
            for m, f in zip(modules, flags):
                m.training = f

    def _slices(self, run, slices: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        per_slice = 32 * slices[0, 0].numel() * 4  # a generous guess of the channels blended per slice
        step = max(1, min(self.sw_batch_size, _BUFFER_BYTES // per_slice))
        for z0 in range(0, slices.shape[0], step):
            res = run(slices[z0 : z0 + step])
            for k in list(res):
                v = _blended(k, res.pop(k).to("cpu", torch.float32).transpose(0, 1))  # (C, b, H, W)
                if k not in out:
                    out[k] = torch.empty((v.shape[0], slices.shape[0], *v.shape[2:]), dtype=torch.float32)
                out[k][:, z0 : z0 + v.shape[1]] = v
        return out

    def predict_block(self, network, read: Callable[[tuple[int, ...], tuple[int, ...]], np.ndarray],
                      offset: Sequence[int], shape: Sequence[int], volume_shape: Sequence[int],
                      intensity_range: Sequence[float] | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """Outputs (C, *shape) over the write region ``offset`` + ``shape`` (z, y, x) of a volume of ``volume_shape``,
        from ``read(begin, end)`` of the input (a (C, ...) or (...) array) with this inferer's context; ``kwargs``
        go to the network.

        The read region is clipped to the volume, where the windows still start at multiples of the stride; a block
        within one window of the volume's end reads on to that end, where MONAI shifts the last window exactly
        as over the whole volume. Blocks thus reproduce the whole-volume sliding window everywhere."""
        before, after = self.context
        begin = tuple(max(0, o - b) for o, b in zip(offset, before))
        roi = self._zyx(self.roi_size, 0)
        # the whole volume's last window is shifted to end at the volume's end: reach it where it covers the block
        end = tuple(n if n - r < o + s else min(n, o + s + a)
                    for o, s, a, n, r in zip(offset, shape, after, volume_shape, roi))
        image = unit_range(read(begin, end), intensity_range)
        image = image[None] if image.ndim == 3 else image
        out = self(network, image, **kwargs)
        crop = (slice(None), *(slice(o - b, o - b + s) for o, b, s in zip(offset, begin, shape)))
        return {k: v[crop].clone() for k, v in out.items()}


#: 3-D volumes up to this size are predicted by predict_volume as one block (the 250^3 medulla cube is 1.6e7)
_WHOLE_VOLUME_VOXELS = 2**25


def _blocks(shape: Sequence[int], block_shape: Sequence[int]):
    """(offset, size) of the blocks tiling ``shape``, the last one along each axis shrunk to fit."""
    ranges = [range(0, n, b) for n, b in zip(shape, block_shape)]
    for offset in itertools.product(*ranges):
        yield offset, tuple(min(b, n - o) for o, b, n in zip(offset, block_shape, shape))


def predict_volume(
    network: torch.nn.Module | Callable[[torch.Tensor], Any],
    noisy,
    roi_size: Sequence[int] | int,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    mode: str = "gaussian",
    spatial_dims: int = 2,
    device: str | torch.device | None = None,
    amp: bool = False,
    block_shape: Sequence[int] | None = None,
    network_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Sliding-window inference of ``network`` over an in-memory stack; every output as (C, D, H, W) float32.

    Args:
        network: a module (run in eval mode) or callable taking (B, C, *roi) and returning a dict of (B, C', *roi)
            tensors (e.g. :class:`JointDenoiSegNet`), a tensor (returned under ``"pred"``) or a sequence (keys
            ``"0"``, ``"1"``...); ``network_kwargs`` go to every call (e.g. ``{"stages": strategy.stages}``).
        noisy: float image in [0, 1] (intensity / 255), (D, H, W), (C, D, H, W) or, for ``spatial_dims=2``, a
            single slice (H, W); tensor or numpy. Integer input is rejected (divide by 255 first).
        roi_size, overlap, mode, sw_batch_size, device, amp: as :class:`BlockInferer`. A window larger than the
            image is fine (MONAI pads and crops back).
        spatial_dims: 2 = every z-slice on its own with 2-D windows (the paper's protocol); 3 = a 3-D window.
        block_shape: (z, y, x) voxels per block, as the blockwise pipeline (:mod:`monai_denoiseg.blockwise`) runs
            them on files (default :meth:`BlockInferer.default_block_shape`, or one block for a 3-D volume of up
            to 2^25 voxels: no context computed twice); the result does not depend on it.
        progress: a progress bar over the blocks (over the windows when there is one block).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims: expected 2 or 3, got {spatial_dims!r}.")
    x = noisy if isinstance(noisy, torch.Tensor) else torch.as_tensor(np.asarray(noisy))
    if not x.is_floating_point():
        raise ValueError(
            f"noisy: expected a float image in [0, 1] (intensity / 255), got dtype {x.dtype}; divide by 255 first."
        )
    x = x[None] if x.ndim == 2 and spatial_dims == 2 else x
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4:
        raise ValueError(f"noisy: expected (D, H, W) or (C, D, H, W), got shape {tuple(x.shape)}.")
    if isinstance(roi_size, numbers.Integral):
        roi_size = (int(roi_size),) * spatial_dims
    if len(tuple(roi_size)) != spatial_dims:
        raise ValueError(f"roi_size: expected {spatial_dims} sizes for spatial_dims={spatial_dims}, got {roi_size!r}.")
    inferer = BlockInferer(roi_size, overlap=overlap, sw_batch_size=sw_batch_size, mode=mode, device=device, amp=amp)
    x = x.to(torch.float32)
    shape = tuple(x.shape[1:])
    if block_shape is None and spatial_dims == 3 and np.prod(shape) <= _WHOLE_VOLUME_VOXELS:
        # the volume is in RAM anyway: one block, so no window is computed twice for the context of another
        block_shape = tuple(-(-n // s) * s for n, s in zip(shape, inferer._zyx(inferer.stride, 1)))
    block_shape = inferer.check_block_shape(block_shape if block_shape is not None else inferer.default_block_shape(shape))

    def read(begin, end):
        return x[(slice(None), *(slice(b, e) for b, e in zip(begin, end)))]

    blocks = list(_blocks(shape, block_shape))
    inferer.progress = progress and len(blocks) == 1
    out: dict[str, torch.Tensor] = {}
    for offset, size in tqdm(blocks, desc="predict", unit="block", disable=not progress or len(blocks) == 1):
        pred = inferer.predict_block(network, read, offset, size, shape, (0.0, 1.0), **dict(network_kwargs or {}))
        for k, v in pred.items():
            if k not in out:
                out[k] = torch.empty((v.shape[0], *shape), dtype=torch.float32)
            out[k][(slice(None), *(slice(o, o + s) for o, s in zip(offset, size)))] = v
    return out
