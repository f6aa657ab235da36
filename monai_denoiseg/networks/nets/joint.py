"""Joint denoising - segmentation - fusion network of Wang et al., MICCAI 2024 (section 2.1, Fig. 1a).

    I_c = denoiser(I_n)                  coarse denoised image
    S   = segmenter(I_c)                 affinity logits; S_p = sigmoid(S)
    I_f = fusion(I_c, S_p)               final image, guided by the affinities through IEMs

Each stage is any ``nn.Module`` (ours or MONAI's ``BasicUNet``, ``UNet``, ``DynUNet``,
``SwinUNETR``, ...). The segmenter must return logits; the fusion net receives probabilities
(the reference feeds sigmoid outputs) unless ``fuse_probabilities=False``.

``forward(noisy, guidance=...)`` picks what the fusion net is guided by (:data:`GUIDANCE`, the IEM
controls of issue 14): the segmenter's affinities (``"affinity"``, the paper), nothing
(``"none"``: the IEMs are bypassed, F_o = F_i) or another sample's affinities (``"shuffled"``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from torch import nn

from monai_denoiseg.networks.nets.fusion_unet import IEMFusionUNet, ReferenceUNet
from monai_denoiseg.networks.utils import crop_spatial, pad_to_multiple
from monai_denoiseg.utils.validation import check_spatial_ndim

__all__ = ["JointDenoiSegNet", "paper_joint_net", "STAGES", "GUIDANCE", "shuffle_affinity"]

STAGES = ("denoiser", "segmenter", "fusion")
GUIDANCE = ("affinity", "none", "shuffled")
"""What the fusion net's IEMs see: the segmenter's affinities (the paper), nothing (attention removed)
or another sample's affinities (:func:`shuffle_affinity`)."""


