"""Whole-slice / whole-volume evaluation as a MONAI evaluator, plus what people expect to see after it.

:class:`DenoiSegEvaluator` iterates over full volumes (a validation or test split), runs
sliding-window inference of the strategy's chain (:func:`~monai_denoiseg.engines.evaluation.predict_volume`),
mutex-watershed instances and the paper's metrics (:func:`~monai_denoiseg.engines.evaluation.evaluate_prediction`),
and puts their means into ``engine.state.metrics`` (``voi``, ``arand``, ``psnr_final``, ...), where
MONAI's ``CheckpointSaver(key_metric_name="voi", key_metric_negative_sign=True)`` keeps the best model.
For the Noise2Void strategies it also computes ``self_supervised_loss``: the strategy's label-free terms on
the volumes with fixed blind spots, which selects a checkpoint without clean images or labels.
After each run it writes ``metrics_<tag>.json``/``.csv`` and a Fig. 2-style PNG to ``output_dir``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import Evaluator

from monai_denoiseg.engines.evaluation import evaluate_prediction, predict_volume, save_metrics
from monai_denoiseg.figures import save_figure
from monai_denoiseg.engines.strategies import Strategy, get_strategy
from monai_denoiseg.losses import DenoiSegLoss
from monai_denoiseg.transforms.affinity import PAPER_OFFSETS_2D
from monai_denoiseg.transforms.n2v import RandN2VMask

SELF_SUPERVISED_TERMS = ("n2v_c", "n2v_f", "style")

__all__ = ["DenoiSegEvaluator", "volumes_to_list"]

logger = logging.getLogger(__name__)


def volumes_to_list(volumes: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]) -> list[dict]:
    """One split dict (:func:`~monai_denoiseg.data.datasets.load_split`) or a list of them -> a list."""
    return [dict(volumes)] if isinstance(volumes, Mapping) else [dict(v) for v in volumes]


class DenoiSegEvaluator(Evaluator):
    """Evaluate a :class:`JointDenoiSegNet` on whole volumes.

    Args:
        device: device of the inference.
        volumes: a split dict ``{"noisy", "clean"?, "label"?}`` of uint8 / id (Z, Y, X) arrays, or a list.
        network: the joint network.
        strategy: whose stages run, on the image it trains on (``"seg_only"``: the segmenter on the noisy image,
            ``"seg_clean"``: on the clean one).
        offsets: affinity offsets of the segmenter's channels (2-D: evaluated per slice; 3-D: per volume);
            None for a binary task (``binary_key``).
        roi_size: sliding-window size (2-D (H, W) or 3-D (D, H, W)); overlap and blending as
            :func:`predict_volume`.
        per: ``"slice"`` (the paper: mean over 2-D slices) or ``"volume"``.
        output_dir: where metrics and figures go (None: nowhere).
        binary_key: a 1-channel probability output to score as a binary mask (IoU, F1) instead of instances.
        mws_kwargs: arguments of the mutex watershed (:class:`AffinityToInstances`).
        summary_writer: optional TensorBoard ``SummaryWriter`` for the image panels.
        tag: names the outputs, ``metrics_<tag>_epoch<e>`` (the trainer's epoch, which MONAI's
            ``ValidationHandler`` passes to ``run``).
        n2v_mask: blind-spot masking of ``self_supervised_loss`` (strategies that train on blind spots;
            default ``RandN2VMask()``); volume ``i`` gets the blind spots of seed ``n2v_seed + i`` every time.
    """

    def __init__(
        self,
        device: str | torch.device,
        volumes,
        network: torch.nn.Module,
        strategy: str | Strategy = "joint",
        offsets: Sequence[Sequence[int]] = PAPER_OFFSETS_2D,
        roi_size: Sequence[int] = (256, 256),
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        per: str = "slice",
        output_dir: str | os.PathLike | None = None,
        binary_key: str | None = None,
        mws_kwargs: Mapping | None = None,
        summary_writer=None,
        tag: str = "val",
        amp: bool = False,
        val_handlers: Sequence | None = None,
        n2v_mask: RandN2VMask | None = None,
        n2v_seed: int = 0,
        **kwargs,
    ) -> None:
        self.volume_list = volumes_to_list(volumes)
        super().__init__(device=device, val_data_loader=self.volume_list, epoch_length=len(self.volume_list),
                         decollate=False, **kwargs)
        self.network = network
        self.strategy = get_strategy(strategy)
        self.offsets = None if offsets is None else [tuple(int(v) for v in o) for o in offsets]
        self.roi_size, self.sw_batch_size, self.overlap = tuple(roi_size), int(sw_batch_size), float(overlap)
        self.spatial_dims = len(self.roi_size)
        self.per = per
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.binary_key, self.mws_kwargs = binary_key, dict(mws_kwargs or {})
        self.summary_writer, self.tag = summary_writer, tag
        self.use_amp = bool(amp)
        self.self_supervised = None
        if self.strategy.uses_blind_spots:
            terms = {t: w for t, w in self.strategy.weights.items() if t in SELF_SUPERVISED_TERMS}
            self.self_supervised = DenoiSegLoss(terms)
            self.n2v_mask = n2v_mask if n2v_mask is not None else RandN2VMask(spatial_dims=self.spatial_dims)
            self.n2v_seed = int(n2v_seed)
        self.results: list[dict[str, float]] = []
        self.add_event_handler(Events.EPOCH_STARTED, lambda _: self.results.clear())
        self.add_event_handler(Events.EPOCH_COMPLETED, self._summarise)
        for handler in val_handlers or ():  # after _summarise: they read the metrics it sets
            handler.attach(self)

    def _iteration(self, engine, volume: Mapping[str, np.ndarray]) -> dict:
        source = "clean" if self.strategy.input == "clean" else "noisy"  # seg_clean segments clean images
        if source not in volume:
            raise KeyError(f"{source}: strategy {self.strategy.name!r} reads it, the volume has {sorted(volume)}.")
        noisy = torch.as_tensor(np.asarray(volume[source], dtype=np.float32) / 255.0)
        # the module itself, so that it runs in eval mode (batch norm's running statistics, nothing updated)
        pred = self._predict(noisy)
        clean = volume.get("clean")
        clean = None if clean is None else np.asarray(clean, dtype=np.float32) / 255.0
        metrics = evaluate_prediction(pred, clean=clean, labels=volume.get("label"), offsets=self.offsets,
                                      per=self.per, mws_kwargs=self.mws_kwargs, binary_key=self.binary_key,
                                      return_instances=True)
        instances = metrics.pop("instances", None)
        if self.self_supervised is not None:
            metrics["self_supervised_loss"] = self._self_supervised_loss(noisy, engine.state.iteration - 1)
        self.results.append(metrics)
        return {"metrics": metrics, "pred": pred, "instances": instances, "volume": volume}

    def _predict(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        # the module itself, so that it runs in eval mode (batch norm's running statistics, nothing updated)
        return predict_volume(self.network, image, self.roi_size, sw_batch_size=self.sw_batch_size,
                              overlap=self.overlap, spatial_dims=self.spatial_dims, device=self.state.device,
                              amp=self.use_amp, network_kwargs=self.strategy.network_kwargs)

    def _self_supervised_loss(self, noisy: torch.Tensor, index: int) -> float:
        """The strategy's label-free terms on the whole volume with fixed blind spots (seed ``n2v_seed + index``)."""
        batch = noisy[:, None] if self.spatial_dims == 2 else noisy[None, None]  # slices (2-D) or the volume
        self.n2v_mask.set_random_state(seed=self.n2v_seed + index)
        masked, blind = self.n2v_mask(batch)
        pred = self._predict(masked[:, 0] if self.spatial_dims == 2 else masked[0, 0])
        pred = {k: v.transpose(0, 1) if self.spatial_dims == 2 else v[None] for k, v in pred.items()}
        with torch.no_grad():
            return float(self.self_supervised(pred, {"noisy": batch, "blind_spots": blind}))

    def _name(self) -> str:
        return f"{self.tag}_epoch{self.state.epoch}"

    def _summarise(self, engine) -> None:
        names = sorted({k for r in self.results for k in r})
        means = {k: float(np.nanmean([r[k] for r in self.results if k in r])) for k in names}
        engine.state.metrics.update(means)
        logger.info("%s: %s", self._name(), {k: round(v, 4) for k, v in means.items()})
        if self.output_dir is None:
            return
        name = self._name()
        save_metrics([{"volume": "mean", **means}] + [{"volume": i, **r} for i, r in enumerate(self.results)],
                     self.output_dir, name=f"metrics_{name}")
        out = engine.state.output or {}
        if out.get("volume") is not None:
            self._figure(out, self.output_dir / f"figure_{name}.png")

    def _figure(self, out: Mapping, path: Path) -> None:
        vol, pred, inst = out["volume"], out["pred"], out["instances"]
        z = np.asarray(vol["noisy"]).shape[0] // 2

        def sl(x, channel=0):
            if x is None:
                return None
            x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            return x[channel, z] if x.ndim == 4 else x[z]

        aff = pred.get("affinity_prob")
        panels = dict(
            noisy=np.asarray(vol["noisy"])[z] / 255.0, coarse=sl(pred.get("coarse")), final=sl(pred.get("final")),
            clean=None if vol.get("clean") is None else np.asarray(vol["clean"])[z] / 255.0,
            affinity=None if aff is None else aff[:2, z].mean(0).numpy(), instances=sl(inst), labels=sl(vol.get("label")),
        )
        save_figure(path, **panels, title=f"{self.strategy.name}: {path.stem}")
        if self.summary_writer is not None:
            step = self.state.epoch
            for key in ("noisy", "coarse", "final", "clean", "affinity"):
                if panels[key] is not None:
                    img = np.clip(np.asarray(panels[key], dtype=np.float32), 0, 1)[None]
                    self.summary_writer.add_image(f"{self.tag}/{key}", img, step)
