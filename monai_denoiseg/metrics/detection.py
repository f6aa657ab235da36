"""Detection scores of boxes against ground-truth boxes: precision, recall, F1 at an IoU threshold and the
mean IoU of the recognised objects (the second paper's Tables 2-3 score plaque recognition by IoU and F1).

Boxes are ``StandardMode`` (``monai.data.box_utils``: ``[x0, y0, x1, y1]`` or ``[x0, y0, z0, x1, y1, z1]``),
e.g. from :class:`~monai_denoiseg.transforms.LabelToBoxes` or a MONAI / torchvision detector. A predicted
box recognises the ground-truth box it overlaps most among those still free, if their IoU reaches the
threshold (greedy, one to one, predictions in the order given: detectors return them by descending
score); unmatched predictions are false positives, unmatched ground truth false negatives.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data.box_utils import box_iou
from monai.metrics import CumulativeIterationMetric

__all__ = ["match_boxes", "DetectionMetric"]

SCORES = ("precision", "recall", "f1", "iou")


def match_boxes(pred, gt, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy one-to-one matching, predictions in the order given: ``(pred indices, gt indices, their IoUs)``."""
    pred = torch.as_tensor(pred, dtype=torch.float32).reshape(-1, np.shape(pred)[-1] if np.size(pred) else 4)
    gt = torch.as_tensor(gt, dtype=torch.float32).reshape(-1, pred.shape[-1])
    if len(pred) == 0 or len(gt) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    iou = box_iou(pred, gt).numpy().astype(np.float64)
    free = np.ones(len(gt), dtype=bool)
    matches = []
    for i in range(len(pred)):
        candidates = np.where(free, iou[i], -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_threshold:
            free[j] = False
            matches.append((i, j, iou[i, j]))
    if not matches:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    p, g, v = zip(*matches)
    return np.asarray(p), np.asarray(g), np.asarray(v)


class DetectionMetric(CumulativeIterationMetric):
    """Precision, recall, F1 and mean matched IoU of predicted boxes, accumulated over images.

    Call with lists (one item per image) of ``(N, 2 * spatial_dims)`` predicted and ``(M, 2 * spatial_dims)``
    ground-truth boxes; :meth:`aggregate` returns ``{"precision", "recall", "f1", "iou"}``.

    Args:
        iou_threshold: the IoU at which a prediction recognises a ground-truth box (0.5: Pascal VOC's).
        reduction: ``"image"`` (each score per image, then the mean over images where it is defined, as the
            paper's tables average per image) or ``"total"`` (from the counts summed over all images).
    """

    def __init__(self, iou_threshold: float = 0.5, reduction: str = "image") -> None:
        super().__init__()
        if reduction not in ("image", "total"):
            raise ValueError(f"reduction: expected 'image' or 'total', got {reduction!r}.")
        if not 0 < float(iou_threshold) <= 1:
            raise ValueError(f"iou_threshold: expected a value in (0, 1], got {iou_threshold!r}.")
        self.iou_threshold, self.reduction = float(iou_threshold), reduction

    def __call__(self, y_pred, y=None, **kwargs):
        if not isinstance(y_pred, (list, tuple)) or not isinstance(y, (list, tuple)) or len(y_pred) != len(y):
            raise ValueError("y_pred, y: expected two lists of per-image boxes of one length, got "
                             f"{type(y_pred).__name__} and {type(y).__name__}.")
        return super().__call__([torch.as_tensor(b, dtype=torch.float32) for b in y_pred],
                                [torch.as_tensor(b, dtype=torch.float32) for b in y], **kwargs)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pred, gt = y_pred[0], y[0]  # MONAI adds a batch dim to each list item
        for name, b in (("y_pred", pred), ("y", gt)):
            if b.ndim != 2 or b.shape[-1] not in (4, 6) or (b.numel() and not torch.isfinite(b).all()):
                raise ValueError(f"{name}: expected finite (N, 4) or (N, 6) boxes per image, got shape {tuple(b.shape)}.")
        if len(pred) and len(gt) and pred.shape[-1] != gt.shape[-1]:
            raise ValueError(f"y_pred, y: boxes of different dimensionality, {pred.shape[-1]} and {gt.shape[-1]}.")
        _, _, ious = match_boxes(pred, gt, self.iou_threshold)
        tp = len(ious)
        return torch.tensor([[tp, len(pred) - tp, len(gt) - tp, float(ious.sum())]], dtype=torch.float64)

    @staticmethod
    def _scores(tp, fp, fn, iou_sum) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"precision": tp / (tp + fp), "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn),
                    "iou": iou_sum / tp}

    def aggregate(self) -> dict[str, float]:
        counts = self.get_buffer()
        if counts is None or len(counts) == 0:
            raise ValueError("DetectionMetric: nothing accumulated yet.")
        c = np.asarray(counts, dtype=np.float64).reshape(-1, 4)
        if self.reduction == "total":
            c = c.sum(0, keepdims=True)
        scores = self._scores(*c.T)
        return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in scores.items()}
