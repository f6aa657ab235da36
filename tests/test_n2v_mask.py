"""Tests of the Noise2Void blind-spot masking transforms against plain numpy loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_denoiseg.transforms.n2v import RandN2VMask, RandN2VMaskd

TYPES = ["numpy", "torch", "meta"]


def as_type(arr: np.ndarray, kind: str):
    if kind == "numpy":
        return arr
    if kind == "torch":
        return torch.as_tensor(arr)
    return MetaTensor(torch.as_tensor(arr), affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])), meta={"tag": "x"})


def np_(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def distinct_image(shape, rng) -> np.ndarray:
    """All values distinct, so a replacement value identifies the pixel it was copied from."""
    return rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float32)


def masked_with(transform, img, seed=0):
    transform.set_random_state(seed)
    masked, mask = transform(img)
    return np_(masked), np_(mask)


def expected_cells(spatial, percentage):
    """Closed form of the documented rule: spacing s = (100/p)^(1/ndim), round(L/s) cells per axis."""
    s = (100.0 / percentage) ** (1.0 / len(spatial))
    return [max(1, math.floor(length / s + 0.5)) for length in spatial]


def window_sources(centre, spatial, half, hidden=()):
    """Plain loop: coordinates a neighbour read may come from (window minus centre minus hidden
    offsets and their mirrors, out-of-bounds offsets mirrored through the centre)."""
    hidden_abs = {tuple(abs(v) for v in h) for h in hidden}
    out = []
    for d in itertools.product(*[range(-h, h + 1) for h in half]):
        if not any(d) or tuple(abs(v) for v in d) in hidden_abs:
            continue
        q = []
        for c, di, length in zip(centre, d, spatial):
            qi = c + di
            if qi < 0 or qi >= length:
                qi = c - di
            q.append(qi)
        out.append(tuple(q))
    return out


def source_pixels(img, masked, mask):
    """(spots, sources): flat indices into the whole array ``img`` of every blind spot and of the
    pixel its replacement was copied from. ``img`` holds a permutation of arange, so a value
    identifies the one pixel it came from."""
    flat_img = img.reshape(-1)
    inverse = np.empty(flat_img.size, dtype=np.int64)
    inverse[flat_img.astype(np.int64)] = np.arange(flat_img.size)
    spots_global = np.flatnonzero(mask.reshape(-1))
    sources_global = inverse[masked.reshape(-1)[spots_global].astype(np.int64)]
    return spots_global, sources_global


def forbidden_pixels(mask, lead, offsets=()):
    """Plain loop: the blind spots and every struct-hidden pixel (inside the image) of every blind
    spot, per image and channel; ``lead`` leading (batch/channel) axes."""
    forbidden = mask.copy()
    spatial = mask.shape[lead:]
    for spot in zip(*np.nonzero(mask)):
        for o in offsets:
            q = tuple(int(s) + int(d) for s, d in zip(spot[lead:], o))
            if all(0 <= v < n for v, n in zip(q, spatial)):
                forbidden[spot[:lead] + q] = True
    return forbidden


def struct_offsets_of(struct):
    struct = np.asarray(struct)
    return [tuple(int(v) for v in o) for o in np.argwhere(struct) - np.array(struct.shape) // 2 if any(o)]


def valid_neighbours(img, forbidden, spot, half, hidden=()):
    """Values a median reads at ``spot`` (leading index first): the window sources of the loop above
    without any blind spot or hidden pixel of the same image and channel."""
    lead = img.ndim - len(half)
    qs = window_sources(spot[lead:], img.shape[lead:], half, hidden)
    return [img[spot[:lead] + q] for q in qs if not forbidden[spot[:lead] + q]]


def spots_per_cell(mask_2d_or_3d, cells):
    """Count the blind spots in each cell of the near-equal grid floor(i * L / n)."""
    edges = [[(i * length) // n for i in range(n + 1)] for length, n in zip(mask_2d_or_3d.shape, cells)]
    counts = []
    for idx in itertools.product(*[range(n) for n in cells]):
        sl = tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, idx))
        counts.append(int(mask_2d_or_3d[sl].sum()))
    return counts


# ---------------------------------------------------------------- grid and counts
@pytest.mark.parametrize(
    "shape,spatial_dims,percentage",
    [
        ((1, 64, 64), 2, 0.2),
        ((2, 100, 37), 2, 0.2),  # 100 / 22.36 -> 4 cells of 25; 37 / 22.36 -> 2 cells of 18 and 19
        ((1, 256, 256), 2, 0.2),
        ((1, 64, 64), 2, 1.0),
        ((1, 32, 40, 40), 3, 0.2),
    ],
)
def test_one_blind_spot_per_cell_from_percentage(shape, spatial_dims, percentage, rng):
    img = rng.normal(size=shape).astype(np.float32)
    _, mask = masked_with(RandN2VMask(masked_pixel_percentage=percentage, spatial_dims=spatial_dims), img)
    cells = expected_cells(shape[1:], percentage)
    for c in range(shape[0]):
        assert spots_per_cell(mask[c], cells) == [1] * int(np.prod(cells))
    if shape[1:] == (64, 64) and percentage == 0.2:
        assert mask.sum() == 9  # 64 / 22.36 -> 3 cells per axis


def test_grid_shape_of_the_joint_paper():
    """Zhu & Guan mask 169 pixels of a 256x256 image: a 13x13 grid, one spot per cell."""
    img = np.random.default_rng(1).normal(size=(1, 256, 256)).astype(np.float32)
    _, mask = masked_with(RandN2VMask(grid_shape=13), img)
    assert mask.sum() == 169
    assert spots_per_cell(mask[0], (13, 13)) == [1] * 169


def test_anisotropic_grid_in_3d_batch(rng):
    img = rng.normal(size=(2, 3, 9, 20, 30)).astype(np.float32)
    _, mask = masked_with(RandN2VMask(grid_shape=(2, 4, 5), spatial_dims=3), img)
    for b, c in itertools.product(range(2), range(3)):
        assert spots_per_cell(mask[b, c], (2, 4, 5)) == [1] * 40


def test_positions_cover_every_pixel_of_a_cell(rng):
    """The offset inside a cell is uniform: over many images every pixel of a 4x4 cell is hit."""
    img = rng.normal(size=(400, 8, 8)).astype(np.float32)
    _, mask = masked_with(RandN2VMask(grid_shape=2), img)
    hits = mask.sum(0)
    assert hits.sum() == 400 * 4 and hits.min() > 0  # 25 expected per pixel
    assert hits.max() < 3 * hits.mean()


# ---------------------------------------------------------------- replacement strategies
@pytest.mark.parametrize(
    "shape,spatial_dims,window", [((4, 1, 64, 64), 2, 11), ((3, 48, 40), 2, 5), ((1, 16, 24, 24), 3, 5)]
)
def test_uniform_copies_a_window_neighbour_never_itself(shape, spatial_dims, window, rng):
    img = distinct_image(shape, rng)
    masked, mask = masked_with(RandN2VMask(grid_shape=4, window=window, spatial_dims=spatial_dims), img)
    assert np.array_equal(masked[~mask], img[~mask])  # only blind spots change
    lead = img.ndim - spatial_dims
    where = {v: idx for idx, v in np.ndenumerate(img)}
    half = [window // 2] * spatial_dims
    for spot in zip(*np.nonzero(mask)):
        src = where[masked[spot]]
        assert src[:lead] == spot[:lead]  # same image and channel
        assert src != spot  # never replaced by itself
        assert src[lead:] in window_sources(spot[lead:], img.shape[lead:], half)


def test_uniform_draws_the_whole_window(rng):
    """Over many blind spots away from the borders, all 120 offsets of the 11x11 window occur, none farther."""
    img = distinct_image((300, 64, 64), rng)
    masked, mask = masked_with(RandN2VMask(), img)
    where = {v: idx for idx, v in np.ndenumerate(img)}
    offsets = set()
    for spot in zip(*np.nonzero(mask)):
        if all(5 <= s < 59 for s in spot[1:]):
            src = where[masked[spot]]
            offsets.add((src[1] - spot[1], src[2] - spot[2]))
    assert len(offsets) == 120 and (0, 0) not in offsets
    assert max(max(abs(a), abs(b)) for a, b in offsets) == 5


def test_narrow_axis_still_never_self(rng):
    """An axis shorter than the window narrows it, so the mirrored neighbour stays inside."""
    img = distinct_image((2, 3, 64), rng)
    masked, mask = masked_with(RandN2VMask(grid_shape=(1, 6)), img)
    where = {v: idx for idx, v in np.ndenumerate(img)}
    for spot in zip(*np.nonzero(mask)):
        src = where[masked[spot]]
        assert src != spot and src[1:] in window_sources(spot[1:], (3, 64), (1, 5))


@pytest.mark.parametrize(
    "shape,spatial_dims,window", [((2, 64, 64), 2, 11), ((1, 40, 50), 2, 5), ((1, 16, 32, 32), 3, 11)]
)
def test_median_equals_numpy_median_without_centre(shape, spatial_dims, window, rng):
    img = rng.normal(size=shape).astype(np.float32)
    masked, mask = masked_with(RandN2VMask(strategy="median", window=window, spatial_dims=spatial_dims), img)
    assert np.array_equal(masked[~mask], img[~mask])
    half = [window // 2] * spatial_dims
    forbidden = forbidden_pixels(mask, 1)  # other blind spots are left out of the median too
    for spot in zip(*np.nonzero(mask)):
        neigh = valid_neighbours(img, forbidden, spot, half)
        assert masked[spot] == pytest.approx(np.median(neigh), rel=1e-6, abs=1e-6)


def test_median_even_count_with_ties():
    """Integer-valued data has ties: numpy's median (mean of the two middles) must still hold."""
    img = np.random.default_rng(3).integers(0, 4, size=(8, 30, 30)).astype(np.float32)
    masked, mask = masked_with(RandN2VMask(strategy="median", window=5, grid_shape=3), img)
    forbidden = forbidden_pixels(mask, 1)
    for spot in zip(*np.nonzero(mask)):
        assert masked[spot] == np.median(valid_neighbours(img, forbidden, spot, (2, 2)))


