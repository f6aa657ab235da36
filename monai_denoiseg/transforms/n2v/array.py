"""Noise2Void blind-spot masking as a MONAI array transform.

Noise2Void (Krull et al., CVPR 2019) trains a denoiser on noisy images alone: a few "blind
spots" per patch are hidden from the network's input and the loss is taken only there, against
the untouched noisy value. N2V2 (Hoeck et al., ECCV-W 2022) replaces the blind spot by the median
of its neighbourhood; structN2V (Broaddus et al., ISBI 2020) also hides a structured set of
pixels around each blind spot, for noise correlated along known directions.

The whole batch is masked at once, with no loop over pixels or images: ``randomize`` draws the
blind spots from ``self.R`` and turns them into flat indices (small integer arrays that depend on
the shape only, so a seed gives the same masks on CPU and GPU); ``__call__`` reads and writes the
values with torch gathers and scatters on the input's device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import DtypeLike, NdarrayOrTensor
from monai.transforms import RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, get_equivalent_dtype

from monai_denoiseg.utils import check_finite, check_spatial_ndim

__all__ = ["RandN2VMask", "N2V_STRATEGIES"]

N2V_STRATEGIES = ("uniform", "median", "zero", "gaussian")


def _cartesian(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """All combinations of one entry per array, shape (prod(lengths), len(arrays)), C order."""
    return np.stack([a.ravel() for a in np.meshgrid(*arrays, indexing="ij")], axis=-1)


def _mirror(centres: np.ndarray, disp: np.ndarray, size: np.ndarray | int) -> np.ndarray:
    """``centres + disp``, with each out-of-bounds component replaced by ``centres - disp`` (the
    displacement mirrored through the blind spot, which never lands on the blind spot itself)."""
    q = centres + disp
    return np.where((q < 0) | (q >= size), centres - disp, q)


def _cast(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast replacement values to the image dtype, rounding and clipping for integer images."""
    if dtype.is_floating_point or values.dtype == dtype:
        return values.to(dtype)
    info = torch.iinfo(dtype)
    return values.round().clamp(info.min, info.max).to(dtype)