def shuffle_affinity(affinity: torch.Tensor) -> torch.Tensor:
    """Affinities that belong to another sample, deterministically (the same rule at training and test time).

    B > 1: rolled by one along the batch (sample i gets sample i-1's). B == 1 (whole-slice inference):
    rolled by half the spatial size (floor) along every spatial axis, i.e. the affinities of another
    region of the same image. ``(B, C, *spatial)`` in and out.
    """
    if affinity.shape[0] > 1:
        return torch.roll(affinity, shifts=1, dims=0)
    spatial = affinity.shape[2:]
    return torch.roll(affinity, shifts=tuple(s // 2 for s in spatial), dims=tuple(range(2, 2 + len(spatial))))


class JointDenoiSegNet(nn.Module):
    """Denoiser -> segmenter -> fusion, returning a dict of every intermediate output.

    ``forward(noisy)`` returns (B, C, *spatial) tensors under the keys

    - ``"coarse"``: I_c (absent without a denoiser),
    - ``"affinity"``: segmenter logits S, ``"affinity_prob"``: S_p = sigmoid(S),
    - ``"final"``: I_f (absent without a fusion net),
    - ``"denoised"``: the network's best image, ``final`` if present, else ``coarse``.

    ``forward(noisy, guidance="none" | "shuffled")`` gives the IEM controls (see :meth:`forward`).

    Args:
        denoiser: coarse denoiser, or None for the paper's "w/o DN" ablation (the segmenter and the
            fusion net then see the noisy image).
        segmenter: affinity segmenter returning logits.
        fusion: a net called as ``fusion(image, affinity)`` (e.g. :class:`IEMFusionUNet`), or None
            for the "w/o SEG to DN" ablation (the coarse image is the output image).
        fuse_probabilities: feed ``sigmoid(S)`` (True, the reference) or the logits to the fusion net.
        multiple: the input is padded (``pad_mode``) up to a multiple of this and every output
            cropped back, so any size works. None: the least common multiple of the stages'
            ``multiple`` attribute (8 for :class:`ReferenceUNet`); set it for MONAI backbones
            (16 for ``BasicUNet``, 32 for ``SwinUNETR``).
        pad_mode: ``torch.nn.functional.pad`` mode.
    """

    def __init__(
        self,
        denoiser: nn.Module | None,
        segmenter: nn.Module,
        fusion: nn.Module | None,
        fuse_probabilities: bool = True,
        multiple: int | Sequence[int] | None = None,
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__()
        if segmenter is None:
            raise ValueError("segmenter: expected an nn.Module, got None.")
        self.denoiser = denoiser
        self.segmenter = segmenter
        self.fusion = fusion
        self.fuse_probabilities = fuse_probabilities
        if multiple is None:
            stages = (m for m in (denoiser, segmenter, fusion) if m is not None)
            multiple = math.lcm(*(int(getattr(m, "multiple", 1)) for m in stages))
        self.multiple = multiple
        self.pad_mode = pad_mode
        self.frozen: set[str] = set()

    @property
    def use_denoiser(self) -> bool:
        return self.denoiser is not None

    @property
    def use_fusion(self) -> bool:
        return self.fusion is not None

    def forward(
        self, noisy: torch.Tensor, stages: Sequence[str] | None = None, guidance: str = "affinity"
    ) -> dict[str, torch.Tensor]:
        """Run the chain; ``stages`` (a subset of :data:`STAGES`, default: every stage present) picks the
        sub-networks used, e.g. ``("denoiser",)`` for a denoiser alone or ``("segmenter", "fusion")``
        for the "w/o DN" ablation. Each stage takes the output of the previous one present.

        ``guidance`` (one of :data:`GUIDANCE`) is what the fusion net is guided by; the other stages
        and the returned ``"affinity"``/``"affinity_prob"`` (the segmenter's own) never change:

        - ``"affinity"``: the segmenter's affinities (the paper, the default);
        - ``"none"``: the IEMs are bypassed (``fusion(image, None, attend=False)``: F_o = F_i at every
          level), so the final image is the fusion net's plain UNet trunk on I_c and does not depend
          on the affinities (the affinity encoder is unused);
        - ``"shuffled"``: the affinities of another sample, :func:`shuffle_affinity` of the
          (unpadded) affinity map, padded like the image. Gradients still flow through them.

        Without a fusion stage ``guidance`` has no effect (any allowed value is accepted).
        """
        if guidance not in GUIDANCE:
            raise ValueError(f"guidance: expected one of {GUIDANCE}, got {guidance!r}.")
        check_spatial_ndim(noisy, (2, 3), key="noisy", extra_dims=2)
        stages = self.available_stages if stages is None else tuple(stages)
        for name in stages:
            if name not in self.available_stages:
                raise ValueError(f"stages: expected names from {self.available_stages}, got {name!r}.")
        if "fusion" in stages and "segmenter" not in stages:
            raise ValueError(f"stages: 'fusion' needs the 'segmenter' (its affinity input), got {stages}.")
        shape = noisy.shape[2:]
        image = pad_to_multiple(noisy, self.multiple, self.pad_mode)
        out = {}
        if "denoiser" in stages:
            image = out["coarse"] = self.denoiser(image)
        if "segmenter" in stages:
            out["affinity"] = self.segmenter(image)
            out["affinity_prob"] = torch.sigmoid(out["affinity"])
        if "fusion" in stages:
            guide = out["affinity_prob"] if self.fuse_probabilities else out["affinity"]
            if guidance == "none":
                out["final"] = self._fusion_without_attention(image)
            else:
                if guidance == "shuffled":  # shuffle the real map, then pad it as the image was
                    guide = pad_to_multiple(shuffle_affinity(crop_spatial(guide, shape)), self.multiple, self.pad_mode)
                out["final"] = self.fusion(image, guide)
        if "final" in out or "coarse" in out:
            out["denoised"] = out.get("final", out.get("coarse"))
        return crop_spatial(out, shape)

    def _fusion_without_attention(self, image: torch.Tensor) -> torch.Tensor:
        params = inspect.signature(self.fusion.forward).parameters.values()
        if not any(p.name == "attend" or p.kind is p.VAR_KEYWORD for p in params):
            raise ValueError(
                f"guidance: 'none' needs a fusion net whose forward takes 'attend' (e.g. IEMFusionUNet), "
                f"got {type(self.fusion).__name__}."
            )
        return self.fusion(image, None, attend=False)

    @property
    def available_stages(self) -> tuple[str, ...]:
        return tuple(name for name in STAGES if getattr(self, name) is not None)

    # -- freezing (sequential / DMS strategies) ---------------------------------------------
    def freeze(self, *stages: str, frozen: bool = True) -> JointDenoiSegNet:
        """Freeze (or, with ``frozen=False``, unfreeze) stages: no parameter gradients, eval mode.

        A frozen stage keeps its BatchNorm statistics (it stays in eval mode through ``train()``)
        but still passes gradients to its input, so a denoiser can learn through a frozen
        segmenter (DMS) while a frozen denoiser receives none (sequential training).
        """
        for name in stages:
            if name not in STAGES:
                raise ValueError(f"stages: expected names from {STAGES}, got {name!r}.")
            module = getattr(self, name)
            if module is None:
                raise ValueError(f"stages: {name!r} is disabled (None) in this network.")
            module.requires_grad_(not frozen)
            (self.frozen.add if frozen else self.frozen.discard)(name)
        return self.train(self.training)

    def train(self, mode: bool = True) -> JointDenoiSegNet:
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self


def _backbone(kind: str, name: str, spatial_dims: int, in_channels: int, out_channels: int, kwargs: dict) -> nn.Module:
    """Build a paper backbone by name (the DnCNN/RIDNet/TransUNet modules are imported lazily)."""
    choices = {"denoiser": ("unet", "dncnn", "ridnet"), "segmenter": ("unet", "transunet")}[kind]
    if name not in choices:
        raise ValueError(f"{kind}: expected one of {choices}, got {name!r}.")
    if name == "unet":
        return ReferenceUNet(spatial_dims, in_channels, out_channels, **kwargs)
    if name == "dncnn":
        from monai_denoiseg.networks.nets.dncnn import DnCNN as net
    elif name == "ridnet":
        from monai_denoiseg.networks.nets.ridnet import RIDNet as net
    else:
        from monai_denoiseg.networks.nets.transunet import TransUNet as net
    return net(spatial_dims, in_channels, out_channels, **kwargs)


def paper_joint_net(
    spatial_dims: int = 2,
    in_channels: int = 1,
    n_offsets: int = 10,
    denoiser: str = "unet",
    segmenter: str = "unet",
    use_denoiser: bool = True,
    use_fusion: bool = True,
    denoiser_kwargs: dict | None = None,
    segmenter_kwargs: dict | None = None,
    **fusion_kwargs,
) -> JointDenoiSegNet:
    """The paper's joint network in one line; the defaults are its main configuration (dual UNet).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (the denoised images have as many).
        n_offsets: affinity channels (10 offsets in the paper).
        denoiser: ``"unet"`` (:class:`ReferenceUNet`), ``"dncnn"`` or ``"ridnet"`` (Table 3).
        segmenter: ``"unet"`` or ``"transunet"`` (Table 3; its class defaults are a CPU-sized model,
            pass ``segmenter_kwargs=TRANSUNET_PAPER_CONFIG`` for R50-ViT-B/16 sizes).
        use_denoiser: False = the "w/o DN to SEG" ablation.
        use_fusion: False = the "w/o SEG to DN" ablation (denoiser + segmenter, "up").
        denoiser_kwargs, segmenter_kwargs: extra arguments of the backbones.
        fusion_kwargs: extra arguments of :class:`IEMFusionUNet` (``iem_levels``, ``attention_mode``, ...).
    """
    den = None
    if use_denoiser:
        den = _backbone("denoiser", denoiser, spatial_dims, in_channels, in_channels, denoiser_kwargs or {})
    seg = _backbone("segmenter", segmenter, spatial_dims, in_channels, n_offsets, segmenter_kwargs or {})
    fus = IEMFusionUNet(spatial_dims, in_channels, in_channels, n_offsets, **fusion_kwargs) if use_fusion else None
    return JointDenoiSegNet(den, seg, fus)
