"""The one objective of joint denoising and segmentation: a weighted sum of named loss terms.

:class:`DenoiSegLoss` is what every training strategy and bundle optimises (the trainer's
``loss_function``); :class:`JointDenoiSegLoss` (Wang et al., MICCAI 2024, eq. 6) and
:class:`N2VSegLoss` (the joint optical-neuroimaging denoising / semantic-task paper, eq. 3 and 4) are
its presets. Terms (:data:`LOSS_TERMS`):

- ``res_c`` / ``res_f``: restoration loss (MSE) of the coarse / final image against the clean image;
- ``seg``: weighted affinity BCE of the segmenter's logits (plain BCE for a binary target);
- ``n2v_c`` / ``n2v_f``: Noise2Void loss of the coarse / final image at the blind spots, against the
  noisy values before masking (no clean image);
- ``style``: MSE between the coarse image and the frozen segmenter's output on it (the second paper's
  unsupervised "image style" term; docs/strategies.md gives our reading).

**Intensity scale.** The toolkit feeds images in [0, 1]; the reference code trains on [-1, 1], for
which the weights 1 / 3 / 50 were chosen. Image terms are therefore measured in the reference's units:
both arguments are multiplied by ``intensity_scale = 2`` (the width of [-1, 1] over that of [0, 1]),
so an MSE term equals the reference's MSE of ``2 x - 1`` exactly (4x the MSE on [0, 1]) and every
term keeps the reference's relative magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .affinity import WeightedAffinityBCELoss
from .n2v import N2VLoss

__all__ = ["LOSS_TERMS", "REFERENCE_INTENSITY_SCALE", "DenoiSegLoss", "JointDenoiSegLoss", "N2VSegLoss"]

LOSS_TERMS = ("res_c", "seg", "res_f", "n2v_c", "n2v_f", "style")
REFERENCE_INTENSITY_SCALE = 2.0  # [-1, 1] (the reference's images) is twice as wide as [0, 1] (ours)
_IMAGE_OF = {"res_c": "coarse", "res_f": "final", "n2v_c": "coarse", "n2v_f": "final", "style": "coarse"}
_TARGETS_OF = {"res_c": ("clean",), "res_f": ("clean",), "n2v_c": ("noisy", "blind_spots"),
               "n2v_f": ("noisy", "blind_spots"), "seg": ("seg_target",), "style": ()}


def style_target(image: torch.Tensor, seg_prob: torch.Tensor) -> torch.Tensor:
    """The frozen segmenter's output as an image: its channel mean when it has more channels than the image."""
    return seg_prob.mean(1, keepdim=True).expand_as(image) if seg_prob.shape[1] != image.shape[1] else seg_prob