class RandN2VMask(RandomizableTransform):
    """Noise2Void blind-spot masking of a channel-first image ``(C, *spatial)`` or a batch ``(B, C, *spatial)``.

    Every channel of every image gets its own blind spots, one per grid cell at a uniformly
    random position inside the cell. The grid has ``grid_shape`` cells per spatial axis, or, when
    ``grid_shape`` is None, ``max(1, floor(L / s + 1/2))`` cells along an axis of length ``L``,
    with ``s = (100 / masked_pixel_percentage) ** (1 / ndim)`` the spacing CAREamics uses
    (a 64x64 patch at 0.2 % gets 3x3 cells: 9 blind spots, 0.22 %). Cells are near-equal
    (sides differ by at most one pixel) and tile the image exactly: there are no partial cells.

    Blind-spot replacement (``strategy``):

    - ``"uniform"`` (N2V): the value of a pixel drawn uniformly among the valid neighbours of the
      ``window`` neighbourhood (see below);
    - ``"median"`` (N2V2): the median of the valid neighbours (mean of the two middle values for an
      even count, as ``numpy.median``; the count varies from spot to spot);
    - ``"zero"``: 0;
    - ``"gaussian"``: a draw from N(mean, std) of the image (per image and channel).

    **Blind-spot guarantee.** A replacement never reads a blind spot's pixel, neither its own nor
    any other blind spot's of the same image and channel, nor a pixel hidden by ``struct_mask``
    around any blind spot: the valid neighbours are the window offsets (centre excluded) whose
    pixel is none of these. Copying another blind spot's original value would put that spot's
    target into the network input. ``uniform`` draws an offset, redraws the few that hit an
    excluded pixel (batched rejection), then picks the r-th valid offset of the rest, so the draw
    stays uniform over the valid ones; ``median`` leaves the excluded pixels out of the median.
    A grid so dense that some blind spot has no valid neighbour raises a ``ValueError`` naming the
    spatial shape and the grid (e.g. one cell per pixel).

    Where a neighbour falls outside the image its displacement is mirrored through the blind spot
    (``c + d`` becomes ``c - d``), which never lands on the blind spot itself; the window is
    narrowed along axes shorter than ``window`` so that the mirror always lands inside.

    ``struct_mask`` (structN2V) is a binary array with odd sides and ``ndim == spatial_dims``,
    centred on each blind spot: its non-zero pixels (centre excepted) are hidden as well, replaced
    by values drawn uniformly in [min, max] of the image (CAREamics' rule; structN2V draws in
    [-2, 2] of normalised data). A blind spot's own struct offsets are excluded from its window
    together with their mirror images, and the hidden pixels of every blind spot are excluded as
    above, so no replacement reveals a hidden pixel.

    Returns ``(masked, mask)``: the masked image in ``dtype`` and a boolean mask that is True
    exactly at the chosen blind spots (never derived from which pixels changed). The training
    target is the input itself, which is never modified. Output containers follow the input
    (numpy, torch on its device, MetaTensor with its metadata).

    Args:
        masked_pixel_percentage: density of blind spots in percent of the pixels (CAREamics: 0.2).
        grid_shape: cells per spatial axis (int or one per axis); overrides the percentage.
            Zhu & Guan (joint optical neuroimaging denoising) mask 169 pixels of 256x256 images:
            ``grid_shape=13``, exactly 169 blind spots per image and channel, one per 19-20 pixel cell.
        strategy: one of ``"uniform"``, ``"median"``, ``"zero"``, ``"gaussian"``.
        window: odd side of the neighbourhood for ``uniform``/``median`` (11: the N2V code's
            ``n2v_neighborhood_radius=5`` and CAREamics' ``roi_size``).
        struct_mask: optional structN2V mask (array-like of 0/1), e.g. ``[[1, 1, 1, 1, 1]]`` hides the
            two horizontal neighbours on either side of each blind spot.
        spatial_dims: 2 or 3; tells ``(C, H, W)`` from ``(B, C, H, W)``.
        dtype: dtype of the masked image (None keeps the input's; integer images then get their
            replacement values rounded and clipped to the dtype's range).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    _REDRAWS = 4  # at most this many rejection rounds for a uniform neighbour, then the exact draw
    _TABLE_BUDGET = 1 << 13  # window entries the exact draw may look up at once without more rejection rounds

    def __init__(
        self,
        masked_pixel_percentage: float = 0.2,
        grid_shape: int | Sequence[int] | None = None,
        strategy: str = "uniform",
        window: int = 11,
        struct_mask: NdarrayOrTensor | Sequence | None = None,
        spatial_dims: int = 2,
        dtype: DtypeLike | torch.dtype = np.float32,
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)  # a patch without blind spots has no N2V loss
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: expected 2 or 3, got {spatial_dims!r}.")
        if not 0 < float(masked_pixel_percentage) <= 100:
            raise ValueError(
                f"masked_pixel_percentage: expected a value in (0, 100], got {masked_pixel_percentage!r}."
            )
        if strategy not in N2V_STRATEGIES:
            raise ValueError(f"strategy: expected one of {N2V_STRATEGIES}, got {strategy!r}.")
        if int(window) != window or window < 3 or window % 2 == 0:
            raise ValueError(f"window: expected an odd integer >= 3, got {window!r}.")
        self.spatial_dims = spatial_dims
        self.masked_pixel_percentage = float(masked_pixel_percentage)
        self.grid_shape = None if grid_shape is None else self._check_grid(grid_shape)
        self.strategy = strategy
        self.window = int(window)
        self.dtype = dtype
        self.struct_offsets = self._struct_offsets(struct_mask)
        self.neighbours = self._neighbour_offsets()
        self._geometries: dict[tuple[int, ...], dict] = {}
        self._draw: dict | None = None

    # ----- configuration -----
    def _check_grid(self, grid_shape) -> tuple[int, ...]:
        grid = (grid_shape,) * self.spatial_dims if np.isscalar(grid_shape) else tuple(grid_shape)
        if len(grid) != self.spatial_dims or any(int(n) != n or n < 1 for n in grid):
            raise ValueError(
                f"grid_shape: expected {self.spatial_dims} positive integers (cells per spatial axis), "
                f"got {grid_shape!r}."
            )
        return tuple(int(n) for n in grid)

    def _struct_offsets(self, struct_mask) -> np.ndarray:
        """Offsets (S, ndim) of the pixels hidden around each blind spot, centre excluded."""
        if struct_mask is None:
            return np.zeros((0, self.spatial_dims), dtype=np.int64)
        s = np.asarray(struct_mask.cpu() if isinstance(struct_mask, torch.Tensor) else struct_mask)
        if s.ndim != self.spatial_dims or any(n % 2 == 0 for n in s.shape) or not np.isin(s, (0, 1)).all():
            raise ValueError(
                f"struct_mask: expected a binary (0/1) {self.spatial_dims}-D array with odd sides "
                f"(its centre is the blind spot), got shape {s.shape}."
            )
        offsets = np.argwhere(s) - np.array(s.shape) // 2
        return offsets[np.abs(offsets).sum(1) > 0]

    def _neighbour_offsets(self) -> np.ndarray:
        """Offsets (M, ndim) a replacement may read: the window without its centre and without any
        pixel that is, or mirrors along some axes to, a hidden struct pixel."""
        half = self.window // 2
        offsets = _cartesian([np.arange(-half, half + 1)] * self.spatial_dims)
        hidden = np.zeros((half + 1,) * self.spatial_dims, dtype=bool)  # indexed by |offset|
        inside = np.abs(self.struct_offsets).max(1, initial=0) <= half
        hidden[tuple(np.abs(self.struct_offsets[inside]).T)] = True
        hidden[(0,) * self.spatial_dims] = True
        offsets = offsets[~hidden[tuple(np.abs(offsets).T)]]
        if self.strategy in ("uniform", "median") and len(offsets) == 0:
            raise ValueError(
                f"struct_mask: it hides the whole {self.window}-pixel window, leaving no neighbour to read; "
                "use a larger window."
            )
        return offsets

    # ----- randomness -----
    def _layout(self, img: NdarrayOrTensor, key: str) -> tuple[int, tuple[int, ...]]:
        """(number of independent images B*C, spatial shape) of a (C, *sp) or (B, C, *sp) input."""
        extra = 1 if img.ndim <= self.spatial_dims + 1 else 2
        check_spatial_ndim(img, self.spatial_dims, key, extra_dims=extra)
        return int(np.prod(img.shape[:extra])), tuple(int(s) for s in img.shape[extra:])

    def _geometry(self, spatial: tuple[int, ...], key: str) -> dict:
        """Shape-only quantities, computed once per spatial shape: the grid cells, the strides and
        the neighbour offsets (the window narrowed along axes too short for a mirrored neighbour)."""
        if spatial in self._geometries:
            return self._geometries[spatial]
        if self.grid_shape is None:
            spacing = (100.0 / self.masked_pixel_percentage) ** (1.0 / self.spatial_dims)
            cells = tuple(max(1, int(np.floor(length / spacing + 0.5))) for length in spatial)
        elif any(n > length for n, length in zip(self.grid_shape, spatial)):
            raise ValueError(
                f"{key}: grid_shape {self.grid_shape} has more cells than pixels along an axis "
                f"of spatial shape {spatial}."
            )
        else:
            cells = self.grid_shape
        # axis of length L cut into n near-equal cells at floor(i * L / n): every cell full and inside
        edges = [(np.arange(n + 1) * length) // n for length, n in zip(spatial, cells)]
        half = np.minimum(self.window // 2, (np.array(spatial) - 1) // 2)
        neighbours = self.neighbours[(np.abs(self.neighbours) <= half).all(1)]
        if self.strategy in ("uniform", "median") and len(neighbours) == 0:
            raise ValueError(f"{key}: spatial shape {spatial} is too small to give a blind spot any neighbour.")
        geometry = {
            "cells": tuple(int(n) for n in cells),
            "starts": _cartesian([e[:-1] for e in edges]),  # (K, ndim)
            "sizes": _cartesian([np.diff(e) for e in edges]),
            "size": np.array(spatial),
            "strides": np.cumprod((1,) + spatial[:0:-1])[::-1],
            "half": half,
            "neighbours": neighbours,  # (M, ndim)
            "window_neighbours": np.ravel_multi_index(tuple((neighbours + half).T), tuple(2 * half + 1)),
        }
        if len(self._geometries) >= 16:
            self._geometries.clear()
        self._geometries[spatial] = geometry
        return geometry

    def randomize(self, img: NdarrayOrTensor, key: str = "img") -> None:
        """Draw the blind spots of an input shaped like ``img`` and the flat indices of what replaces them.

        Everything drawn here depends on the shape only; ``__call__`` reads and writes the values.
        """
        super().randomize(None)
        n_img, spatial = self._layout(img, key)
        g = self._geometry(spatial, key)
        starts, strides, half, neighbours = g["starts"], g["strides"], g["half"], g["neighbours"]
        n_spots = len(starts)
        spots = starts + (self.R.random((n_img, n_spots, self.spatial_dims)) * g["sizes"]).astype(np.int64)
        draw = {"shape": tuple(img.shape), "spots": spots @ strides}  # (N, K) flat indices
        if len(self.struct_offsets):
            hidden = spots[:, :, None] + self.struct_offsets  # (N, K, S, ndim)
            inside = ((hidden >= 0) & (hidden < g["size"])).all(-1)
            # hidden pixels outside the image are redirected onto their blind spot, which is written last;
            # where the hidden sets of two spots overlap (cells smaller than the mask) either draw may win
            draw["struct"] = np.where(inside, hidden @ strides, draw["spots"][..., None]).reshape(n_img, -1)
        if self.strategy == "uniform":
            draw["source"] = self._uniform_source(spots, draw, g, key)  # (N, K)
        elif self.strategy == "median":
            # the window's flat indices are separable: one (N, K, 2h+1) table per axis, summed on the device
            draw["window_axes"] = [
                _mirror(spots[..., a, None], np.arange(-h, h + 1), spatial[a]) * strides[a] for a, h in enumerate(half)
            ]
            draw["window_neighbours"] = g["window_neighbours"]
            draw["key"], draw["cells"], draw["spatial"] = key, g["cells"], spatial  # for the error message
        elif self.strategy == "gaussian":
            draw["normal"] = self.R.standard_normal((n_img, n_spots))
        if len(self.struct_offsets):
            draw["struct_uniform"] = self.R.random(draw["struct"].shape)
        self._draw = draw

    def _uniform_source(self, spots: np.ndarray, draw: dict, g: dict, key: str) -> np.ndarray:
        """Flat index (N, K) of the neighbour each blind spot copies: uniform over the window offsets
        whose (mirrored) pixel is neither a blind spot nor a hidden struct pixel of that image.

        One offset is drawn per spot and checked against a flat map of the forbidden pixels. The
        spots whose draw hit one (rare at the usual densities) are redrawn, all at once, while they
        are many (at most ``_REDRAWS`` rounds); those left get their whole window looked up and take
        the r-th valid offset, r uniform over the valid count. Rejection rounds followed by an exact
        draw are uniform over the valid offsets. No loop over pixels or spots; everything depends on
        the shape and ``self.R`` only, so a seed gives the same draw on any device.
        """
        neighbours, strides, size = g["neighbours"], g["strides"], g["size"]
        n_img, n_spots = draw["spots"].shape
        n_pix = int(np.prod(size))
        forbidden = self._forbidden(draw, n_pix)  # flat (N * P,)
        base = (np.arange(n_img) * n_pix)[:, None]
        pick = (self.R.random((n_img, n_spots)) * len(neighbours)).astype(np.int64)
        source = _mirror(spots, neighbours[pick], size) @ strides
        hit = np.flatnonzero(forbidden[source + base])  # into the flattened (N, K)
        for _ in range(self._REDRAWS):  # rejection: redraw only the spots that hit a forbidden pixel
            if len(hit) * len(neighbours) <= self._TABLE_BUDGET:
                break  # few enough for the exact draw at once
            centres = spots.reshape(-1, self.spatial_dims)[hit]
            pick = (self.R.random(len(hit)) * len(neighbours)).astype(np.int64)
            redrawn = _mirror(centres, neighbours[pick], size) @ strides
            source.flat[hit] = redrawn
            hit = hit[forbidden[redrawn + hit // n_spots * n_pix]]
        if len(hit):  # the few left: look up the whole window, take the r-th valid offset
            table = _mirror(spots.reshape(-1, self.spatial_dims)[hit, None], neighbours, size) @ strides  # (H, M)
            valid = ~forbidden[table + (hit // n_spots * n_pix)[:, None]]
            count = valid.sum(1)
            if not count.all():
                raise self._no_neighbour_error(key, g["cells"], tuple(int(n) for n in size))
            r = np.minimum((self.R.random(len(hit)) * count).astype(np.int64), count - 1)
            j = (np.cumsum(valid, 1) > r[:, None]).argmax(1)
            source.flat[hit] = table[np.arange(len(hit)), j]
        return source

    @staticmethod
    def _forbidden(draw: dict, n_pix: int) -> np.ndarray:
        """Flat boolean (N * P,): the blind spots and hidden struct pixels of each image, which no
        replacement reads."""
        n_img = len(draw["spots"])
        forbidden = np.zeros(n_img * n_pix, dtype=bool)
        base = (np.arange(n_img) * n_pix)[:, None]
        forbidden[draw["spots"] + base] = True
        if "struct" in draw:
            forbidden[draw["struct"] + base] = True
        return forbidden

    def _no_neighbour_error(self, key: str, cells: tuple[int, ...], spatial: tuple[int, ...]) -> ValueError:
        struct = " and struct_mask" if len(self.struct_offsets) else ""
        return ValueError(
            f"{key}: a grid of {cells} cells on spatial shape {spatial} is too dense for window {self.window}{struct}: "
            "a blind spot has no neighbour left that is neither a blind spot nor a hidden pixel; "
            "use fewer cells (grid_shape or masked_pixel_percentage) or a larger window."
        )

    # ----- masking -----
    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Return ``(masked, mask)`` for ``img``; see the class docstring."""
        return self._mask(img, randomize, key="img")

    def _mask(self, img: NdarrayOrTensor, randomize: bool, key: str) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        x = convert_to_tensor(img, track_meta=False)  # plain tensor: metadata comes back via `dst=img`
        if randomize:
            self.randomize(x, key)
        if self._draw is None:
            raise RuntimeError("call randomize() before applying RandN2VMask with randomize=False.")
        if tuple(x.shape) != self._draw["shape"]:
            raise ValueError(
                f"{key}: expected shape {self._draw['shape']} (the shape the blind spots were drawn for), "
                f"got {tuple(x.shape)}."
            )
        if not torch.isfinite(x.sum()):  # one cheap pass; the exact check names the problem
            check_finite(x, key)
        dtype = x.dtype if self.dtype is None else get_equivalent_dtype(self.dtype, torch.Tensor)
        flat = x.reshape(len(self._draw["spots"]), -1)
        values = flat if flat.is_floating_point() else flat.float()  # replacements are computed in float
        spots = self._as_tensor("spots", x.device)

        out = flat.to(dtype, copy=True)
        if "struct" in self._draw:
            lo, hi = values.amin(1, keepdim=True), values.amax(1, keepdim=True)
            u = self._as_tensor("struct_uniform", x.device, values.dtype)
            out.scatter_(1, self._as_tensor("struct", x.device), _cast(lo + (hi - lo) * u, dtype))
        mask = torch.zeros(flat.shape, dtype=torch.bool, device=x.device).scatter_(1, spots, True)
        out.scatter_(1, spots, _cast(self._replacement(values, mask), dtype))

        masked, *_ = convert_to_dst_type(out.reshape(x.shape), dst=img, dtype=dtype)
        mask, *_ = convert_to_dst_type(mask.reshape(x.shape), dst=img, dtype=torch.bool)
        return masked, mask

    def _as_tensor(self, name: str, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(self._draw[name], device=device, dtype=dtype)

    def _replacement(self, flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Values (N, K) written at the blind spots ``mask`` (N, P) of the images ``flat`` (N, P)."""
        dev = flat.device
        if self.strategy == "zero":
            return flat.new_zeros(self._draw["spots"].shape)
        if self.strategy == "uniform":
            return flat.gather(1, self._as_tensor("source", dev))
        if self.strategy == "gaussian":
            mean = flat.mean(1, keepdim=True)
            std = (flat - mean).square().mean(1, keepdim=True).sqrt()
            return mean + std * self._as_tensor("normal", dev, flat.dtype)
        window, *others = (torch.as_tensor(t, device=dev) for t in self._draw["window_axes"])
        for axis in others:  # outer sum of the per-axis tables: (N, K, w) -> (N, K, w**ndim)
            window = (window[..., :, None] + axis[..., None, :]).flatten(2)
        src = window[..., self._as_tensor("window_neighbours", dev)].flatten(1)  # (N, K * M)
        shape = (*self._draw["spots"].shape, -1)
        neigh = flat.gather(1, src).reshape(shape)  # (N, K, M)
        # no blind spot (own or other) and no hidden struct pixel enters any median
        forbidden = mask
        if "struct" in self._draw:
            forbidden = mask.clone().scatter_(1, self._as_tensor("struct", dev), True)
        invalid = forbidden.gather(1, src).reshape(shape)
        count = neigh.shape[-1] - invalid.sum(-1, keepdim=True, dtype=torch.int32)  # int32: ~15x faster than int64
        if not bool(count.all()):
            d = self._draw
            raise self._no_neighbour_error(d["key"], d["cells"], d["spatial"])
        neigh = neigh.masked_fill_(invalid, torch.nan)
        lower = neigh.nanmedian(-1, keepdim=True).values  # lower middle of the valid values
        # numpy's median: mean of the two middle values for an even count; the upper middle is the
        # lower one if it is tied past the middle, else the next valid value up
        at_or_below = neigh <= lower  # False at NaN
        tied = at_or_below.sum(-1, keepdim=True, dtype=torch.int32) > count // 2
        above = neigh.masked_fill_(at_or_below | invalid, torch.inf).amin(-1, keepdim=True)
        even = (lower + torch.where(tied, lower, above)) / 2
        return torch.where(count % 2 == 0, even, lower)[..., 0]
