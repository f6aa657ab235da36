"""Joint denoising + segmentation objectives: weighted sums of named loss terms.

* :class:`JointDenoiSegLoss`: ``L_res_c + alpha L_seg + beta L_res_f`` (Wang et al., MICCAI 2024, eq. 6).
* :class:`N2VSegLoss`: ``w1 l_denoise + w2 l_seg`` with a Noise2Void denoising term (the joint
  optical-neuroimaging denoising / semantic-task paper, eq. 3 and 4).

Both return a dict: the total under ``"loss"`` and every computed term under its name (terms whose
prediction is absent are skipped), so a trainer can log each term.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.utils import look_up_option
from torch import nn

from .affinity import WeightedAffinityBCELoss
from .n2v import N2VLoss

__all__ = ["WeightedTermsLoss", "JointDenoiSegLoss", "N2VSegLoss"]


class WeightedTermsLoss(nn.Module):
    """Base of the joint losses: ``total = sum_k weights[k] * terms[k]`` over the terms that are present."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.weights = {name: float(w) for name, w in weights.items()}

    def weighted_sum(self, terms: Mapping[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """``{"loss": total, **present_terms}``; a ``None`` term is skipped, none at all is an error."""
        present = {name: value for name, value in terms.items() if value is not None}
        if not present:
            raise ValueError(f"{type(self).__name__}: no loss term could be computed (terms {sorted(self.weights)}).")
        total = sum(self.weights[name] * value for name, value in present.items())
        return {"loss": total, **present}


def _require(target: torch.Tensor | None, key: str, needed_by: str) -> torch.Tensor:
    if target is None:
        raise ValueError(f"{key}: a target tensor is required when the output has {needed_by!r}, got None.")
    return target


class JointDenoiSegLoss(WeightedTermsLoss):
    """``L = L_res_c + alpha L_seg + beta L_res_f`` (EM-DenoiSeg, MICCAI 2024, eq. 6; alpha 3, beta 50).

    ``output``: the joint network's dict ``{"coarse": I_c, "affinity": S_p (logits), "final": I_f}``;
    a missing key skips its term (e.g. the ablation without fusion has no ``"final"``).
    ``L_res_c``/``L_res_f``: ``restoration_loss(I, clean)``, MSE by default (pass ``nn.L1Loss()`` for L1).
    ``L_seg``: ``segmentation_loss(S_p, affinity, affinity_weight, affinity_mask)``, by default
    :class:`WeightedAffinityBCELoss` on logits. Returns ``{"loss", "res_c", "seg", "res_f"}``.
    """

    def __init__(
        self,
        alpha: float = 3.0,
        beta: float = 50.0,
        restoration_loss: nn.Module | None = None,
        segmentation_loss: nn.Module | None = None,
    ) -> None:
        super().__init__({"res_c": 1.0, "seg": alpha, "res_f": beta})
        self.restoration_loss = restoration_loss if restoration_loss is not None else nn.MSELoss()
        self.segmentation_loss = segmentation_loss if segmentation_loss is not None else WeightedAffinityBCELoss()

    def forward(
        self,
        output: Mapping[str, torch.Tensor],
        clean: torch.Tensor | None = None,
        affinity: torch.Tensor | None = None,
        affinity_weight: torch.Tensor | None = None,
        affinity_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        def restoration(key: str) -> torch.Tensor | None:
            return None if key not in output else self.restoration_loss(output[key], _require(clean, "clean", key))

        seg = None
        if "affinity" in output:
            target = _require(affinity, "affinity", "affinity")
            seg = self.segmentation_loss(output["affinity"], target, affinity_weight, affinity_mask)
        return self.weighted_sum({"res_c": restoration("coarse"), "seg": seg, "res_f": restoration("final")})


class N2VSegLoss(WeightedTermsLoss):
    """``l = w1 l_denoise + w2 l_seg``: Noise2Void denoising trained through a segmentation term.

    ``l_denoise`` = :class:`N2VLoss` (blind-spot MSE). ``mode`` picks the paper's two settings:

    * ``"supervised"`` (w1 = 1, w2 = 1.5): ``l_seg`` = BCE with logits between the segmenter's output
      on the denoised image and the labels;
    * ``"unsupervised"`` (w1 = 9, w2 = 1): ``l_seg`` = MSE between the segmenter's output on the
      denoised image and the output of a frozen pretrained segmenter (an "image style" target).

    ``w_denoise``, ``w_seg`` and ``seg_loss`` override the preset (e.g. ``monai.losses.DiceCELoss``
    for several classes). Returns ``{"loss", "denoise", "seg"}``; without ``segmentation`` only the
    denoising term is computed.
    """

    presets = {"supervised": (1.0, 1.5, nn.BCEWithLogitsLoss), "unsupervised": (9.0, 1.0, nn.MSELoss)}

    def __init__(
        self,
        mode: str = "supervised",
        w_denoise: float | None = None,
        w_seg: float | None = None,
        seg_loss: nn.Module | None = None,
    ) -> None:
        self.mode = look_up_option(mode, tuple(self.presets))
        default_w1, default_w2, default_loss = self.presets[self.mode]
        super().__init__(
            {"denoise": default_w1 if w_denoise is None else w_denoise, "seg": default_w2 if w_seg is None else w_seg}
        )
        self.denoise_loss = N2VLoss()
        self.seg_loss = seg_loss if seg_loss is not None else default_loss()

    def forward(
        self,
        denoised: torch.Tensor,
        noisy: torch.Tensor,
        blind_spots: torch.Tensor,
        segmentation: torch.Tensor | None = None,
        segmentation_target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``denoised``: the denoiser's output on the blind-spot-masked image; ``noisy``: the image before
        masking; ``blind_spots``: the N2V mask; ``segmentation``: the segmenter's output on ``denoised``
        (logits when supervised); ``segmentation_target``: labels, or the frozen segmenter's output."""
        seg = None
        if segmentation is not None:
            target = _require(segmentation_target, "segmentation_target", "segmentation")
            if target.shape == segmentation.shape:  # 0/1 label maps or style images; class indices pass as they are
                target = target.to(segmentation.dtype)
            seg = self.seg_loss(segmentation, target)
        return self.weighted_sum({"denoise": self.denoise_loss(denoised, noisy, blind_spots), "seg": seg})
