"""One MONAI trainer for every strategy of both papers (``monai_denoiseg.engines.strategies``).

:class:`DenoiSegTrainer` is a :class:`monai.engines.SupervisedTrainer` and keeps its iteration, events
(``IterationEvents``), AMP and gradient accumulation. A strategy changes only what MONAI lets a trainer
configure: ``prepare_batch`` (:class:`StrategyBatch`: the chain's input, noisy, clean or blind-spot
masked on the training device, and the targets), ``loss_function`` (the strategy's
:class:`~monai_denoiseg.losses.DenoiSegLoss`, or any objective passed in) and the network's keyword
arguments (the stages run, the fusion net's guidance). Every loss term is logged per iteration
(``engine.state.output["terms"]``) and averaged per epoch (``engine.state.metrics["train_<term>"]``).
Stages a strategy needs pretrained are loaded from a checkpoint, or trained first by a nested trainer of
the same class (:meth:`DenoiSegTrainer.pretrain`) and cached under a key of everything that determines them.

Reproducibility: batches come from :class:`~monai_denoiseg.data.datasets.PatchDataset` (each item a
function of seed, epoch and index; the trainer calls ``set_epoch``), the blind spots are drawn from
(seed, iteration), and so is dropout: ``nn.Dropout`` takes no generator, so each iteration runs on a fork
of torch's global generator seeded from (seed, iteration) and restored after it, which leaves the
caller's random stream where it was. A run resumed from an epoch-end checkpoint (model, optimiser,
scheduler, trainer state) therefore repeats the uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Events
from ignite.handlers import Checkpoint
from ignite.metrics import Average
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver, LrScheduleHandler
from torch import nn

from monai_denoiseg.engines.handlers import (EPOCH_PATTERN, AtomicDiskSaver, ResumeFromCheckpoint,
                                             attach_validation_log, checkpoint_candidates, make_atomic)
from monai_denoiseg.engines.strategies import Strategy, get_strategy
from monai_denoiseg.networks.nets.joint import STAGES, JointDenoiSegNet
from monai_denoiseg.transforms.n2v import RandN2VMask
from monai_denoiseg.losses import LOSS_TERMS
from monai_denoiseg.provenance import config_hash
from monai_denoiseg.utils.atomic import atomic_path

__all__ = ["DenoiSegTrainer", "StrategyBatch", "make_optimizer", "poly_scheduler", "load_stage", "load_network_weights", "stage_state_dict",
           "latest_checkpoint"]

logger = logging.getLogger(__name__)
SEG_TARGET_KEYS = ("affinity", "affinity_weight")


def make_optimizer(
    network: JointDenoiSegNet,
    strategy: str | Strategy,
    lr: float = 1e-4,
    stage_lr: Mapping[str, float] | None = None,
    eps: float = 0.01,
    weight_decay: float = 1e-6,
    amsgrad: bool = True,
) -> torch.optim.Adam:
    """Adam over the strategy's trainable stages, one parameter group per stage (``stage_lr`` overrides
    a stage's learning rate). Defaults are the reference code's (lr 1e-4, eps 0.01, AMSGrad, wd 1e-6):
    its three per-network Adams with equal settings are this one optimiser."""
    strategy = get_strategy(strategy)
    groups = []
    for name in strategy.trainable:
        stage = getattr(network, name, None)
        if stage is None:
            raise ValueError(f"network.{name}: strategy {strategy.name!r} trains it, but the network has none.")
        groups.append({"params": list(stage.parameters()), "lr": (stage_lr or {}).get(name, lr), "stage": name})
    return torch.optim.Adam(groups, lr=lr, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def poly_scheduler(optimizer: torch.optim.Optimizer, total_iterations: int, power: float = 0.9):
    """The paper's poly decay, ``lr * (1 - it / total) ** power``, stepped once per iteration."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=int(total_iterations), power=power)


