"""Instance-segmentation metrics of connectomics: variation of information and adapted Rand error.

Both are functions of the contingency table ``n_ij`` (number of pixels with ground-truth id ``i`` and
predicted id ``j``), its row sums ``a_i`` (ground-truth sizes) and column sums ``b_j`` (segment sizes),
counted over the pixels whose ground-truth id is not ignored (label 0 by default).

* Variation of information (Meila 2007), in **bits** (log base 2, as scikit-image):
  split = H(seg | gt) = (sum a log a - sum n log n) / N,  merge = H(gt | seg) = (sum b log b - sum n log n) / N.
* Adapted Rand error (SNEMI3D, Arganda-Carreras et al. 2015):
  error = 1 - 2 P / (A + B), precision = P / B, recall = P / A, with
  P = sum n^2 - N, A = sum a^2 - N, B = sum b^2 - N (pairs of pixels, self-pairs excluded).

The table is built sparsely in one pass over the pixels: ids are mapped to 0..K-1 (a lookup table
when their range is small, ``np.unique`` otherwise) and the pair ids counted with ``np.bincount``
(``np.unique`` when the table would be large). Ids stay in numpy, so uint64 ids are exact.
The values equal scikit-image's ``variation_of_information(gt, seg, ignore_labels=(0,))`` and
``adapted_rand_error(gt, seg)[0]`` (the MICCAI 2024 EM-DenoiSeg evaluation); scikit-image's precision
and recall outputs are swapped with respect to its own docstring (scikit-image issue #6485), ours
follow the SNEMI3D definitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import MetricReduction, look_up_option

from monai_denoiseg.metrics.slicewise import reduce_values
from monai_denoiseg.utils.validation import check_instance_labels, check_spatial_ndim

__all__ = [
    "VariationOfInformation",
    "AdaptedRandError",
    "variation_of_information",
    "adapted_rand_error",
    "VariationOfInformationMetric",
    "AdaptedRandErrorMetric",
]


class VariationOfInformation(NamedTuple):
    split: float  # H(seg | gt), over-segmentation, bits
    merge: float  # H(gt | seg), under-segmentation, bits
    total: float


class AdaptedRandError(NamedTuple):
    error: float
    precision: float  # pairs joined in both / pairs joined in the segmentation (falls with false merges)
    recall: float  # pairs joined in both / pairs joined in the ground truth (falls with false splits)


def _as_numpy(x, key: str) -> np.ndarray:
    """Integer ids as numpy, without a detour through torch (uint64 stays exact)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    check_instance_labels(arr, key=key)
    if arr.dtype.kind == "f":  # MONAI loads labels as float; ids are whole numbers (checked above)
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    return arr


def _dense_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each id among the sorted distinct ids, the distinct ids): a lookup table when the
    id range is small (no sort), else ``np.unique``."""
    if ids.size == 0:
        return ids.astype(np.int64), ids[:0]
    low, high = ids.min(), ids.max()
    if int(high) - int(low) < 2 * ids.size + 65536:
        shifted = (ids if low == 0 else ids - low).astype(np.int64, copy=False)
        present = np.zeros(int(high) - int(low) + 1, dtype=bool)
        present[shifted] = True
        lut = np.cumsum(present, dtype=np.int64) - 1
        return lut[shifted], np.flatnonzero(present).astype(ids.dtype) + low
    uniq, inverse = np.unique(ids, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), uniq


def _count(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys in [0, n_keys) and how often each occurs (``bincount`` when the range is small)."""
    if n_keys <= 2 * keys.size + 65536:
        counts = np.bincount(keys, minlength=n_keys)
        present = np.flatnonzero(counts)
        return present, counts[present]
    return np.unique(keys, return_counts=True)


def _xlog2x(c: np.ndarray) -> np.ndarray:
    """c log2 c with 0 log 0 = 0 (c float)."""
    return c * np.log2(c, where=c > 0, out=np.ones(c.shape))


