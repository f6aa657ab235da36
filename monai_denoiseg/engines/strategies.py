"""Training strategies of both papers as data: which stages run, which learn, what they see, which losses.

One trainer (:class:`~monai_denoiseg.engines.trainer.DenoiSegTrainer`) runs every strategy; a new
variant is one more :class:`Strategy` entry, not one more script. Loss terms (all computed by
:func:`strategy_loss`):

- ``res_c`` / ``res_f``: MSE of the coarse / final image against the clean image;
- ``seg``: weighted affinity BCE (or plain BCE for a binary target) of the segmenter's logits;
- ``n2v_c`` / ``n2v_f``: Noise2Void loss of the coarse / final image at the blind spots, against the
  noisy values before masking (no clean image);
- ``style``: MSE between the denoised image and the frozen segmenter's output on it (the second
  paper's unsupervised "image style" term, see docs/strategies.md for our reading of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from monai_denoiseg.losses import N2VLoss, WeightedAffinityBCELoss

__all__ = ["Strategy", "STRATEGIES", "get_strategy", "strategy_loss", "LOSS_TERMS", "INPUTS"]

LOSS_TERMS = ("res_c", "seg", "res_f", "n2v_c", "n2v_f", "style")
INPUTS = ("noisy", "clean", "masked")
_MICCAI = "Wang et al., MICCAI 2024"
_N2V = "Joint optical neuroimaging denoising with semantic tasks"


@dataclass(frozen=True)
class Strategy:
    """A training strategy.

    Attributes:
        name: registry name.
        stages: sub-networks run in the forward chain (subset of denoiser, segmenter, fusion).
        trainable: stages whose parameters are optimised; the other stages of ``stages`` are frozen.
        weights: loss term -> weight (terms from :data:`LOSS_TERMS`).
        input: what the chain is fed: ``"noisy"``, ``"clean"`` or ``"masked"`` (the blind-spot masked
            noisy image of Noise2Void).
        pretrain: stage -> strategy that trains it first (from a checkpoint if one is given).
        paper: where it comes from (paper and table).
    """

    name: str
    stages: tuple[str, ...]
    trainable: tuple[str, ...]
    weights: Mapping[str, float]
    input: str = "noisy"
    pretrain: Mapping[str, str] = field(default_factory=dict)
    paper: str = ""

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"input: expected one of {INPUTS}, got {self.input!r} in strategy {self.name!r}.")
        unknown = set(self.weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"weights: unknown loss terms {sorted(unknown)} in strategy {self.name!r}.")
        if not set(self.trainable) <= set(self.stages):
            raise ValueError(f"trainable: {self.trainable} not within stages {self.stages} in {self.name!r}.")

    @property
    def frozen(self) -> tuple[str, ...]:
        return tuple(s for s in self.stages if s not in self.trainable)

    @property
    def needs_clean(self) -> bool:
        """True if the clean image is read (as input or target); N2V strategies never read it."""
        return self.input == "clean" or bool({"res_c", "res_f"} & set(self.weights))

    @property
    def needs_labels(self) -> bool:
        return "seg" in self.weights

    @property
    def uses_blind_spots(self) -> bool:
        return self.input == "masked"


D, S, FU = "denoiser", "segmenter", "fusion"
STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("joint", (D, S, FU), (D, S, FU), {"res_c": 1.0, "seg": 3.0, "res_f": 50.0},
                 paper=f"{_MICCAI}, 'Ours' rows of Tables 1-4"),
        Strategy("dn_only", (D,), (D,), {"res_c": 1.0}, paper=f"{_MICCAI}, 'DN-only' (denoising column)"),
        Strategy("seg_only", (S,), (S,), {"seg": 1.0}, paper=f"{_MICCAI}, 'SEG-only': segmenter on noisy images"),
        Strategy("seg_clean", (S,), (S,), {"seg": 1.0}, input="clean",
                 paper=f"{_MICCAI}, the clean-image segmenter that DMS trains through"),
        Strategy("sequential", (D, S), (S,), {"seg": 1.0}, pretrain={D: "dn_only"},
                 paper=f"{_MICCAI}, 'Sequential': frozen pretrained denoiser, segmenter on its output"),
        Strategy("dms", (D, S), (D,), {"res_c": 1.0, "seg": 3.0}, pretrain={S: "seg_clean"},
                 paper=f"{_MICCAI}, 'DMS': denoiser trained through a frozen clean-image segmenter"),
        Strategy("no_denoiser", (S, FU), (S, FU), {"seg": 3.0, "res_f": 50.0},
                 paper=f"{_MICCAI}, Table 4 'w/o DN to SEG'"),
        Strategy("no_fusion", (D, S), (D, S), {"res_c": 1.0, "seg": 3.0},
                 paper=f"{_MICCAI}, Table 4 'w/o SEG to DN'"),
        Strategy("n2v_only", (D,), (D,), {"n2v_c": 1.0}, input="masked", paper=f"{_N2V}, the Noise2Void baseline"),
        Strategy("n2v_joint_supervised", (D, S), (D, S), {"n2v_c": 1.0, "seg": 1.5}, input="masked",
                 pretrain={S: "seg_only"}, paper=f"{_N2V}, supervised end-to-end (eq. 3, w1 = 1, w2 = 1.5)"),
        Strategy("n2v_joint_unsupervised", (D, S), (D,), {"n2v_c": 9.0, "style": 1.0}, input="masked",
                 pretrain={S: "seg_only"}, paper=f"{_N2V}, unsupervised end-to-end (eq. 4, w1 = 9, w2 = 1)"),
        Strategy("n2v_joint_iem", (D, S, FU), (D, S, FU), {"n2v_c": 1.0, "seg": 3.0, "n2v_f": 50.0},
                 input="masked", paper="beyond both papers: the instance-aware joint model without clean images"),
    )
}


def get_strategy(strategy: str | Strategy) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {sorted(STRATEGIES)}, got {strategy!r}.")
    return STRATEGIES[strategy]


_n2v = N2VLoss()
_affinity_bce = WeightedAffinityBCELoss()


def _segmentation_term(logits: torch.Tensor, target: torch.Tensor, weight=None, mask=None) -> torch.Tensor:
    if target.shape != logits.shape:
        raise ValueError(
            f"seg_target: expected the segmenter's output shape {tuple(logits.shape)}, got {tuple(target.shape)}."
        )
    return _affinity_bce(logits, target, weight, mask)


def _style_target(image: torch.Tensor, seg_prob: torch.Tensor) -> torch.Tensor:
    """The frozen segmenter's output as an image: its channel mean when it has more channels than the image."""
    return seg_prob.mean(1, keepdim=True).expand_as(image) if seg_prob.shape[1] != image.shape[1] else seg_prob