def stage_state_dict(network: JointDenoiSegNet, stage: str) -> dict[str, torch.Tensor]:
    return getattr(network, stage).state_dict()


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest epoch-end checkpoint (``*epoch=<n>.pt``) in ``folder``, or None (loadable or not: resuming
    uses :class:`~monai_denoiseg.engines.handlers.ResumeFromCheckpoint`, which skips unreadable ones)."""
    found = checkpoint_candidates(folder)
    return found[0] if found else None


def load_network_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a trained network's state dict (or a MONAI checkpoint with a ``"network"`` entry) from ``path``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no trained weights at {str(path)!r}; train first, or pass --checkpoint.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("network"), Mapping):
        state = state["network"]
    target = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    target.load_state_dict(state)
    return network


def load_stage(network: JointDenoiSegNet, stage: str, path: str | os.PathLike) -> None:
    """Load one stage's weights from a file holding that stage's state dict, a whole joint network's
    (keys prefixed ``"<stage>."``), or a MONAI checkpoint dict with a ``"network"`` entry."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained[{stage!r}]: no checkpoint at {str(path)!r}.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "network" in state and isinstance(state["network"], Mapping):
        state = state["network"]
    prefix = f"{stage}."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    getattr(network, stage).load_state_dict(state)


def _savers_of(engine) -> list[CheckpointSaver]:
    """The MONAI ``CheckpointSaver`` attached to ``engine`` (found through its event handlers)."""
    found: list[CheckpointSaver] = []
    for entries in getattr(engine, "_event_handlers", {}).values():
        for fn, _, _ in entries:
            fn = fn._parent() if hasattr(fn, "_parent") else fn  # handlers of filtered events are wrapped
            owner = getattr(fn, "__self__", None)
            if isinstance(owner, CheckpointSaver) and all(owner is not f for f in found):
                found.append(owner)
    return found


class StrategyBatch:
    """``prepare_batch`` of :class:`DenoiSegTrainer`: a dict batch -> ``(chain input, targets, (), network kwargs)``.

    The one place where a strategy's input is made, on the training device: the noisy image, the clean
    one, or (Noise2Void strategies) the noisy image with blind spots drawn by ``n2v_mask`` from
    ``(seed, iteration)``. ``targets`` is the dict :class:`~monai_denoiseg.losses.DenoiSegLoss` reads:
    ``clean`` (only if the objective needs it: the self-supervised strategies never see it), ``noisy``,
    ``blind_spots``, ``seg_target`` / ``seg_weight`` / ``seg_mask`` (from ``seg_target_keys``; items
    whose ``"labelled"`` flag is 0 are masked out of the segmentation term).

    Args:
        strategy: the strategy whose input is prepared.
        n2v_mask: the blind-spot masking (:class:`RandN2VMask`).
        seg_target_keys: batch keys of the segmentation target, weight and mask (weight and mask optional).
        needs_clean: keep ``"clean"`` among the targets.
        seed: base seed of the blind spots; :attr:`iteration` (set by the trainer) is the other part.
    """

    def __init__(self, strategy: Strategy, n2v_mask: RandN2VMask, seg_target_keys: Sequence[str | None] = SEG_TARGET_KEYS,
                 needs_clean: bool = True, seed: int = 0) -> None:
        self.strategy, self.n2v_mask, self.needs_clean, self.seed = strategy, n2v_mask, bool(needs_clean), int(seed)
        keys = tuple(seg_target_keys)
        if not 1 <= len(keys) <= 3 or keys[0] is None:
            raise ValueError(f"seg_target_keys: expected (target[, weight[, mask]]), got {seg_target_keys!r}.")
        self.seg_target_keys = keys + (None,) * (3 - len(keys))
        self.iteration = 0

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        if not isinstance(batchdata, Mapping):
            raise ValueError(f"batchdata: expected a dict batch, got {type(batchdata).__name__}.")
        source = "clean" if self.strategy.input == "clean" else "noisy"
        if source not in batchdata or (self.needs_clean and "clean" not in batchdata):
            need = sorted({source} | ({"clean"} if self.needs_clean else set()))
            raise ValueError(f"{need}: strategy {self.strategy.name!r} needs them in the batch, got keys "
                             f"{sorted(batchdata)}.")
        keep = {source, "noisy", "labelled", *(k for k in self.seg_target_keys if k)} | (
            {"clean"} if self.needs_clean else set())  # the self-supervised strategies never see the clean image
        batch = {k: v.to(device, non_blocking=non_blocking, **kwargs) for k, v in batchdata.items()
                 if k in keep and isinstance(v, torch.Tensor)}
        image, blind = batch[source], None
        if self.strategy.uses_blind_spots:
            self.n2v_mask.set_random_state(seed=(self.seed * 1_000_003 + self.iteration) % 2**32)
            image, blind = self.n2v_mask(image)
        target, weight, mask = (batch.get(k) if k else None for k in self.seg_target_keys)
        labelled = batch.get("labelled")
        if labelled is not None and target is not None:  # unlabelled items: in the N2V terms, not in the seg term
            flags = labelled.reshape(-1, *(1,) * (target.ndim - 1)).to(target.dtype).expand_as(target)
            mask = flags if mask is None else flags * mask
        targets = {"clean": batch.get("clean"), "noisy": batch.get("noisy"), "blind_spots": blind,
                   "seg_target": target, "seg_weight": weight, "seg_mask": mask}
        return image, targets, (), self.strategy.network_kwargs


