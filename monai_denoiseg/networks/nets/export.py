"""One-tensor export wrapper: what ``verify_net_in_out`` and TorchScript runners (``ckpt_export``) consume.

:class:`JointDenoiSegNet` returns a dict of every intermediate output; the MONAI bundle contract wants one
tensor. :class:`ExportNetwork` wraps a trained joint network and returns the outputs a user needs,
concatenated along channels, in this fixed order::

    channel 0 (.. in_channels - 1): the denoised image ("denoised": the fusion net's I_f, else the coarse I_c)
    the next channels:              the segmenter's probabilities ("affinity_prob" = sigmoid(S)), one channel
                                    per affinity offset, in the order of the bundle's ``offsets``
                                    (a binary / mitochondria bundle: one foreground probability channel)

so ``(B, in_channels + n_seg_channels, *spatial)``, float32, the input's spatial shape (any size: the input
is padded to the network's ``multiple`` and the output cropped back, as the dict network does).

Strategies without a denoised image (``seg_only``, ``seg_clean``: the segmenter alone) keep the same layout:
the image channel(s) carry the input unchanged (the segmenter saw the noisy image itself). Strategies without
the segmenter (``dn_only``, ``n2v_only``) have no probabilities and are refused: their export would not
match the bundle's channel contract.

TorchScript. ``torch.jit.script(ExportNetwork(...))`` (what ``ckpt_export`` does without ``--use_trace``)
works: the wrapper itself is scripted, and its :meth:`__prepare_scriptable__` replaces the joint network
by a ``torch.jit.trace`` of it (eval mode, with the weights it holds at that moment). The joint network
cannot be scripted as it is: its stage selection is Python (``getattr``/``inspect`` over optional stages,
``*args`` of ``PadToMultiple``, f-string errors, the IEM's window tokenisation by star-unpacking, ModuleDict
lookups by runtime keys), see docs/bundles.md. The trace only ever sees inputs padded to a multiple of
``multiple`` by the scripted wrapper, so padding, cropping and the channel layout stay dynamic: any spatial
size and batch size run. Traced, the ``"shuffled"`` guidance keeps the batch rule of its example (batch 1:
roll along space), and the dict network's input checks run at export time only.

The wrapper's state dict keys are the wrapped network's under ``network.``; a checkpoint of the plain joint
network (``network_def``'s keys, what the bundles' ``CheckpointSaver`` writes) loads into it as is.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_denoiseg.networks.nets.joint import GUIDANCE, STAGES, JointDenoiSegNet

__all__ = ["ExportNetwork", "export_channel_names"]


class _Chain(nn.Module):
    """``network(x, stages, guidance)`` as a one-argument module (what is traced)."""

    def __init__(self, network: JointDenoiSegNet, stages: tuple[str, ...], guidance: str) -> None:
        super().__init__()
        self.net = network
        self.stages = stages
        self.guidance = guidance

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(x, stages=self.stages, guidance=self.guidance)
        return {k: out[k] for k in ("denoised", "affinity_prob") if k in out}


class ExportNetwork(nn.Module):
    """Wrap a :class:`JointDenoiSegNet`: ``forward(x)`` returns ``cat([denoised, affinity_prob], dim=1)``.

    Args:
        network: the trained joint network (``network_def`` of a bundle).
        strategy: a strategy name (``monai_denoiseg.engines.STRATEGIES``) or anything with ``stages`` and
            ``guidance`` attributes: the stages run and the fusion net's guidance, as at training time.
            None: every stage of ``network``, the paper's guidance.
        spatial_dims: 2 or 3 (the shape of the tracing example).
        in_channels: image channels (of the input and of the denoised image).
    """

    __jit_unused_properties__ = ["network"]

    def __init__(self, network: JointDenoiSegNet, strategy=None, spatial_dims: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        if not isinstance(network, JointDenoiSegNet):
            raise TypeError(f"network: expected a JointDenoiSegNet, got {type(network).__name__}.")
        if isinstance(strategy, str):
            from monai_denoiseg.engines.strategies import get_strategy  # lazy: engines import the networks

            strategy = get_strategy(strategy)
        stages = network.available_stages if strategy is None else tuple(strategy.stages)
        guidance = "affinity" if strategy is None else str(strategy.guidance)
        if guidance not in GUIDANCE or any(s not in STAGES for s in stages):
            raise ValueError(f"strategy: expected stages from {STAGES} and guidance from {GUIDANCE}, got {strategy!r}.")
        if "segmenter" not in stages:
            raise ValueError(
                f"strategy: the export's channels are the denoised image then the segmenter's probabilities; "
                f"stages {stages} run no segmenter (export the denoiser with network_def instead)."
            )
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: expected 2 or 3, got {spatial_dims}.")
        self.chain = _Chain(network, stages, guidance)
        self.has_denoised = "denoiser" in stages or "fusion" in stages
        mult = network.multiple
        self.multiple: list[int] = [int(mult)] * spatial_dims if isinstance(mult, int) else [int(m) for m in mult]
        self.pad_mode: str = network.pad_mode
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self._register_load_state_dict_pre_hook(self._add_prefix)

    @property
    def network(self) -> JointDenoiSegNet:
        return self.chain.net

    @staticmethod
    def _add_prefix(state_dict, prefix, *args) -> None:
        """Accept the plain joint network's keys (``denoiser.…``) as well as the wrapper's (``chain.net.…``)."""
        inner = prefix + "chain.net."
        for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
            state_dict[inner + key[len(prefix):]] = state_dict.pop(key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        pads: list[int] = []
        for i in range(len(self.multiple) - 1, -1, -1):  # F.pad lists the last dim first
            pads += [0, (-shape[i]) % self.multiple[i]]
        padded = F.pad(x, pads, mode=self.pad_mode) if any([p > 0 for p in pads]) else x
        out = self.chain(padded)
        image = out["denoised"] if self.has_denoised else padded
        y = torch.cat([image, out["affinity_prob"]], dim=1)
        for i in range(len(shape)):
            y = y.narrow(2 + i, 0, shape[i])
        return y

    def __prepare_scriptable__(self) -> ExportNetwork:
        """What ``torch.jit.script`` compiles: a copy whose joint network is traced (eval mode, current weights)."""
        chain = self.chain
        param = next(iter(chain.parameters()), None)
        side = [2 * m for m in self.multiple]  # any multiple of ``multiple``: the scripted wrapper pads to one
        example = torch.rand((1, self.in_channels, *side), device=None if param is None else param.device)
        modes = [(m, m.training) for m in chain.modules()]  # restored one by one: modes may be mixed
        chain.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the input checks: export time only
                traced = torch.jit.trace(chain, example, strict=False, check_trace=False)
        finally:
            for m, mode in modes:
                m.training = mode
        scriptable = copy.copy(self)
        scriptable._modules = dict(self._modules)
        scriptable._modules["chain"] = traced
        return scriptable


def export_channel_names(offsets: Sequence[Sequence[int]] | None, in_channels: int = 1,
                         foreground: str = "foreground") -> list[str]:
    """The names of :class:`ExportNetwork`'s channels (``offsets`` None: a binary segmenter's one channel)."""
    image = ["denoised image"] if in_channels == 1 else [f"denoised image channel {c}" for c in range(in_channels)]
    if offsets is None:
        return image + [f"{foreground} probability"]
    return image + [f"affinity probability, offset {tuple(int(v) for v in o)}" for o in offsets]