def _table_sums(seg: np.ndarray, gt: np.ndarray, ignore_gt: Sequence[int]) -> dict[str, float]:
    """Sums over the contingency table of two flat id arrays, leaving out ground-truth ids in ``ignore_gt``.

    One pass over the pixels counts the (gt id, seg id) pairs; the ground-truth sizes ``a`` and the
    segment sizes ``b`` follow from the distinct pairs. Returns ``n`` (pixels counted) and
    ``joint_xlogx``/``gt_xlogx``/``seg_xlogx`` = sum c log2 c, ``joint_sq``/``gt_sq``/``seg_sq`` = sum c^2
    over the table entries, the ground-truth sizes and the segment sizes.
    """
    gt_d, gt_ids = _dense_ids(gt)
    seg_d, seg_ids = _dense_ids(seg)
    n_seg = max(seg_ids.size, 1)
    keys = gt_d
    keys *= n_seg
    keys += seg_d
    pairs, counts = _count(keys, max(gt_ids.size, 1) * n_seg)
    gt_of, seg_of = np.divmod(pairs, n_seg)
    counted = ~np.isin(gt_ids, ignore_gt)[gt_of]
    gt_of, seg_of, counts = gt_of[counted], seg_of[counted], counts[counted].astype(np.float64)
    gt_sizes, seg_sizes = np.bincount(gt_of, counts), np.bincount(seg_of, counts)
    return {
        "n": counts.sum(),
        "joint_xlogx": _xlog2x(counts).sum(),
        "joint_sq": counts @ counts,
        "gt_xlogx": _xlog2x(gt_sizes).sum(),
        "gt_sq": gt_sizes @ gt_sizes,
        "seg_xlogx": _xlog2x(seg_sizes).sum(),
        "seg_sq": seg_sizes @ seg_sizes,
    }


def _voi(s: dict[str, float]) -> np.ndarray:
    """[split, merge, total] in bits; NaN without counted pixels."""
    with np.errstate(invalid="ignore", divide="ignore"):
        split = np.float64(s["gt_xlogx"] - s["joint_xlogx"]) / s["n"]
        merge = np.float64(s["seg_xlogx"] - s["joint_xlogx"]) / s["n"]
    split, merge = np.maximum(split, 0.0), np.maximum(merge, 0.0)  # clip -1e-16 round-off; NaN stays NaN
    return np.array([split, merge, split + merge])


def _arand(s: dict[str, float]) -> np.ndarray:
    """[adapted Rand error, precision, recall]; NaN where undefined (no pixel pairs)."""
    joint, gt_pairs, seg_pairs = (np.float64(s[k] - s["n"]) for k in ("joint_sq", "gt_sq", "seg_sq"))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.array([1.0 - 2.0 * joint / (gt_pairs + seg_pairs), joint / seg_pairs, joint / gt_pairs])


def _pair(seg, gt) -> tuple[np.ndarray, np.ndarray]:
    seg_np, gt_np = _as_numpy(seg, "seg"), _as_numpy(gt, "gt")
    if seg_np.shape != gt_np.shape:
        raise ValueError(f"seg: expected the shape of gt {gt_np.shape}, got shape {seg_np.shape}.")
    return seg_np.reshape(-1), gt_np.reshape(-1)


def variation_of_information(seg, gt, ignore_gt: Sequence[int] = (0,)) -> VariationOfInformation:
    """Variation of information (bits) of a segmentation ``seg`` against ``gt`` over the whole array.

    Pixels whose ground-truth id is in ``ignore_gt`` are left out. Note the argument order (``seg``
    first): the same value as scikit-image's ``variation_of_information(gt, seg, ignore_labels=ignore_gt)``,
    which returns ``[split, merge]``.
    """
    return VariationOfInformation(*map(float, _voi(_table_sums(*_pair(seg, gt), tuple(ignore_gt)))))


def adapted_rand_error(seg, gt, ignore_gt: Sequence[int] = (0,)) -> AdaptedRandError:
    """Adapted Rand error, precision and recall of ``seg`` against ``gt`` over the whole array (SNEMI3D).

    ``error`` equals scikit-image's ``adapted_rand_error(gt, seg)[0]``; scikit-image returns precision
    and recall in the other order (its issue #6485).
    """
    return AdaptedRandError(*map(float, _arand(_table_sums(*_pair(seg, gt), tuple(ignore_gt)))))


