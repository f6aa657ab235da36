"""Engines on real medulla crops: every strategy trains, frozen stages stay put, N2V never reads the clean
image, the blind-spot property holds through the whole chain, and a killed run resumes exactly."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import data_path

from monai_denoiseg.data.datasets import PatchDataset, load_split, train_transforms
from monai_denoiseg.engines import STRATEGIES, DenoiSegTrainer, get_strategy
from monai_denoiseg.engines.evaluator import DenoiSegEvaluator
from monai_denoiseg.networks import paper_joint_net

F = (4, 8, 16)


def tiny_net(spatial_dims=2):
    torch.manual_seed(0)
    return paper_joint_net(spatial_dims, denoiser_kwargs={"features": F}, segmenter_kwargs={"features": F}, features=F,
                           iem_levels=(1, 2))


@pytest.fixture(scope="module")
def split():
    return load_split(data_path("medulla_fibsem.h5"), (0, 8), noise_seed=3)


@pytest.fixture(scope="module")
def loader(split):
    ds = PatchDataset(split, (48, 48), 4, train_transforms(), seed=0)
    return torch.utils.data.DataLoader(ds, batch_size=2)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_learns_a_fixed_real_batch(name, loader):
    trainer = DenoiSegTrainer("cpu", 1, loader, tiny_net(), name, pretrain_iterations=1)
    trainer._prepare_pretrained(trainer)  # what STARTED does: pretrained stages first
    strategy, batch = get_strategy(name), next(iter(loader))
    before = {n: p.detach().clone() for n, p in trainer.core.named_parameters()}
    losses = [trainer.step(batch, strategy, trainer.optimizer, iteration=0)["terms"] for _ in range(12)]
    assert all(np.isfinite(list(t.values())).all() for t in losses)
    assert set(losses[0]) == {"loss", *strategy.weights}
    assert losses[-1]["loss"] < losses[0]["loss"], (name, losses[0], losses[-1])
    for n, p in trainer.core.named_parameters():  # only the trainable stages move
        moved = not torch.equal(before[n], p)
        stage = n.split(".")[0]
        if stage in strategy.frozen or stage not in strategy.stages:
            assert not moved, f"{name}: frozen/unused stage parameter {n} changed"


@pytest.mark.parametrize("name", [n for n, s in STRATEGIES.items() if s.uses_blind_spots])
def test_n2v_strategies_never_read_the_clean_image(name, loader):
    batch = dict(next(iter(loader)))
    batch["clean"] = torch.full_like(batch["clean"], float("nan"))  # any read would make the loss NaN
    trainer = DenoiSegTrainer("cpu", 1, loader, tiny_net(), name)
    terms = trainer.step(batch, get_strategy(name), trainer.optimizer, iteration=1)["terms"]
    assert np.isfinite(list(terms.values())).all()
    assert not get_strategy(name).needs_clean


def test_blind_spot_property_through_the_whole_iem_chain(loader):
    trainer = DenoiSegTrainer("cpu", 1, loader, tiny_net(), "n2v_joint_iem")
    strategy, batch = get_strategy("n2v_joint_iem"), next(iter(loader))
    masked, blind = trainer.chain_input(batch, strategy, iteration=7)
    assert blind.sum() > 0
    changed = batch["noisy"].clone()
    changed[blind] = 1.0 - changed[blind]  # other values at the blind spots only
    masked2, blind2 = trainer.chain_input({"noisy": changed}, strategy, iteration=7)
    assert torch.equal(blind, blind2) and torch.equal(masked, masked2)
    trainer.core.eval()
    with torch.no_grad():
        a, b = trainer.core(masked, stages=strategy.stages), trainer.core(masked2, stages=strategy.stages)
    for key in ("coarse", "affinity", "final"):  # the outputs at the blind spots ignore the values there
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_evaluator_returns_every_metric(split, tmp_path):
    vol = {k: v[:2, :96, :96] for k, v in split.items()}
    ev = DenoiSegEvaluator("cpu", vol, tiny_net(), "joint", roi_size=(64, 64), output_dir=tmp_path)
    ev.run()
    m = ev.state.metrics
    for key in ("psnr_coarse", "ssim_coarse", "psnr_final", "ssim_final", "voi", "voi_split", "voi_merge", "arand"):
        assert np.isfinite(m[key]), key
    assert (tmp_path / "metrics_val_epoch1.json").is_file() and (tmp_path / "figure_val_epoch1.png").is_file()


def test_evaluator_runs_the_network_in_eval_mode_and_changes_nothing(split):
    """After a training epoch the network is in train mode; evaluation must use batch norm's running statistics
    (not the statistics of its own windows) and must not update them with validation or test data."""
    from skimage.metrics import peak_signal_noise_ratio

    vol = {k: v[:2, :96, :96] for k, v in split.items()}
    net = tiny_net()
    with torch.no_grad():  # running statistics away from their initial values, as after training
        net(torch.rand(4, 1, 96, 96) * 0.5)
    net.train()
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    ev = DenoiSegEvaluator("cpu", vol, net, "joint", roi_size=(96, 96))  # one window = the whole slice
    ev.run()
    assert net.training and all(m.training for m in net.modules())  # flags restored
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n]), f"{n} changed during evaluation"
    net.eval()
    with torch.no_grad():
        final = net(torch.as_tensor(vol["noisy"] / 255.0, dtype=torch.float32)[:, None])["final"][:, 0].numpy()
    clean = vol["clean"] / 255.0
    psnr = np.mean([peak_signal_noise_ratio(c, np.clip(f, 0, 1), data_range=1.0) for c, f in zip(clean, final)])
    assert abs(ev.state.metrics["psnr_final"] - psnr) < 1e-3


RUN = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    from test_engines import tiny_net
    from monai_denoiseg.data.datasets import PatchDataset, load_split, train_transforms
    from monai_denoiseg.engines import DenoiSegTrainer, poly_scheduler, make_optimizer
    from ignite.engine import Events
    split = load_split({path!r}, (0, 8), noise_seed=3)
    loader = torch.utils.data.DataLoader(PatchDataset(split, (48, 48), 6, train_transforms(), seed=0), batch_size=2)
    net = tiny_net()
    opt = make_optimizer(net, "joint", lr=1e-3)
    sched = poly_scheduler(opt, 9)
    tr = DenoiSegTrainer("cpu", 3, loader, net, "joint", optimizer=opt, lr_scheduler=sched,
                         checkpoint_dir={ckpt!r}, seed=5)
    kill_at = int(os.environ.get("KILL_AT", "0"))
    if kill_at:
        tr.add_event_handler(Events.ITERATION_COMPLETED(once=kill_at), lambda e: os.kill(os.getpid(), 9))
    tr.run()
    torch.save(net.state_dict(), {out!r})
    """
)