def test_mask_marks_chosen_spots_even_when_value_is_unchanged():
    """On a ramp the median of a symmetric window equals the centre: the spot is still flagged."""
    img = np.tile(np.arange(64, dtype=np.float32), (1, 64, 1))
    masked, mask = masked_with(RandN2VMask(strategy="median", grid_shape=4, window=5), img)
    assert mask.sum() == 16
    interior = mask & (np.arange(64) >= 2) & (np.arange(64) < 62)
    assert interior.any() and np.array_equal(masked[interior], img[interior])


def test_zero_and_gaussian(rng):
    img = rng.normal(5.0, 2.0, size=(64, 1, 64, 64)).astype(np.float32)
    masked, mask = masked_with(RandN2VMask(strategy="zero"), img)
    assert mask.sum() == 64 * 9 and np.all(masked[mask] == 0) and np.array_equal(masked[~mask], img[~mask])
    masked, mask = masked_with(RandN2VMask(strategy="gaussian"), img)
    vals = masked[mask]
    # N(mean, std) of each image: 576 draws of N(5, 2) -> sample mean within 4 standard errors
    assert abs(vals.mean() - 5.0) < 4 * 2.0 / np.sqrt(vals.size)
    assert abs(vals.std() - 2.0) < 0.25
    assert np.array_equal(masked[~mask], img[~mask])


