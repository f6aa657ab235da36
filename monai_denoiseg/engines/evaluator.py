"""Whole-slice / whole-volume evaluation as a MONAI evaluator, plus what people expect to see after it.

:class:`DenoiSegEvaluator` iterates over full volumes (a validation or test split). Its ``_iteration``
only predicts: sliding-window inference of the strategy's chain
(:func:`~monai_denoiseg.engines.evaluation.predict_volume`), mutex-watershed instances (or the thresholded
mask of a binary task) and, for the Noise2Void strategies, ``self_supervised_loss`` (the strategy's
label-free terms on the volume with fixed blind spots, which selects a checkpoint without clean images or
labels). It returns them in ``engine.state.output`` with the targets, one volume as a batch of one
(:data:`OUTPUT_KEYS`). The metrics are MONAI metric handlers (``IgniteMetricHandler`` around the toolkit's
cumulative metrics) attached through MONAI's ``key_val_metric`` / ``additional_metrics``; by default the
strategy's set of :func:`default_metric_handlers` (``voi``, ``voi_split``, ``voi_merge``, ``arand``,
``psnr_final``, ..., ``iou``/``f1``, ``self_supervised_loss``) with the selection metric
(:func:`monai_denoiseg.bundle.selection_metric`) as key metric, each per 2-D slice and averaged per volume
(``per="slice"``, the paper's protocol) or per volume (``per="volume"``), then over the volumes: the
numbers of :func:`~monai_denoiseg.engines.evaluation.evaluate_prediction`. MONAI's
``CheckpointSaver(key_metric_name="voi", key_metric_negative_sign=True)`` keeps the best model.
After each run it writes ``metrics_<tag>_epoch<N>.json``/``.csv`` (a ``"mean"`` row, the metrics' values,
then one row per volume, their ``metric_details``) and a Fig. 2-style PNG to ``output_dir``.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import Evaluator
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import Cumulative

from monai_denoiseg.engines.evaluation import _channels_4d, _stack_3d, predict_volume, save_metrics, segment
from monai_denoiseg.figures import save_figure
from monai_denoiseg.engines.strategies import Strategy, get_strategy
from monai_denoiseg.losses import DenoiSegLoss
from monai_denoiseg.metrics import (
    AdaptedRandErrorMetric,
    SliceAveragedMetric,
    UnitRangePSNRMetric,
    UnitRangeSSIMMetric,
    VariationOfInformationMetric,
    binary_f1_metric,
    binary_iou_metric,
)
from monai_denoiseg.transforms.affinity import PAPER_OFFSETS_2D
from monai_denoiseg.transforms.n2v import RandN2VMask

SELF_SUPERVISED_TERMS = ("n2v_c", "n2v_f", "style")

#: ``engine.state.output`` of one volume (batch of one, channel first; present when predicted / given):
#: ``coarse``, ``final`` (1, 1, D, H, W) images in [0, 1]; ``affinity_prob`` (1, C, D, H, W);
#: ``instances`` (1, 1, D, H, W) uint64 numpy ids (instance task) or ``mask`` (1, 1, D, H, W) float 0/1
#: (binary task); targets ``clean`` (1, 1, D, H, W) in [0, 1], ``label`` (1, 1, D, H, W) numpy ids,
#: ``label_mask`` (binary task: ``label > 0`` as float); ``self_supervised_loss`` (1, 1) (blind-spot
#: strategies); and ``pred`` (the raw predictions, (C, D, H, W)), ``volume`` (the input dict), ``index``.
OUTPUT_KEYS = ("coarse", "final", "affinity_prob", "instances", "mask", "clean", "label", "label_mask",
               "self_supervised_loss", "pred", "volume", "index")

#: metric name -> lower is better, of the metrics :func:`default_metric_handlers` builds
LOWER_IS_BETTER = {"voi": True, "voi_split": True, "voi_merge": True, "arand": True, "self_supervised_loss": True,
                   "psnr_coarse": False, "ssim_coarse": False, "psnr_final": False, "ssim_final": False,
                   "iou": False, "f1": False}

__all__ = ["DenoiSegEvaluator", "volumes_to_list", "default_metric_handlers", "OUTPUT_KEYS", "LOWER_IS_BETTER"]

logger = logging.getLogger(__name__)


def volumes_to_list(volumes: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]) -> list[dict]:
    """One split dict (:func:`~monai_denoiseg.data.datasets.load_split`) or a list of them -> a list."""
    return [dict(volumes)] if isinstance(volumes, Mapping) else [dict(v) for v in volumes]


def _value_only(key: str) -> Callable:
    return lambda out: (out[key], None)


def default_metric_handlers(
    strategy: str | Strategy = "joint",
    per: str = "slice",
    binary: bool = False,
    clean: bool = True,
    labels: bool = True,
    ignore_gt: Sequence[int] = (0,),
) -> dict[str, IgniteMetricHandler]:
    """The strategy's metric handlers, by name (what ``evaluate_prediction`` reports, plus ``self_supervised_loss``).

    Args:
        strategy: whose outputs exist (denoiser: ``coarse``, fusion: ``final``, segmenter: the affinities).
        per: ``"slice"`` (every metric per 2-D slice, averaged per volume: the paper) or ``"volume"``
            (3-D PSNR, 7x7x7 SSIM, 3-D VOI/ARAND, IoU/F1 of the volume).
        binary: a binary task (``iou``, ``f1`` of ``mask`` against ``label_mask``) instead of instances.
        clean, labels: whether the volumes have a clean image (PSNR, SSIM) / labels (VOI, ARAND, IoU, F1).
        ignore_gt: ground-truth ids left out of VOI and ARAND.

    Every handler is ``IgniteMetricHandler(metric_fn=..., output_transform=from_engine([pred, target]))`` on
    the keys of :data:`OUTPUT_KEYS`; a bundle writes the same in YAML to swap or add one.
    """
    s = get_strategy(strategy)
    handlers: dict[str, IgniteMetricHandler] = {}
    if labels and "segmenter" in s.stages:
        if binary:
            for name, fn in (("iou", binary_iou_metric), ("f1", binary_f1_metric)):
                handlers[name] = IgniteMetricHandler(
                    metric_fn=SliceAveragedMetric(fn(reduction="none"), mode=per),
                    output_transform=from_engine(["mask", "label_mask"]))
        else:
            for name, term in (("voi", "total"), ("voi_split", "split"), ("voi_merge", "merge")):
                handlers[name] = IgniteMetricHandler(
                    metric_fn=VariationOfInformationMetric(mode=per, ignore_gt=ignore_gt, term=term),
                    output_transform=from_engine(["instances", "label"]))
            handlers["arand"] = IgniteMetricHandler(
                metric_fn=AdaptedRandErrorMetric(mode=per, ignore_gt=ignore_gt, term="error"),
                output_transform=from_engine(["instances", "label"]))
    if clean:
        for key, stage in (("coarse", "denoiser"), ("final", "fusion")):
            if stage not in s.stages:
                continue
            handlers[f"psnr_{key}"] = IgniteMetricHandler(
                metric_fn=SliceAveragedMetric(UnitRangePSNRMetric(data_range=1.0), mode=per),
                output_transform=from_engine([key, "clean"]))
            # a 3-D SSIM needs 7 slices, else per slice (as evaluate_prediction)
            handlers[f"ssim_{key}"] = IgniteMetricHandler(
                metric_fn=SliceAveragedMetric(UnitRangeSSIMMetric(spatial_dims=2, data_range=1.0), mode=per,
                                              volume_metric_fn=UnitRangeSSIMMetric(spatial_dims=3, data_range=1.0),
                                              min_depth=7),
                output_transform=from_engine([key, "clean"]))
    if s.uses_blind_spots:
        handlers["self_supervised_loss"] = IgniteMetricHandler(loss_fn=torch.nn.Identity(),
                                                               output_transform=_value_only("self_supervised_loss"))
    return handlers


def _sync_locally(self) -> None:
    """``Cumulative._sync`` without the all-gather: the buffers of this process, as one tensor each."""
    if self._synced or self._buffers is None:
        return
    self._synced_tensors = [torch.stack(b, dim=0) for b in self._buffers]
    self._synced = True


def _is_number(v) -> bool:
    if isinstance(v, torch.Tensor):
        return v.numel() == 1
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def _lower_is_better(current, best) -> bool:
    return current < best


def _higher_is_better(current, best) -> bool:
    return current > best


def _per_volume(details, n: int, first_column: bool = False) -> list[float] | None:
    """One value per volume from a handler's ``metric_details`` (its buffer, one row per volume; the NaN-ignoring
    mean of a row's channels, or its first column for a metric that aggregates that one), else None."""
    if not isinstance(details, torch.Tensor) or details.ndim == 0 or details.shape[0] != n:
        return None
    rows = details.detach().double().reshape(n, -1).cpu().numpy()
    rows = rows[:, :1] if first_column else rows
    out = []
    for r in rows:
        r = r[~np.isnan(r)]
        out.append(float(r.mean()) if r.size else float("nan"))
    return out


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
        per: ``"slice"`` (the paper: mean over 2-D slices) or ``"volume"``: the protocol of the default metrics.
        output_dir: where metrics and figures go (None: nowhere).
        binary_key: a 1-channel probability output to score as a binary mask (IoU, F1) instead of instances.
        mws_kwargs: arguments of the mutex watershed (:class:`AffinityToInstances`).
        summary_writer: optional TensorBoard ``SummaryWriter`` for the image panels.
        tag: names the outputs, ``metrics_<tag>_epoch<e>`` (the trainer's epoch, which MONAI's
            ``ValidationHandler`` passes to ``run``).
        val_handlers: MONAI / ignite handlers, attached after the metrics and the metrics files.
        n2v_mask: blind-spot masking of ``self_supervised_loss`` (strategies that train on blind spots;
            default ``RandN2VMask()``); volume ``i`` gets the blind spots of seed ``n2v_seed + i`` every time.
        key_val_metric: MONAI's: ``{name: metric handler}``, the key metric (``state.key_metric_name``,
            ``state.best_metric``). Default: the selection metric of the strategy
            (:func:`monai_denoiseg.bundle.selection_metric`) from :func:`default_metric_handlers`.
        additional_metrics: MONAI's: more ``{name: metric handler}``, added to (or replacing, by name) the
            strategy's default set (without its key metric, if ``key_val_metric`` names another).
        default_metrics: False: only the metrics given, no default set.
        metric_cmp_fn: MONAI's comparison of the key metric with the best so far; default: lower is better
            for the names of :data:`LOWER_IS_BETTER` marked so, higher otherwise.
        progress: a progress bar over each volume's prediction (the long part of a test evaluation).
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
        key_val_metric: Mapping | None = None,
        additional_metrics: Mapping | None = None,
        default_metrics: bool = True,
        metric_cmp_fn: Callable | None = None,
        progress: bool = False,
        **kwargs,
    ) -> None:
        if per not in ("slice", "volume"):
            raise ValueError(f"per: expected 'slice' or 'volume', got {per!r}.")
        self.volume_list = volumes_to_list(volumes)
        self.progress = bool(progress)
        self.strategy = get_strategy(strategy)
        self.per = per
        key, metrics = self._metrics(key_val_metric, additional_metrics, default_metrics, binary_key is not None)
        self._metric_handlers = dict(metrics)
        for handler in metrics.values():  # every rank that runs the evaluator scores all its volumes (in the
            fn = getattr(handler, "metric_fn", None)  # bundles' DDP, rank 0 alone): nothing to gather, and an
            if isinstance(fn, Cumulative):  # all-gather would wait forever for the ranks that do not validate
                fn._sync = types.MethodType(_sync_locally, fn)
        if metric_cmp_fn is None:
            metric_cmp_fn = _lower_is_better if LOWER_IS_BETTER.get(key, False) else _higher_is_better
        super().__init__(device=device, val_data_loader=self.volume_list, epoch_length=len(self.volume_list),
                         decollate=False, key_val_metric=None if key is None else {key: metrics.pop(key)},
                         additional_metrics=metrics, metric_cmp_fn=metric_cmp_fn, **kwargs)
        self.network = network
        self.offsets = None if offsets is None else [tuple(int(v) for v in o) for o in offsets]
        self.roi_size, self.sw_batch_size, self.overlap = tuple(roi_size), int(sw_batch_size), float(overlap)
        self.spatial_dims = len(self.roi_size)
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
        self.add_event_handler(Events.EPOCH_COMPLETED, self._summarise)  # after the metrics (attached above)
        for handler in val_handlers or ():  # after _summarise, as before: e.g. CheckpointSaver on the key metric
            handler.attach(self)

    def _metrics(self, key_val_metric, additional_metrics, default_metrics: bool, binary: bool):
        """(key metric name or None, {name: handler} of every metric, the key's first)."""
        if key_val_metric is not None and len(key_val_metric) != 1:
            raise ValueError(f"key_val_metric: expected one {{name: metric handler}}, got {len(key_val_metric)}.")
        metrics: dict = {}
        if default_metrics:
            from monai_denoiseg.bundle.config import selection_metric

            has = {k: all(v.get(k) is not None for v in self.volume_list) for k in ("clean", "label")}
            metrics = default_metric_handlers(self.strategy, self.per, binary, clean=has["clean"], labels=has["label"])
            if key_val_metric is None and metrics:
                preferred = selection_metric(self.strategy.name, binary)[0]
                fallback = [k for k in ("voi", "iou", "psnr_final", "psnr_coarse") if k in metrics]
                key = preferred if preferred in metrics else (fallback + list(metrics))[0]
                metrics = {key: metrics.pop(key), **metrics}
        if key_val_metric is not None:
            metrics.pop(next(iter(key_val_metric)), None)
            metrics = {**dict(key_val_metric), **metrics}
        metrics.update(additional_metrics or {})
        return (next(iter(metrics)) if metrics else None), metrics

    def _iteration(self, engine, volume: Mapping[str, np.ndarray]) -> dict:
        """Predict and post-process one volume; the outputs and targets as :data:`OUTPUT_KEYS` (no metrics)."""
        source = "clean" if self.strategy.input == "clean" else "noisy"  # seg_clean segments clean images
        if source not in volume:
            raise KeyError(f"{source}: strategy {self.strategy.name!r} reads it, the volume has {sorted(volume)}.")
        image = torch.as_tensor(np.asarray(volume[source], dtype=np.float32) / 255.0)
        pred = self._predict(image)
        index = engine.state.iteration - 1
        out: dict = {"pred": pred, "volume": volume, "index": index}
        for key in ("coarse", "final", "affinity_prob"):
            if pred.get(key) is not None:
                out[key] = torch.as_tensor(_channels_4d(pred[key], key))[None]
        labels = volume.get("label")
        if labels is not None:
            out["label"] = _stack_3d(labels, "label")[None, None]
        if volume.get("clean") is not None:
            out["clean"] = torch.as_tensor(np.asarray(volume["clean"], dtype=np.float32) / 255.0)[None, None]
        if self.binary_key is not None:
            if pred.get(self.binary_key) is not None:  # a denoiser alone segments nothing
                prob = _channels_4d(pred[self.binary_key], self.binary_key)
                if prob.shape[0] != 1:
                    raise ValueError(f"{self.binary_key}: expected a 1-channel probability, got shape {prob.shape}.")
                out["mask"] = torch.as_tensor(prob[0] > 0.5, dtype=torch.float32)[None, None]
            if labels is not None:
                out["label_mask"] = torch.as_tensor(out["label"] > 0, dtype=torch.float32)
        elif pred.get("affinity_prob") is not None:
            out["instances"] = segment(_channels_4d(pred["affinity_prob"], "affinity_prob"), self.offsets,
                                       **self.mws_kwargs)[None, None]
        for key, target in (("instances", "label"), ("mask", "label_mask")):
            if key in out and target in out and out[key].shape != out[target].shape:
                raise ValueError(f"labels: expected the shape of the prediction {tuple(out[key].shape[2:])}, "
                                 f"got {tuple(out[target].shape[2:])}.")
        if self.self_supervised is not None:
            loss = self._self_supervised_loss(image, index)  # blind-spot strategies read the noisy image
            out["self_supervised_loss"] = torch.tensor([[loss]], dtype=torch.float64)
        return out

    def _predict(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        # the module itself, so that it runs in eval mode (batch norm's running statistics, nothing updated)
        return predict_volume(self.network, image, self.roi_size, sw_batch_size=self.sw_batch_size,
                              overlap=self.overlap, spatial_dims=self.spatial_dims, device=self.state.device,
                              amp=self.use_amp, network_kwargs=self.strategy.network_kwargs, progress=self.progress)

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

    def per_volume_metrics(self) -> list[dict[str, float]]:
        """One ``{name: value}`` per volume of the last run, from the metric handlers' ``metric_details``."""
        n = len(self.volume_list)
        rows: list[dict[str, float]] = [{} for _ in range(n)]
        details = getattr(self.state, "metric_details", {}) or {}
        for name in sorted(details):
            handler = self._metric_handlers.get(name)
            first = hasattr(getattr(handler, "metric_fn", None), "columns")  # VOI / ARAND: their first term
            values = _per_volume(details[name], n, first_column=first)
            for row, v in zip(rows, values or ()):
                row[name] = v
        return rows

    def _summarise(self, engine) -> None:
        means = {k: float(v) for k, v in sorted(engine.state.metrics.items()) if _is_number(v)}
        logger.info("%s: %s", self._name(), {k: round(v, 4) for k, v in means.items()})
        if self.output_dir is None:
            return
        name = self._name()
        rows = [{"volume": "mean", **means}] + [{"volume": i, **r} for i, r in enumerate(self.per_volume_metrics())]
        save_metrics(rows, self.output_dir, name=f"metrics_{name}")
        out = engine.state.output or {}
        if out.get("volume") is not None:
            self._figure(out, self.output_dir / f"figure_{name}.png")

    def _figure(self, out: Mapping, path: Path) -> None:
        vol, pred = out["volume"], out["pred"]
        inst = out.get("instances", out.get("mask"))
        inst = None if inst is None else np.asarray(inst)[0, 0]
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