class _ContingencyMetric(CumulativeIterationMetric):
    """Shared machinery: (B, 1, *spatial) id maps -> (B, len(terms)) values, averaged per 2-D slice or per volume."""

    terms: tuple[str, ...] = ()

    def __init__(
        self,
        mode: str = "slice",
        ignore_gt: Sequence[int] = (0,),
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        term: str | None = None,
    ) -> None:
        super().__init__()
        self.mode = look_up_option(mode, ("slice", "volume"))
        self.ignore_gt = tuple(int(i) for i in ignore_gt)
        self.term = None if term is None else look_up_option(term, self.terms)
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def __call__(self, y_pred, y=None, **kwargs: Any):
        """Also accepts numpy arrays (uint64 ids never pass through torch)."""
        if isinstance(y_pred, np.ndarray) or isinstance(y, np.ndarray):
            values = self._compute_tensor(y_pred, y)
            self.extend(values)
            return values
        return super().__call__(y_pred, y, **kwargs)

    def _compute_tensor(self, y_pred, y=None) -> torch.Tensor:  # type: ignore[override]
        """Per-sample values (B, len(terms)), float64; in "slice" mode the mean over the sample's 2-D slices
        (slices along the first spatial axis) that contain ground truth, NaN if none does."""
        if y is None:
            raise ValueError("y: the ground-truth ids are required, got None.")
        seg, gt = _as_numpy(y_pred, "y_pred"), _as_numpy(y, "y")
        check_spatial_ndim(gt, (2, 3), key="y", extra_dims=2)
        if seg.shape != gt.shape or gt.shape[1] != 1:
            raise ValueError(
                f"y_pred: expected one channel of ids shaped like y (B, 1, *spatial) = {gt.shape}, "
                f"got shape {seg.shape}."
            )
        batch = gt.shape[0]
        slices = gt.shape[2] if self.mode == "slice" and gt.ndim == 5 else 1
        pairs = zip(seg.reshape(batch * slices, -1), gt.reshape(batch * slices, -1))
        values = np.stack([self._values(_table_sums(s, g, self.ignore_gt)) for s, g in pairs])
        values = values.reshape(batch, slices, len(self.terms))
        if self.term is not None:
            values = values[..., [self.terms.index(self.term)]]
        counted = ~np.isnan(values)
        n_counted = counted.sum(axis=1)
        per_sample = np.where(counted, values, 0.0).sum(axis=1) / np.maximum(n_counted, 1)
        return torch.as_tensor(np.where(n_counted > 0, per_sample, np.nan), dtype=torch.float64)

    @staticmethod
    def _values(sums: dict[str, float]) -> np.ndarray:
        """The values of ``terms`` from the table sums of one slice or volume."""
        raise NotImplementedError

    @property
    def columns(self) -> tuple[str, ...]:
        """The terms of the per-sample values, in order: ``(term,)`` if one was chosen, else ``terms``."""
        return self.terms if self.term is None else (self.term,)

    def aggregate(self, reduction: MetricReduction | str | None = None):
        """The key term (first column: VOI total / ARAND error, or the chosen ``term``) reduced over samples:
        a scalar with ``"mean"``."""
        return self._reduce(self._buffer_tensor()[:, :1], reduction)

    def aggregate_terms(self, reduction: MetricReduction | str | None = None) -> dict[str, torch.Tensor]:
        """Every term (of ``columns``) reduced over samples, by name."""
        data = self._buffer_tensor()
        return {name: self._reduce(data[:, i : i + 1], reduction) for i, name in enumerate(self.columns)}

    def _buffer_tensor(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{type(self).__name__}: nothing to aggregate, call the metric on a batch first.")
        return data

    def _reduce(self, column: torch.Tensor, reduction):
        f, not_nans = reduce_values(column, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class VariationOfInformationMetric(_ContingencyMetric):
    """Variation of information (bits) as a MONAI cumulative metric, for evaluators and ``IgniteMetricHandler``.

    ``y_pred`` (segmentation) and ``y`` (ground truth): integer ids shaped (B, 1, H, W) or (B, 1, D, H, W),
    tensors or numpy arrays. Per sample: ``[total, split, merge]``; ``mode="slice"`` averages the
    values of the 2-D slices (the EM-DenoiSeg protocol), ``"volume"`` scores each 3-D volume as a whole.
    Ground-truth ids in ``ignore_gt`` are left out. ``aggregate()`` returns the mean total VOI (the key
    metric for checkpoint selection), ``aggregate_terms()`` all three. ``term="split"`` (or ``"merge"``,
    ``"total"``) computes that term alone, per sample (B, 1): one ``IgniteMetricHandler`` per reported number
    (the evaluator's ``voi_split`` / ``voi_merge``).
    """

    terms = ("total", "split", "merge")

    @staticmethod
    def _values(sums: dict[str, float]) -> np.ndarray:
        return _voi(sums)[[2, 0, 1]]


class AdaptedRandErrorMetric(_ContingencyMetric):
    """Adapted Rand error (SNEMI3D) as a MONAI cumulative metric; per sample ``[error, precision, recall]``.

    Same inputs, modes, aggregation and ``term`` (``"error"``, ``"precision"``, ``"recall"``) as
    :class:`VariationOfInformationMetric`; ``aggregate()`` returns the mean error.
    """

    terms = ("error", "precision", "recall")
    _values = staticmethod(_arand)