# ---------------------------------------------------------------- structN2V
@pytest.mark.parametrize(
    "struct,spatial_dims,shape",
    [
        (np.array([[1, 1, 1, 1, 1, 1, 1]]), 2, (2, 48, 48)),  # horizontal line, as structN2V
        (np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]), 2, (1, 40, 40)),  # cross
        (np.ones((3, 1, 5), dtype=np.uint8), 3, (1, 12, 24, 24)),  # 3-D slab
    ],
)
def test_struct_pixels_hidden_and_mask_marks_only_centres(struct, spatial_dims, shape, rng):
    img = distinct_image(shape, rng)
    masked, mask = masked_with(RandN2VMask(struct_mask=struct, spatial_dims=spatial_dims, window=7), img)
    spots = list(zip(*np.nonzero(mask)))
    cells = expected_cells(shape[1:], 0.2)
    assert len(spots) == shape[0] * int(np.prod(cells))  # the mask marks only the chosen centres
    offsets = [tuple(int(v) for v in o) for o in np.argwhere(struct) - np.array(struct.shape) // 2 if any(o)]
    hidden = np.zeros(shape, dtype=bool)
    for spot in spots:
        for o in offsets:
            q = tuple(s + d for s, d in zip(spot[1:], o))
            if all(0 <= v < n for v, n in zip(q, shape[1:])):
                hidden[spot[:1] + q] = True
    hidden &= ~mask
    assert hidden.any()
    lo, hi = img.reshape(shape[0], -1).min(1), img.reshape(shape[0], -1).max(1)
    assert np.all(masked[hidden] != img[hidden])  # changed (values are all distinct floats)
    assert np.all((masked[hidden] >= lo[np.nonzero(hidden)[0]]) & (masked[hidden] <= hi[np.nonzero(hidden)[0]]))
    assert np.array_equal(masked[~(hidden | mask)], img[~(hidden | mask)])  # nothing else touched
    # the uniform replacement reads neither a hidden pixel nor one of their mirrors
    where = {v: idx for idx, v in np.ndenumerate(img)}
    for spot in spots:
        src = where[masked[spot]]
        assert src[1:] in window_sources(spot[1:], shape[1:], [3] * spatial_dims, hidden=offsets)


def test_struct_median_excludes_hidden_pixels(rng):
    img = rng.normal(size=(2, 40, 40)).astype(np.float32)
    struct = np.array([[1, 1, 1, 1, 1]])
    masked, mask = masked_with(RandN2VMask(strategy="median", struct_mask=struct, window=5), img)
    hidden = [(0, -2), (0, -1), (0, 1), (0, 2)]
    forbidden = forbidden_pixels(mask, 1, hidden)
    for spot in zip(*np.nonzero(mask)):
        assert len(window_sources(spot[1:], (40, 40), (2, 2), hidden=hidden)) == 20
        neigh = valid_neighbours(img, forbidden, spot, (2, 2), hidden)
        assert masked[spot] == pytest.approx(np.median(neigh), rel=1e-6)


# ---------------------------------------------------------------- blind-spot property
DENSE_CASES = [  # grid spacing (4 or 3 pixels) well below the window: other blind spots in most windows
    ((24, 64, 64), 2, 16, 11, None),
    ((6, 2, 48, 48), 2, 16, 11, None),
    ((8, 48, 48), 2, 12, 7, [[1, 1, 1, 1, 1]]),
    ((8, 48, 48), 2, 12, 5, [[0, 1, 0], [1, 1, 1], [0, 1, 0]]),
    ((3, 12, 18, 18), 3, (4, 6, 6), 5, None),
    ((3, 12, 18, 18), 3, (4, 6, 6), 5, np.ones((1, 1, 3))),
]


@pytest.mark.parametrize("shape,spatial_dims,grid,window,struct", DENSE_CASES)
def test_uniform_never_reads_its_own_pixel(shape, spatial_dims, grid, window, struct):
    """(a) A replacement is never the blind spot's own value, nor copied from another image or channel."""
    lead = len(shape) - spatial_dims
    n_pix = int(np.prod(shape[lead:]))
    for seed in range(4):
        img = distinct_image(shape, np.random.default_rng(seed))
        t = RandN2VMask(grid_shape=grid, window=window, struct_mask=struct, spatial_dims=spatial_dims)
        masked, mask = masked_with(t, img, seed=seed)
        spots, sources = source_pixels(img, masked, mask)
        assert len(spots) == int(np.prod(shape[:lead])) * int(np.prod(t.grid_shape))
        assert np.all(masked.reshape(-1)[spots] != img.reshape(-1)[spots])
        assert np.all(sources != spots)
        assert np.array_equal(sources // n_pix, spots // n_pix)  # same image and channel


@pytest.mark.parametrize("shape,spatial_dims,grid,window,struct", DENSE_CASES)
def test_uniform_never_reads_another_blind_spot_or_hidden_pixel(shape, spatial_dims, grid, window, struct):
    """(b) No replacement copies the original value of any blind spot of the same image and channel,
    nor a struct-hidden pixel of any blind spot: that would leak a target into the network input."""
    lead = len(shape) - spatial_dims
    offsets = [] if struct is None else struct_offsets_of(struct)
    for seed in range(4):
        img = distinct_image(shape, np.random.default_rng(100 + seed))
        t = RandN2VMask(grid_shape=grid, window=window, struct_mask=struct, spatial_dims=spatial_dims)
        masked, mask = masked_with(t, img, seed=seed)
        forbidden = forbidden_pixels(mask, lead, offsets).reshape(-1)
        _, sources = source_pixels(img, masked, mask)
        assert not forbidden[sources].any(), f"{int(forbidden[sources].sum())} replacements read a blind spot"
        # every replacement is still a (mirrored) window neighbour of its own blind spot
        half = [window // 2] * spatial_dims
        for spot, src in zip(zip(*np.nonzero(mask)), zip(*np.unravel_index(sources, shape))):
            assert src[:lead] == spot[:lead]
            assert src[lead:] in window_sources(spot[lead:], shape[lead:], half, hidden=offsets)


def test_uniform_is_uniform_among_valid_neighbours():
    """Excluding other blind spots keeps the draw uniform over the remaining window neighbours: the
    count of each offset matches sum over spots of [offset valid] / #valid (chi-square, 24 offsets)."""
    shape, window = (400, 32, 32), 5
    img = distinct_image(shape, np.random.default_rng(7))
    masked, mask = masked_with(RandN2VMask(grid_shape=8, window=window), img, seed=7)
    forbidden = forbidden_pixels(mask, 1)
    _, sources = source_pixels(img, masked, mask)
    offsets = [d for d in itertools.product(range(-2, 3), repeat=2) if any(d)]
    observed = dict.fromkeys(offsets, 0)
    expected = dict.fromkeys(offsets, 0.0)
    n_excluding = 0
    for spot, src in zip(zip(*np.nonzero(mask)), zip(*np.unravel_index(sources, shape))):
        b, y, x = (int(v) for v in spot)
        if not (2 <= y < 30 and 2 <= x < 30):
            continue  # away from the border: one pixel per offset
        valid = [d for d in offsets if not forbidden[b, y + d[0], x + d[1]]]
        n_excluding += len(valid) < len(offsets)
        for d in valid:
            expected[d] += 1.0 / len(valid)
        observed[(int(src[1]) - y, int(src[2]) - x)] += 1
    assert n_excluding > 1000  # the exclusion is exercised
    chi2 = sum((observed[d] - expected[d]) ** 2 / expected[d] for d in offsets)
    assert chi2 < 60  # 23 degrees of freedom: P(chi2 > 60) < 1e-4


@pytest.mark.parametrize(
    "shape,spatial_dims,grid,window,struct",
    [
        ((6, 48, 48), 2, 12, 11, None),
        ((4, 40, 40), 2, 10, 5, None),
        ((4, 40, 40), 2, 10, 7, [[1, 1, 1, 1, 1]]),
        ((2, 10, 16, 16), 3, (3, 4, 4), 5, None),
    ],
)
def test_median_excludes_every_blind_spot_against_numpy_loop(shape, spatial_dims, grid, window, struct, rng):
    """(d) N2V2's median over the window without any blind spot or hidden pixel, as np.median of
    the remaining values (mean of the two middle ones for an even count), from an explicit loop."""
    img = rng.normal(size=shape).astype(np.float32)
    offsets = [] if struct is None else struct_offsets_of(struct)
    t = RandN2VMask(strategy="median", grid_shape=grid, window=window, struct_mask=struct, spatial_dims=spatial_dims)
    masked, mask = masked_with(t, img, seed=3)
    forbidden = forbidden_pixels(mask, 1, offsets)
    half = [window // 2] * spatial_dims
    n_excluding = n_odd = 0
    for spot in zip(*np.nonzero(mask)):
        window_px = window_sources(spot[1:], shape[1:], half, hidden=offsets)
        kept = [q for q in window_px if not forbidden[spot[:1] + q]]
        n_excluding += len(kept) < len(window_px)
        n_odd += len(kept) % 2
        expected = np.median(np.array([img[spot[:1] + q] for q in kept], dtype=np.float64))
        assert masked[spot] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert n_excluding > 0 and n_odd > 0  # both the exclusion and odd counts are exercised


@pytest.mark.parametrize("strategy", ["uniform", "median"])
@pytest.mark.parametrize(
    "shape,grid,struct",
    [((1, 8, 8), 8, None), ((2, 6, 9), (6, 9), None), ((1, 12, 12), (12, 6), [[0, 0, 0], [1, 1, 1], [0, 0, 0]])],
)
def test_no_valid_neighbour_raises(strategy, shape, grid, struct):
    """Cells so small that a blind spot's window holds only blind spots (or hidden pixels)."""
    t = RandN2VMask(strategy=strategy, grid_shape=grid, window=3, struct_mask=struct)
    with pytest.raises(ValueError, match=r"img: .*grid.*spatial shape .*no neighbour"):
        t(np.zeros(shape, dtype=np.float32))


# the expected counts, worked out by hand from the documented rule (round(L / s) cells per axis,
# s = (100 / p) ** (1 / ndim)) and written down, not recomputed by the code under test
COUNTS = [
    ((1, 64, 64), 2, 0.2, None, 3 * 3),  # s = 22.36: 64 / s = 2.86 -> 3
    ((1, 128, 128), 2, 0.2, None, 6 * 6),  # 5.72 -> 6
    ((1, 256, 256), 2, 0.2, None, 11 * 11),  # 11.45 -> 11
    ((2, 3, 100, 37), 2, 0.2, None, 4 * 2),  # 4.47 -> 4, 1.65 -> 2
    ((1, 64, 64), 2, 1.0, None, 6 * 6),  # s = 10: 6.4 -> 6
    ((1, 64, 64), 2, 5.0, None, 14 * 14),  # s = 4.47: 14.31 -> 14
    ((1, 64, 64, 64), 3, 0.2, None, 8 * 8 * 8),  # s = 7.94: 8.06 -> 8
    ((1, 256, 256), 2, 0.2, 13, 169),  # Zhu & Guan: 169 blind spots per 256x256 image
    ((4, 2, 256, 256), 2, 0.2, 13, 169),
    ((2, 8, 20, 30), 3, 0.2, (2, 4, 5), 40),
]


@pytest.mark.parametrize("shape,spatial_dims,percentage,grid,per_image", COUNTS)
@pytest.mark.parametrize("strategy", ["uniform", "median"])
def test_blind_spot_count_is_exactly_one_per_cell(shape, spatial_dims, percentage, grid, per_image, strategy):
    """(c) Exactly prod(grid) blind spots per image and channel, one in each cell, for several seeds."""
    lead = len(shape) - spatial_dims
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    t = RandN2VMask(masked_pixel_percentage=percentage, grid_shape=grid, strategy=strategy, spatial_dims=spatial_dims)
    cells = expected_cells(shape[lead:], percentage) if grid is None else list(t.grid_shape)
    assert int(np.prod(cells)) == per_image
    for seed in range(3):
        _, mask = masked_with(t, img, seed=seed)
        per = mask.reshape(-1, *shape[lead:])
        assert per.reshape(len(per), -1).sum(1).tolist() == [per_image] * len(per)
        assert mask.mean() == per_image / np.prod(shape[lead:])  # the masked fraction
        for m in per[:2]:
            assert spots_per_cell(m, cells) == [1] * per_image


# ---------------------------------------------------------------- randomness, types, batches
def test_same_seed_same_masks_other_seed_differs(rng):
    img = rng.normal(size=(4, 1, 64, 64)).astype(np.float32)
    t = RandN2VMask(strategy="uniform", struct_mask=[[1, 1, 1]])
    a, ma = masked_with(t, img, seed=7)
    b, mb = masked_with(t, img, seed=7)
    c, mc = masked_with(t, img, seed=8)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(ma, mc)
    # a fresh instance with the same seed gives the same masks too
    d, md = masked_with(RandN2VMask(strategy="uniform", struct_mask=[[1, 1, 1]]), img, seed=7)
    assert np.array_equal(a, d) and np.array_equal(ma, md)


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("strategy", ["uniform", "median"])
def test_container_and_metadata_kept(kind, strategy, rng):
    arr = rng.normal(size=(1, 32, 32)).astype(np.float64)
    img = as_type(arr, kind)
    t = RandN2VMask(strategy=strategy)
    t.set_random_state(0)
    masked, mask = t(img)
    expected = np.ndarray if kind == "numpy" else (MetaTensor if kind == "meta" else torch.Tensor)
    for out in (masked, mask):
        assert isinstance(out, expected) and out.shape == arr.shape
        if kind == "torch":
            assert not isinstance(out, MetaTensor)
    assert np_(masked).dtype == np.float32 and np_(mask).dtype == np.bool_
    if kind == "meta":
        assert masked.meta["tag"] == "x" and torch.equal(masked.affine, img.affine)
        assert torch.equal(mask.affine, img.affine)
    assert np.array_equal(np_(img), arr)  # the target (input) is untouched


def test_batch_and_channels_draw_independently(rng):
    img = distinct_image((3, 2, 64, 64), rng)
    _, mask = masked_with(RandN2VMask(), img)
    assert mask.sum(axis=(2, 3)).tolist() == [[9, 9]] * 3
    positions = {tuple(np.flatnonzero(mask[b, c])) for b in range(3) for c in range(2)}
    assert len(positions) == 6  # every image and channel draws its own blind spots


def test_integer_input_keeps_dtype_when_asked(rng):
    img = rng.integers(0, 256, size=(1, 40, 40)).astype(np.uint8)
    masked, mask = masked_with(RandN2VMask(strategy="median", window=5, dtype=None), img)
    assert masked.dtype == np.uint8
    forbidden = forbidden_pixels(mask, 1)
    for spot in zip(*np.nonzero(mask)):
        neigh = valid_neighbours(img, forbidden, spot, (2, 2))
        assert abs(float(masked[spot]) - np.median(neigh)) <= 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", ["uniform", "median"])
def test_cuda_batch_stays_on_device_and_matches_cpu(strategy, rng):
    img = torch.as_tensor(rng.normal(size=(8, 1, 64, 64)).astype(np.float32))
    t = RandN2VMask(strategy=strategy, struct_mask=[[1, 1, 1]])
    cpu, cpu_mask = masked_with(t, img, seed=2)
    t.set_random_state(2)
    gpu, gpu_mask = t(img.cuda())
    assert gpu.device.type == "cuda" and gpu_mask.device.type == "cuda"
    assert np.array_equal(np_(gpu_mask), cpu_mask)  # the draw comes from self.R, not the device
    np.testing.assert_allclose(np_(gpu), cpu, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- dictionary twin
@pytest.mark.parametrize("kind", TYPES)
def test_dictionary_defaults(kind, rng):
    arr = rng.normal(size=(1, 64, 64)).astype(np.float32)
    t = RandN2VMaskd(keys="image", strategy="median")
    t.set_random_state(5)
    out = t({"image": as_type(arr, kind), "label": 1})
    assert set(out) == {"image", "image_n2v_mask", "image_n2v_target", "label"}
    assert np.array_equal(np_(out["image_n2v_target"]), arr)
    mask = np_(out["image_n2v_mask"])
    assert mask.dtype == np.bool_ and mask.sum() == 9
    ref = RandN2VMask(strategy="median")
    ref_masked, ref_mask = masked_with(ref, arr, seed=5)
    assert np.array_equal(np_(out["image"]), ref_masked) and np.array_equal(mask, ref_mask)
    if kind == "meta":
        assert out["image"].meta["tag"] == "x" and out["image_n2v_mask"].meta["tag"] == "x"


def test_dictionary_postfixes_and_shared_draw(rng):
    a = rng.normal(size=(1, 48, 48)).astype(np.float32)
    b = rng.normal(size=(1, 48, 48)).astype(np.float32)
    t = RandN2VMaskd(keys=["a", "b"], masked_key_postfix="_masked", mask_key_postfix="_m", target_key_postfix=None)
    t.set_random_state(0)
    out = t({"a": a, "b": b})
    assert set(out) == {"a", "b", "a_masked", "b_masked", "a_m", "b_m"}
    assert out["a"] is a and out["b"] is b  # inputs left in place as targets
    assert np.array_equal(out["a_m"], out["b_m"])  # one draw shared by all keys
    t2 = RandN2VMaskd(keys=["a", "b"])
    with pytest.raises(ValueError, match=r"b: expected shape \(1, 48, 48\)"):
        t2({"a": a, "b": b[:, :40]})


def test_dictionary_seed_and_missing_keys(rng):
    img = rng.normal(size=(1, 32, 32)).astype(np.float32)
    t = RandN2VMaskd(keys=["image", "other"], allow_missing_keys=True)
    m1 = t.set_random_state(3)({"image": img})["image_n2v_mask"]
    m2 = t.set_random_state(3)({"image": img})["image_n2v_mask"]
    m3 = t.set_random_state(4)({"image": img})["image_n2v_mask"]
    assert np.array_equal(m1, m2) and not np.array_equal(m1, m3)
    with pytest.raises(KeyError):
        RandN2VMaskd(keys="image")({"label": img})


# ---------------------------------------------------------------- real data
def test_lucchi_crop_median_matches_numpy(lucchi):
    raw = lucchi[0][0, :128, :128].astype(np.float32)
    img = ((raw - raw.mean()) / raw.std())[None]
    t = RandN2VMaskd(keys="image", strategy="median")
    t.set_random_state(0)
    out = t({"image": torch.as_tensor(img)})
    masked, mask = np_(out["image"]), np_(out["image_n2v_mask"])
    assert mask.sum() == 36  # 128 / 22.36 -> 6 cells per axis
    assert np.array_equal(np_(out["image_n2v_target"]), img)
    forbidden = forbidden_pixels(mask, 1)
    for spot in zip(*np.nonzero(mask)):
        neigh = valid_neighbours(img, forbidden, spot, (5, 5))
        assert masked[spot] == pytest.approx(np.median(neigh), abs=1e-5)


def test_medulla_3d_uniform_reads_window(medulla):
    raw = medulla[0][None].astype(np.float32)  # (1, 8, 96, 96)
    masked, mask = masked_with(RandN2VMask(spatial_dims=3, masked_pixel_percentage=1.0, window=5), raw)
    cells = expected_cells(raw.shape[1:], 1.0)
    assert spots_per_cell(mask[0], cells) == [1] * int(np.prod(cells))
    for spot in zip(*np.nonzero(mask)):
        candidates = {raw[(0,) + q] for q in window_sources(spot[1:], raw.shape[1:], (2, 2, 2))}
        assert masked[spot] in candidates


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"masked_pixel_percentage": 0}, "masked_pixel_percentage"),
        ({"masked_pixel_percentage": 150}, "masked_pixel_percentage"),
        ({"masked_pixel_percentage": float("nan")}, "masked_pixel_percentage"),
        ({"grid_shape": 0}, "grid_shape"),
        ({"grid_shape": (3, 3, 3)}, r"grid_shape: expected 2 positive"),
        ({"strategy": "mean"}, "strategy"),
        ({"window": 4}, "window: expected an odd integer"),
        ({"window": 1}, "window"),
        ({"struct_mask": np.ones((3, 3, 3))}, r"struct_mask: expected a binary \(0/1\) 2-D array.*\(3, 3, 3\)"),
        ({"struct_mask": np.ones((1, 4))}, r"odd sides.*\(1, 4\)"),
        ({"struct_mask": [[0, 2, 0]]}, "binary"),
        ({"struct_mask": np.ones((3, 3)), "window": 3}, "hides the whole"),
        ({"spatial_dims": 1}, "spatial_dims"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandN2VMask(**kwargs)


@pytest.mark.parametrize(
    "shape,spatial_dims,match",
    [
        ((64, 64), 2, r"img: expected a 2-D array shaped \(C, H, W\), got shape \(64, 64\)"),
        ((1, 1, 1, 64, 64), 2, r"img: .*\(B, C, H, W\), got shape \(1, 1, 1, 64, 64\)"),
        ((1, 64, 64), 3, r"img: expected a 3-D array shaped \(C, D, H, W\)"),
    ],
)
def test_bad_dimensionality(shape, spatial_dims, match):
    with pytest.raises(ValueError, match=match):
        RandN2VMask(spatial_dims=spatial_dims)(np.zeros(shape, dtype=np.float32))


def test_bad_values_and_sizes_name_the_key():
    img = np.zeros((1, 32, 32), dtype=np.float32)
    img[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"image: expected finite values.*\(1, 32, 32\)"):
        RandN2VMaskd(keys="image")({"image": img})
    with pytest.raises(ValueError, match=r"image: grid_shape \(40, 40\) has more cells than pixels.*\(32, 32\)"):
        RandN2VMaskd(keys="image", grid_shape=40)({"image": np.zeros((1, 32, 32))})
    with pytest.raises(ValueError, match=r"image: spatial shape \(1, 1\) is too small"):
        RandN2VMaskd(keys="image")({"image": np.zeros((1, 1, 1))})
    with pytest.raises(ValueError, match="mask_key_postfix"):
        RandN2VMaskd(keys="image", mask_key_postfix="_n2v_target")