def _run(tmp_path, name, kill_at=0):
    script = RUN.format(tests=os.path.dirname(__file__), path=str(data_path("medulla_fibsem.h5")),
                        ckpt=str(tmp_path / name), out=str(tmp_path / f"{name}.pt"))
    env = {**os.environ, "KILL_AT": str(kill_at)}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)


def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path):
    full = _run(tmp_path, "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _run(tmp_path, "resumed", kill_at=5)  # 3 iterations an epoch: killed mid-way through epoch 2
    assert killed.returncode == -9 and not (tmp_path / "resumed.pt").exists()
    resumed = _run(tmp_path, "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resumed.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_bad_strategy_and_missing_inputs_are_clear(loader):
    with pytest.raises(ValueError, match="strategy"):
        DenoiSegTrainer("cpu", 1, loader, tiny_net(), "jointt")
    trainer = DenoiSegTrainer("cpu", 1, loader, tiny_net(), "joint")
    with pytest.raises(ValueError, match="clean"):
        trainer.step({k: v for k, v in next(iter(loader)).items() if k != "clean"}, get_strategy("joint"),
                     trainer.optimizer, 0)


def test_evaluator_feeds_each_strategy_the_image_it_trains_on(split):
    vol = {k: v[:2, :64, :64] for k, v in split.items()}
    net = tiny_net()
    on_clean = DenoiSegEvaluator("cpu", vol, net, "seg_clean", roi_size=(64, 64))
    on_clean.run()
    as_noisy = DenoiSegEvaluator("cpu", {**vol, "noisy": vol["clean"]}, net, "seg_only", roi_size=(64, 64))
    as_noisy.run()
    assert on_clean.state.metrics["voi"] == as_noisy.state.metrics["voi"]
    with pytest.raises(KeyError, match="clean: strategy 'seg_clean' reads it"):
        DenoiSegEvaluator("cpu", {"noisy": vol["noisy"], "label": vol["label"]}, net, "seg_clean", roi_size=(64, 64)).run()


def test_unlabelled_items_train_the_denoiser_but_not_the_segmentation_loss(loader):
    """The seg term is the weighted BCE over the labelled item only; the N2V term covers both (hand-computed)."""
    batch = dict(next(iter(loader)))
    batch["labelled"] = torch.tensor([[1.0], [0.0]])
    batch["affinity"][1] = 1 - batch["affinity"][1]  # garbage target on the unlabelled item: must not count
    trainer = DenoiSegTrainer("cpu", 1, loader, tiny_net(), "n2v_joint_supervised")
    out = trainer.step(batch, trainer.strategy, trainer.optimizer, iteration=0)
    logits, target = out["pred"]["affinity"][:1], batch["affinity"][:1]
    w, m = batch["affinity_weight"][:1], batch["affinity_mask"][:1]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert out["terms"]["seg"] == pytest.approx(float((w * bce * m).sum() / m.sum()), rel=1e-5)
    blind, coarse = out["blind_spots"], out["pred"]["coarse"]
    assert blind[1].sum() > 0
    n2v = ((coarse - batch["noisy"]) ** 2 * blind).sum() / blind.sum()
    assert out["terms"]["n2v_c"] == pytest.approx(float(n2v), rel=1e-5)