class DenoiSegTrainer(SupervisedTrainer):
    """Train a :class:`JointDenoiSegNet` with one strategy (``"joint"``, ``"sequential"``, ... see ``STRATEGIES``).

    Batches are dicts with ``"noisy"`` (B, 1, *spatial) in [0, 1], ``"clean"`` (not needed, and
    never read, by the Noise2Void strategies) and the segmentation target under ``seg_target_keys``
    (target, weight, mask), by default the affinity transform's ``affinity`` and ``affinity_weight``
    (zero at invalid pairs: the weighted BCE is then the reference's mean over all affinities). An
    optional ``"labelled"`` (B, 1) flag (:class:`~monai_denoiseg.data.datasets.PatchDataset` with
    ``unlabelled`` volumes) keeps items without annotation out of the segmentation loss.

    Args:
        device, max_epochs, train_data_loader, epoch_length, train_handlers, and ``kwargs`` (e.g.
            ``accumulation_steps``, ``optim_set_to_none``, ``inferer``): as SupervisedTrainer.
        network: the joint network; stages the strategy does not run may be None.
        strategy: a name from ``STRATEGIES`` or a :class:`Strategy`.
        optimizer: default :func:`make_optimizer` over the trainable stages.
        loss_function: the objective, called as ``loss_function(pred, targets)`` (see :class:`StrategyBatch`);
            default ``strategy.objective()``. Its ``last_terms`` (if it has them) are logged.
        n2v_mask: blind-spot masking of the ``"masked"`` strategies (default ``RandN2VMask()``, 0.2 %).
        grad_clip: max gradient norm, applied after the backward pass (None: no clipping).
        pretrained: stage -> checkpoint for the stages the strategy needs pretrained; a stage
            without one is trained first for ``pretrain_iterations`` with the strategy named in
            ``strategy.pretrain`` and cached as ``<output_dir>/pretrained_<stage>_<key>.pt``, the key a hash
            of everything that determines it (strategy, iterations, seed, stage architecture, data).
        seed: base seed of the per-iteration blind spots and dropout.
        lr_scheduler: stepped once per iteration (e.g. :func:`poly_scheduler`).
        checkpoint_dir: where epoch-end checkpoints (network, optimiser, scheduler, trainer state, the
            best-model trackers of validators, ``provenance``) go, every ``checkpoint_interval`` epochs; with
            ``resume`` the newest loadable one there is loaded at start, so a killed run continues where it
            stopped. Every checkpoint, and the best models that validators' ``CheckpointSaver`` keep, is
            written atomically and the previous one deleted only after it (:class:`AtomicDiskSaver`): a kill
            at any instant leaves a loadable checkpoint.
        amp: mixed precision (MONAI's float16 autocast + GradScaler), CUDA only; ignored on the CPU.
        provenance: an object with ``state_dict``/``load_state_dict`` (e.g. ``ProvenanceRecord``) saved in
            every checkpoint.
        draw_offset: added to epoch and iteration numbers where they seed draws (pretraining draws patches
            and blind spots of its own).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        network: JointDenoiSegNet,
        strategy: str | Strategy = "joint",
        optimizer: torch.optim.Optimizer | None = None,
        loss_function=None,
        epoch_length: int | None = None,
        n2v_mask: RandN2VMask | None = None,
        seg_target_keys: Sequence[str | None] = SEG_TARGET_KEYS,
        grad_clip: float | None = None,
        pretrained: Mapping[str, str | os.PathLike | None] | None = None,
        pretrain_iterations: int = 200,
        output_dir: str | os.PathLike | None = None,
        seed: int = 0,
        amp: bool = False,
        lr_scheduler=None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_interval: int = 1,
        resume: bool = True,
        train_handlers: Sequence | None = None,
        provenance=None,
        draw_offset: int = 0,
        **kwargs,
    ) -> None:
        self.strategy = get_strategy(strategy)
        core = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
        for name in self.strategy.stages:
            if getattr(core, name, None) is None:
                raise ValueError(f"network.{name}: strategy {self.strategy.name!r} runs it, but the network has none.")
        device = torch.device(device)
        network = network.to(device)
        optimizer = optimizer if optimizer is not None else make_optimizer(core, self.strategy)
        loss_function = loss_function if loss_function is not None else self.strategy.objective()
        self.core = core  # the joint net itself (``network`` may be its DistributedDataParallel wrapper)
        spatial_dims = self._spatial_dims()
        n2v_mask = n2v_mask if n2v_mask is not None else RandN2VMask(spatial_dims=spatial_dims)
        needs_clean = self.strategy.input == "clean" or getattr(loss_function, "needs", lambda k: True)("clean")
        kwargs.setdefault("prepare_batch", StrategyBatch(self.strategy, n2v_mask, seg_target_keys, needs_clean, seed))
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
            optimizer=optimizer, loss_function=loss_function, epoch_length=epoch_length,
            train_handlers=train_handlers, amp=bool(amp) and device.type == "cuda", decollate=False, **kwargs,
        )
        self.n2v_mask, self.seg_target_keys = n2v_mask, tuple(seg_target_keys)
        self.grad_clip = grad_clip
        self.pretrained = dict(pretrained or {})
        self.pretrain_iterations = int(pretrain_iterations)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.seed, self.draw_offset = int(seed), int(draw_offset)
        self.provenance = provenance
        self._set_frozen(self.strategy)
        self.lr_scheduler = lr_scheduler
        self.add_event_handler(Events.ITERATION_STARTED, self._seed_iteration)
        self.add_event_handler(IterationEvents.LOSS_COMPLETED, self._record_terms)
        if grad_clip is not None:
            self.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._clip_gradients)
        if lr_scheduler is not None:
            LrScheduleHandler(lr_scheduler, print_lr=False, epoch_level=False).attach(self)
        self.best_trackers = self._watch_validators(train_handlers)
        if checkpoint_dir is not None:
            self._attach_checkpoints(Path(checkpoint_dir), int(checkpoint_interval), resume)
        self.add_event_handler(Events.EPOCH_STARTED, self._set_data_epoch)
        self.add_event_handler(Events.STARTED, self._prepare_pretrained)
        self._budget_start: tuple[float, int] | None = None
        self.add_event_handler(Events.ITERATION_STARTED, self._start_budget_clock)
        self.add_event_handler(Events.ITERATION_COMPLETED, self._log_budget)
        weights = getattr(loss_function, "weights", {})
        for term in LOSS_TERMS + ("loss",):
            if term == "loss" or term in weights:
                Average(output_transform=lambda out, t=term: out["terms"][t]).attach(self, f"train_{term}")
    def _watch_validators(self, handlers: Sequence | None) -> dict[str, Checkpoint]:
        """Make the ``CheckpointSaver`` of this trainer's handlers and of its validators (``ValidationHandler``)
        atomic, log each validation's metrics and best model, and return the validators' key-metric trackers
        (so that a resumed run keeps the best model of the epochs before the kill, not the next one it sees)."""
        trackers: dict[str, Checkpoint] = {}
        for handler in handlers or ():
            if isinstance(handler, CheckpointSaver):
                make_atomic(handler, self.logger)
            validator = getattr(handler, "validator", None)
            if validator is None:
                continue
            best = []
            for saver in _savers_of(validator):
                make_atomic(saver, self.logger)
                if saver._key_metric_checkpoint is not None:
                    trackers[f"best_model_{len(trackers)}"] = saver._key_metric_checkpoint
                    if isinstance(saver._key_metric_checkpoint.save_handler, AtomicDiskSaver):
                        best.append(saver._key_metric_checkpoint.save_handler)
            attach_validation_log(validator, self.logger, best)
        return trackers

    def _attach_checkpoints(self, folder: Path, interval: int, resume: bool) -> None:
        state = {"network": self.core, "optimizer": self.optimizer, "trainer": self}
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler
        state.update(self.best_trackers)
        optional = tuple(self.best_trackers)
        if self.provenance is not None:
            state["provenance"] = self.provenance
            optional += ("provenance",)  # checkpoints written before provenance was recorded still resume
        saver = make_atomic(CheckpointSaver(str(folder), state, save_interval=interval, epoch_level=True, n_saved=1,
                                            save_final=False), self.logger)
        if resume:
            resumer = ResumeFromCheckpoint(folder, state, optional=optional,
                                           map_location=self.state.device)
            resumer.attach(self)
            self.add_event_handler(Events.STARTED, self._adopt_resumed, resumer, saver)
        saver.attach(self)

    @staticmethod
    def _adopt_resumed(engine, resumer: ResumeFromCheckpoint, saver: CheckpointSaver) -> None:
        """The saver of a resumed run owns the checkpoint it resumed from (deleted after the next save, as in
        the uninterrupted run) and the folder's other checkpoints (older ones a kill kept, unreadable ones)."""
        if resumer.loaded is None or saver._interval_checkpoint is None:
            return
        cp = saver._interval_checkpoint
        if (m := EPOCH_PATTERN.search(resumer.loaded.name)) and not cp._saved:
            cp._saved.append(Checkpoint.Item(int(m.group(1)), resumer.loaded.name))
        if isinstance(cp.save_handler, AtomicDiskSaver):
            cp.save_handler.pending_removal.extend(p.name for p in resumer.others)

    def run(self) -> None:
        """Train; in a distributed run all ranks then wait for each other (rank 0 validates and saves after the
        last epoch, and a rank that tore its process group down meanwhile could crash the other's gloo)."""
        super().run()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()

    # ------------------------------------------------------------------------------------------
    def _seed_iteration(self, engine) -> None:
        """Blind spots of this iteration from (seed, iteration): a resumed run draws the same."""
        if isinstance(self.prepare_batch, StrategyBatch):
            self.prepare_batch.iteration = self.draw_offset + engine.state.iteration

    def _iteration(self, engine, batchdata):
        """SupervisedTrainer's iteration on a fork of torch's global generator seeded from (seed, iteration)
        (dropout's draws); the caller's generator is left where it was."""
        device = torch.device(engine.state.device)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed((self.seed * 1_000_003 + self.draw_offset + engine.state.iteration) % 2**63)
            return super()._iteration(engine, batchdata)

    def _record_terms(self, engine) -> None:
        """Every loss term into ``state.output["terms"]`` (for handlers and the epoch means); stop on a non-finite loss."""
        loss = engine.state.output["loss"]
        terms = {**getattr(self.loss_function, "last_terms", {}), "loss": loss}
        engine.state.output["terms"] = {k: float(v.detach()) for k, v in terms.items()}
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss: not finite ({loss.item()}) at iteration {engine.state.iteration}, "
                                     f"terms {engine.state.output['terms']}.")

    def _clip_gradients(self, engine) -> None:
        if self.scaler is not None:  # clip the true gradients, not the scaled ones
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        nn.utils.clip_grad_norm_(params, self.grad_clip)

    #: iterations timed before the run's duration is estimated
    BUDGET_PROBE = 10

    def _start_budget_clock(self, engine) -> None:
        if self._budget_start is None:  # the first iteration of this run (a resumed run starts later)
            self._budget_start = (time.perf_counter(), engine.state.iteration - 1)

    def _log_budget(self, engine) -> None:
        """After the first iterations: the iteration budget and how long it will take on this machine."""
        t0, first = self._budget_start
        done = engine.state.iteration - first
        if done != self.BUDGET_PROBE:
            return
        each = (time.perf_counter() - t0) / done
        total = engine.state.max_epochs * engine.state.epoch_length
        left = total - engine.state.iteration
        logger.info("%s: %d iterations took %.1f s (%.2f s each); the remaining %d of %d need about %.1f min on "
                    "this machine, plus validation", self.strategy.name, done, each * done, each, left, total,
                    each * left / 60)

    def _spatial_dims(self) -> int:
        for name in STAGES:
            stage = getattr(self.core, name, None)
            if stage is not None and getattr(stage, "spatial_dims", None) in (2, 3):
                return int(stage.spatial_dims)
        return 2

    def _set_frozen(self, strategy: Strategy) -> None:
        present = [s for s in STAGES if getattr(self.core, s, None) is not None]
        self.core.freeze(*present, frozen=False)
        if strategy.frozen:
            self.core.freeze(*strategy.frozen)

    def _set_data_epoch(self, engine) -> None:
        dataset = getattr(self.data_loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.draw_offset + engine.state.epoch)

    # ------------------------------------------------------------------------------------------
    def pretrain_cache(self, stage: str) -> Path | None:
        """Where the pretrained ``stage`` is cached: named by a hash of everything that determines it."""
        if self.output_dir is None:
            return None
        dataset = getattr(self.data_loader, "dataset", None)
        fingerprint = dataset.fingerprint() if hasattr(dataset, "fingerprint") else repr(dataset)
        pre = get_strategy(self.strategy.pretrain[stage])
        key = config_hash({"stage": stage, "strategy": repr(pre), "objective": repr(pre.objective()),
                           "iterations": self.pretrain_iterations, "seed": self.seed, "data": fingerprint,
                           "architecture": str(getattr(self.core, stage)), "n2v_mask": repr(vars(self.n2v_mask))
                           if pre.uses_blind_spots else None, "seg_target_keys": self.seg_target_keys})
        return self.output_dir / f"pretrained_{stage}_{key}.pt"

    def _prepare_pretrained(self, engine) -> None:
        """Give every stage the strategy needs pretrained its weights: a checkpoint, a cached run, or a new run."""
        if engine.state.iteration > 0:  # resumed: the checkpoint holds every stage
            return
        for stage, pre in self.strategy.pretrain.items():
            path = self.pretrained.get(stage)
            cached = self.pretrain_cache(stage)
            if path is None and cached is not None and cached.is_file():
                path = cached
            if path is not None:
                load_stage(self.core, stage, path)
                logger.info("%s: loaded the pretrained %s from %s", self.strategy.name, stage, path)
                continue
            logger.info("%s: pretraining the %s with %r for %d iterations", self.strategy.name, stage, pre,
                        self.pretrain_iterations)
            self.pretrain(pre, self.pretrain_iterations)
            if cached is not None:
                with atomic_path(cached) as tmp:  # a kill here must not leave a truncated cache to load next time
                    torch.save(stage_state_dict(self.core, stage), tmp)
        self._set_frozen(self.strategy)

    def pretrain(self, strategy: str | Strategy, iterations: int) -> dict[str, float]:
        """Train with another strategy for ``iterations`` steps on this trainer's data: a nested trainer of this
        class (fresh optimiser, the same masking, seed and clipping, draws of its own); returns its last terms."""
        if iterations <= 0:
            return {}
        epoch_length = self.state.epoch_length or len(self.data_loader)
        inner = DenoiSegTrainer(
            self.state.device, math.ceil(iterations / epoch_length), self.data_loader, self.network, strategy,
            epoch_length=epoch_length, n2v_mask=self.n2v_mask, seg_target_keys=self.seg_target_keys,
            grad_clip=self.grad_clip, seed=self.seed, amp=self.amp, draw_offset=1_000_000,
        )
        inner.add_event_handler(Events.ITERATION_COMPLETED(once=iterations), lambda e: e.terminate())
        inner.run()
        return dict(inner.state.output["terms"]) if inner.state.output else {}