def strategy_loss(
    strategy: Strategy,
    output: Mapping[str, torch.Tensor],
    clean: torch.Tensor | None = None,
    noisy: torch.Tensor | None = None,
    blind_spots: torch.Tensor | None = None,
    seg_target: torch.Tensor | None = None,
    seg_weight: torch.Tensor | None = None,
    seg_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``{"loss": sum_k w_k term_k, **terms}`` for the strategy's terms, from the chain's ``output`` dict."""

    def need(value, key: str, term: str):
        if value is None:
            raise ValueError(f"{key}: required by the loss term {term!r} of strategy {strategy.name!r}, got None.")
        return value

    def out(key: str, term: str) -> torch.Tensor:
        if key not in output:
            raise ValueError(f"output[{key!r}]: required by the loss term {term!r}, got keys {sorted(output)}.")
        return output[key]

    terms: dict[str, torch.Tensor] = {}
    for term in strategy.weights:
        if term in ("res_c", "res_f"):
            terms[term] = F.mse_loss(out("coarse" if term == "res_c" else "final", term), need(clean, "clean", term))
        elif term in ("n2v_c", "n2v_f"):
            pred = out("coarse" if term == "n2v_c" else "final", term)
            terms[term] = _n2v(pred, need(noisy, "noisy", term), need(blind_spots, "blind_spots", term))
        elif term == "seg":
            terms[term] = _segmentation_term(out("affinity", term), need(seg_target, "seg_target", term),
                                             seg_weight, seg_mask)
        else:  # style
            image = out("coarse", term)
            terms[term] = F.mse_loss(image, _style_target(image, out("affinity_prob", term)))
    total = sum(strategy.weights[k] * v for k, v in terms.items())
    return {"loss": total, **terms}
