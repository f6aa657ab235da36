"""One MONAI trainer for every strategy of both papers (``monai_denoiseg.engines.strategies``).

:class:`DenoiSegTrainer` is a :class:`monai.engines.SupervisedTrainer` whose iteration runs the
strategy's chain (:meth:`JointDenoiSegNet.forward` with its ``stages``), masks blind spots on the
training device for the Noise2Void strategies, and returns every loss term, so that handlers log
them per iteration and :class:`~ignite.metrics.Average` gives their epoch means
(``engine.state.metrics["train_<term>"]``). Stages a strategy needs pretrained are loaded from a
checkpoint or trained first by the same code (:meth:`DenoiSegTrainer.pretrain`).

Reproducibility: batches come from :class:`~monai_denoiseg.data.datasets.PatchDataset` (each item a
function of seed, epoch and index; the trainer calls ``set_epoch``), the blind spots and torch's
global generator (dropout) are reseeded from (seed, iteration). A run resumed from an epoch-end
checkpoint (model, optimiser, scheduler, trainer state) therefore repeats the uninterrupted run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Events
from ignite.handlers import Checkpoint
from ignite.metrics import Average
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver, LrScheduleHandler
from torch import nn

from monai_denoiseg.engines.handlers import (EPOCH_PATTERN, AtomicDiskSaver, ResumeFromCheckpoint,
                                             attach_validation_log, checkpoint_candidates, make_atomic)
from monai_denoiseg.engines.strategies import LOSS_TERMS, Strategy, get_strategy, strategy_loss
from monai_denoiseg.networks.nets.joint import STAGES, JointDenoiSegNet
from monai_denoiseg.transforms.n2v import RandN2VMask
from monai_denoiseg.utils.atomic import atomic_path

__all__ = ["DenoiSegTrainer", "make_optimizer", "poly_scheduler", "load_stage", "load_network_weights", "stage_state_dict",
           "latest_checkpoint"]

logger = logging.getLogger(__name__)
SEG_TARGET_KEYS = ("affinity", "affinity_weight", "affinity_mask")


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


class DenoiSegTrainer(SupervisedTrainer):
    """Train a :class:`JointDenoiSegNet` with one strategy (``"joint"``, ``"sequential"``, ... see ``STRATEGIES``).

    Batches are dicts with ``"noisy"`` (B, 1, *spatial) in [0, 1], ``"clean"`` (not needed, and
    never read, by the Noise2Void strategies) and the segmentation target under ``seg_target_keys``
    (target, weight, mask; weight and mask may be None), by default the affinity transform's keys.
    An optional ``"labelled"`` (B, 1) flag (:class:`~monai_denoiseg.data.datasets.PatchDataset` with
    ``unlabelled`` volumes) keeps items without annotation out of the segmentation loss.

    Args:
        device, max_epochs, train_data_loader, epoch_length, train_handlers: as SupervisedTrainer.
        network: the joint network; stages the strategy does not run may be None.
        strategy: a name from ``STRATEGIES`` or a :class:`Strategy`.
        optimizer: default :func:`make_optimizer` over the trainable stages.
        n2v_mask: blind-spot masking of the ``"masked"`` strategies (default ``RandN2VMask()``, 0.2 %).
        grad_clip: max gradient norm (None: no clipping).
        pretrained: stage -> checkpoint for the stages the strategy needs pretrained; a stage
            without one is trained first for ``pretrain_iterations`` with the strategy named in
            ``strategy.pretrain`` and cached as ``<output_dir>/pretrained_<stage>.pt``.
        seed: base seed of the per-iteration blind spots and dropout.
        lr_scheduler: stepped once per iteration (e.g. :func:`poly_scheduler`).
        checkpoint_dir: where epoch-end checkpoints (network, optimiser, scheduler, trainer state, the
            best-model trackers of validators) go, every ``checkpoint_interval`` epochs; with ``resume`` the
            newest loadable one there is loaded at start, so a killed run continues where it stopped.
            Every checkpoint, and the best models that validators' ``CheckpointSaver`` keep, is written
            atomically and the previous one deleted only after it (:class:`AtomicDiskSaver`): a kill at any
            instant leaves a loadable checkpoint.
        amp: mixed precision (float16 autocast + GradScaler), CUDA only; ignored on the CPU.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        network: JointDenoiSegNet,
        strategy: str | Strategy = "joint",
        optimizer: torch.optim.Optimizer | None = None,
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
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
            optimizer=optimizer, loss_function=self._unused_loss, epoch_length=epoch_length,
            train_handlers=train_handlers, amp=False, decollate=False, **kwargs,
        )
        self.core = core  # the joint net itself (``network`` may be its DistributedDataParallel wrapper)
        self.use_amp = bool(amp) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.n2v_mask = n2v_mask if n2v_mask is not None else RandN2VMask(spatial_dims=self._spatial_dims())
        self.seg_target_keys = tuple(seg_target_keys) + (None,) * (3 - len(seg_target_keys))
        self.grad_clip = grad_clip
        self.pretrained = dict(pretrained or {})
        self.pretrain_iterations = int(pretrain_iterations)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.seed = int(seed)
        self._set_frozen(self.strategy)
        self.lr_scheduler = lr_scheduler
        if lr_scheduler is not None:
            LrScheduleHandler(lr_scheduler, print_lr=False, epoch_level=False).attach(self)
        self.best_trackers = self._watch_validators(train_handlers)
        if checkpoint_dir is not None:
            self._attach_checkpoints(Path(checkpoint_dir), int(checkpoint_interval), resume)
        self.add_event_handler(Events.EPOCH_STARTED, self._set_data_epoch)
        self.add_event_handler(Events.STARTED, self._prepare_pretrained)
        for term in LOSS_TERMS + ("loss",):
            if term == "loss" or term in self.strategy.weights:
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
        saver = make_atomic(CheckpointSaver(str(folder), state, save_interval=interval, epoch_level=True, n_saved=1,
                                            save_final=False), self.logger)
        if resume:
            resumer = ResumeFromCheckpoint(folder, state, optional=tuple(self.best_trackers),
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
    @staticmethod
    def _unused_loss(*_):  # SupervisedTrainer wants one; the strategy computes every term itself
        raise RuntimeError("DenoiSegTrainer computes its losses with strategy_loss.")

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
            dataset.set_epoch(engine.state.epoch)

    # ------------------------------------------------------------------------------------------
    def _prepare_pretrained(self, engine) -> None:
        """Give every stage the strategy needs pretrained its weights: a checkpoint, a cached run, or a new run."""
        if engine.state.iteration > 0:  # resumed: the checkpoint holds every stage
            return
        for stage, pre in self.strategy.pretrain.items():
            path = self.pretrained.get(stage)
            cached = self.output_dir / f"pretrained_{stage}.pt" if self.output_dir is not None else None
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
        """Train with another strategy for ``iterations`` steps on this trainer's data (fresh optimiser)."""
        strategy = get_strategy(strategy)
        self._set_frozen(strategy)
        optimizer = make_optimizer(self.core, strategy)
        terms: dict[str, float] = {}
        done, epoch = 0, 0
        dataset = getattr(self.data_loader, "dataset", None)
        while done < iterations:
            epoch += 1
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(1_000_000 + epoch)  # pretraining draws patches of its own
            for batch in self.data_loader:
                terms = self.step(batch, strategy, optimizer, iteration=1_000_000 + done)["terms"]
                done += 1
                if done >= iterations:
                    break
        return terms

    # ------------------------------------------------------------------------------------------
    def _iteration(self, engine, batchdata) -> dict:
        if batchdata is None:
            raise ValueError("batchdata: expected a dict batch, got None.")
        return self.step(batchdata, self.strategy, self.optimizer, engine.state.iteration)

    def chain_input(self, batch: Mapping[str, torch.Tensor], strategy: Strategy, iteration: int):
        """``(image fed to the chain, blind-spot mask or None)``: noisy, clean, or the masked noisy image."""
        if strategy.input == "clean":
            return batch["clean"], None
        noisy = batch["noisy"]
        if strategy.input == "noisy":
            return noisy, None
        self.n2v_mask.set_random_state(seed=(self.seed * 1_000_003 + iteration) % 2**32)
        return self.n2v_mask(noisy)

    def step(self, batchdata: Mapping, strategy: Strategy, optimizer: torch.optim.Optimizer, iteration: int) -> dict:
        """One optimisation step of ``strategy``; returns ``{"image", "pred", "loss", "terms"}``."""
        batch = {k: v.to(self.state.device, non_blocking=True)
                 for k, v in batchdata.items() if isinstance(v, torch.Tensor)}
        if not strategy.needs_clean:
            batch.pop("clean", None)  # the self-supervised strategies never see the clean image
        for key in ("noisy",) if strategy.input != "clean" else ("clean",):
            if key not in batch:
                raise ValueError(f"{key}: strategy {strategy.name!r} needs it in the batch, got keys {sorted(batch)}.")
        torch.manual_seed((self.seed * 1_000_003 + iteration) % 2**63)
        image, blind = self.chain_input(batch, strategy, iteration)
        target, weight, mask = (batch.get(k) if k else None for k in self.seg_target_keys)
        labelled = batch.get("labelled")
        if labelled is not None and target is not None:  # unlabelled items: in the N2V terms, not in the seg term
            flags = labelled.reshape(-1, *(1,) * (target.ndim - 1)).to(target.dtype)
            mask = flags * (mask if mask is not None else torch.ones_like(target))
        self.network.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
            pred = self.network(image, stages=strategy.stages)
            losses = strategy_loss(strategy, {k: v.float() for k, v in pred.items()}, clean=batch.get("clean"),
                                   noisy=batch.get("noisy"), blind_spots=blind, seg_target=target,
                                   seg_weight=weight, seg_mask=mask)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss: not finite ({loss.item()}) at iteration {iteration}, terms "
                                     f"{ {k: float(v) for k, v in losses.items()} }.")
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        terms = {k: float(v.detach()) for k, v in losses.items()}
        return {"image": image.detach(), "pred": {k: v.detach() for k, v in pred.items()},
                "loss": loss.detach(), "terms": terms, "blind_spots": blind}