class DenoiSegLoss(nn.Module):
    """``sum_k weights[k] * term_k`` over the terms named in ``weights`` (from :data:`LOSS_TERMS`).

    ``forward(pred, target)`` follows MONAI's ``loss_function(pred, label)`` contract (a scalar tensor), so
    it plugs into ``SupervisedTrainer``; every term of the last call is kept in ``self.last_terms``
    (detached), and :meth:`terms` returns ``{"loss": total, **terms}`` with gradients.

    ``pred``: the joint network's dict (``"coarse"``, ``"affinity"`` logits, ``"affinity_prob"``,
    ``"final"``). ``target``: a dict with what the terms need: ``"clean"`` (res_*), ``"noisy"`` and
    ``"blind_spots"`` (n2v_*), ``"seg_target"`` with optional ``"seg_weight"`` and ``"seg_mask"`` (seg).
    A term whose prediction or target is missing is a ``ValueError`` naming both.

    Args:
        weights: loss term -> weight.
        intensity_scale: image terms compare ``scale * x`` with ``scale * y`` (2: the reference's [-1, 1]
            units for [0, 1] images; 1: the data's own units).
        restoration_loss: image loss of the res_* and style terms (default MSE; ``nn.L1Loss()`` for L1).
        segmentation_loss: called as ``(logits, seg_target, seg_weight, seg_mask)`` (default
            :class:`WeightedAffinityBCELoss`: with a weight map that is zero at invalid pairs and no mask,
            exactly the reference's ``binary_cross_entropy(p, y, w)``, the mean over all affinities).
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        intensity_scale: float = REFERENCE_INTENSITY_SCALE,
        restoration_loss: nn.Module | None = None,
        segmentation_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        unknown = set(weights) - set(LOSS_TERMS)
        if unknown or not weights:
            raise ValueError(f"weights: expected a non-empty mapping of terms from {LOSS_TERMS}, got {dict(weights)}.")
        if not float(intensity_scale) > 0:
            raise ValueError(f"intensity_scale: expected a positive number, got {intensity_scale!r}.")
        self.weights = {name: float(w) for name, w in weights.items()}
        self.intensity_scale = float(intensity_scale)
        self.restoration_loss = restoration_loss if restoration_loss is not None else nn.MSELoss()
        self.segmentation_loss = segmentation_loss if segmentation_loss is not None else WeightedAffinityBCELoss()
        self.n2v_loss = N2VLoss()
        self.last_terms: dict[str, torch.Tensor] = {}

    def needs(self, key: str) -> bool:
        """True if some term reads ``target[key]`` (e.g. ``"clean"``: the Noise2Void objectives never do)."""
        return any(key in _TARGETS_OF[t] for t in self.weights)

    def forward(self, pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
        terms = self.terms(pred, target)
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return terms["loss"]

    def terms(self, pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor | None]) -> dict:
        """``{"loss": sum_k w_k term_k, **terms}``."""
        def get(source: Mapping, key: str, term: str, kind: str) -> torch.Tensor:
            value = source.get(key)
            if value is None:
                raise ValueError(f"{kind}[{key!r}]: required by the loss term {term!r}, got keys {sorted(source)}.")
            return value.float() if kind == "pred" else value

        s = self.intensity_scale
        out: dict[str, torch.Tensor] = {}
        for term in self.weights:
            if term == "seg":
                logits = get(pred, "affinity", term, "pred")
                seg = get(target, "seg_target", term, "target")
                if seg.shape != logits.shape:
                    raise ValueError(f"target['seg_target']: expected the segmenter's output shape "
                                     f"{tuple(logits.shape)}, got {tuple(seg.shape)}.")
                out[term] = self.segmentation_loss(logits, seg, target.get("seg_weight"), target.get("seg_mask"))
                continue
            image = get(pred, _IMAGE_OF[term], term, "pred")
            if term in ("res_c", "res_f"):
                out[term] = self.restoration_loss(s * image, s * get(target, "clean", term, "target"))
            elif term in ("n2v_c", "n2v_f"):
                noisy, blind = get(target, "noisy", term, "target"), get(target, "blind_spots", term, "target")
                out[term] = self.n2v_loss(s * image, s * noisy, blind)
            else:  # style: the frozen segmenter's probabilities as the image's target
                out[term] = self.restoration_loss(s * image, s * style_target(image, get(pred, "affinity_prob", term,
                                                                                         "pred")))
        return {"loss": sum(self.weights[k] * v for k, v in out.items()), **out}

    def extra_repr(self) -> str:
        return f"weights={self.weights}, intensity_scale={self.intensity_scale}"


class JointDenoiSegLoss(DenoiSegLoss):
    """``L = L_res_c + alpha L_seg + beta L_res_f`` (EM-DenoiSeg, MICCAI 2024, eq. 6; alpha 3, beta 50),
    with image terms in the reference's [-1, 1] units (see :class:`DenoiSegLoss`)."""

    def __init__(self, alpha: float = 3.0, beta: float = 50.0, **kwargs) -> None:
        super().__init__({"res_c": 1.0, "seg": alpha, "res_f": beta}, **kwargs)


class N2VSegLoss(DenoiSegLoss):
    """``l = w1 l_n2v + w2 l_seg``: Noise2Void denoising trained through a segmentation term (second paper).

    ``mode="supervised"`` (eq. 3, w1 = 1, w2 = 1.5): ``l_seg`` = BCE of the segmenter's logits on the
    denoised image against the labels (``target["seg_target"]``). ``mode="unsupervised"`` (eq. 4,
    w1 = 9, w2 = 1): ``l_seg`` = the ``style`` term, MSE between the denoised image and a frozen
    segmenter's output on it (no labels). ``w_denoise`` / ``w_seg`` override the preset.
    """

    presets = {"supervised": (1.0, 1.5, "seg"), "unsupervised": (9.0, 1.0, "style")}

    def __init__(self, mode: str = "supervised", w_denoise: float | None = None, w_seg: float | None = None,
                 **kwargs) -> None:
        if mode not in self.presets:
            raise ValueError(f"mode: expected one of {tuple(self.presets)}, got {mode!r}.")
        w1, w2, seg_term = self.presets[mode]
        self.mode = mode
        super().__init__({"n2v_c": w1 if w_denoise is None else w_denoise, seg_term: w2 if w_seg is None else w_seg},
                         **kwargs)
