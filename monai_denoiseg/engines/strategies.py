"""Training strategies of both papers as data: which stages run, which learn, what they see, which terms.

One trainer (:class:`~monai_denoiseg.engines.trainer.DenoiSegTrainer`) runs every strategy; a new
variant is one more :class:`Strategy` entry, not one more script. A strategy is a configuration of the
one objective, :class:`~monai_denoiseg.losses.DenoiSegLoss` (its terms and weights, see
:data:`~monai_denoiseg.losses.LOSS_TERMS`), plus the stages it runs and trains, the image it feeds and
what the fusion net is guided by (``guidance``: the IEM controls of issue 14).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from monai_denoiseg.losses import LOSS_TERMS, DenoiSegLoss
from monai_denoiseg.networks.nets.joint import GUIDANCE

__all__ = ["Strategy", "STRATEGIES", "get_strategy", "LOSS_TERMS", "INPUTS"]

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
        guidance: what the fusion net's IEMs see: ``"affinity"`` (the segmenter's), ``"none"`` (attention
            removed) or ``"shuffled"`` (another sample's affinities), at training and test time alike.
        paper: where it comes from (paper and table).
    """

    name: str
    stages: tuple[str, ...]
    trainable: tuple[str, ...]
    weights: Mapping[str, float]
    input: str = "noisy"
    pretrain: Mapping[str, str] = field(default_factory=dict)
    guidance: str = "affinity"
    paper: str = ""

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"input: expected one of {INPUTS}, got {self.input!r} in strategy {self.name!r}.")
        unknown = set(self.weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"weights: unknown loss terms {sorted(unknown)} in strategy {self.name!r}.")
        if self.guidance not in GUIDANCE:
            raise ValueError(f"guidance: expected one of {GUIDANCE}, got {self.guidance!r} in strategy {self.name!r}.")
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

    @property
    def self_supervised(self) -> bool:
        """Trained from noisy images alone (no clean image, no labels): it must select without them too."""
        return not self.needs_clean and not self.needs_labels

    @property
    def network_kwargs(self) -> dict:
        """Keyword arguments of :meth:`JointDenoiSegNet.forward` that run this strategy's chain."""
        return {"stages": self.stages, "guidance": self.guidance}

    def objective(self, **kwargs) -> DenoiSegLoss:
        """The strategy's loss: :class:`DenoiSegLoss` with its terms and weights (``kwargs`` as DenoiSegLoss)."""
        return DenoiSegLoss(self.weights, **kwargs)


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
        Strategy("joint_iem_off", (D, S, FU), (D, S, FU), {"res_c": 1.0, "seg": 3.0, "res_f": 50.0},
                 guidance="none", paper="IEM control: the joint model with the IEMs' attention removed"),
        Strategy("joint_shuffled_affinity", (D, S, FU), (D, S, FU), {"res_c": 1.0, "seg": 3.0, "res_f": 50.0},
                 guidance="shuffled", paper="IEM control: the joint model whose fusion net sees another sample's "
                                            "affinities"),
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
