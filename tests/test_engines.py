"""Engines on real medulla crops: every strategy trains, frozen stages stay put, N2V never reads the clean
image, the blind-spot property holds through the whole chain, and a killed run resumes exactly."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from conftest import data_path
from ignite.engine import Events

from monai.engines.utils import IterationEvents

from monai_denoiseg.data.datasets import PatchDataset, load_split, train_transforms
from monai_denoiseg.engines import STRATEGIES, DenoiSegTrainer, get_strategy, make_optimizer
from monai_denoiseg.engines.evaluator import DenoiSegEvaluator
from monai_denoiseg.losses import JointDenoiSegLoss
from monai_denoiseg.networks import paper_joint_net
from monai_denoiseg.transforms import RandN2VMask

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


def run_on(batch, name, iterations=1, net=None, attach=None, **kwargs):
    """A real trainer run of ``iterations`` on one fixed batch; returns the trainer and every iteration's output."""
    trainer = DenoiSegTrainer("cpu", 1, [batch] * iterations, net or tiny_net(), name, **kwargs)
    if attach is not None:
        attach(trainer)
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    trainer.run()
    return trainer, outputs


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_learns_a_fixed_real_batch(name, loader):
    strategy, batch = get_strategy(name), next(iter(loader))
    net = tiny_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    # N2V: new blind spots every iteration; 5 % of the pixels (not 0.2 %) keeps that loss a steady estimate
    # SupervisedTrainer's four (INNER_ITERATION_* belong to multi-step trainers, SupervisedTrainer never fires them)
    events = [IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED, IterationEvents.BACKWARD_COMPLETED,
              IterationEvents.MODEL_COMPLETED]
    fired = {e: 0 for e in events}

    def count(trainer):  # MONAI handlers hook these: each must fire once per iteration of every strategy
        for event in events:
            trainer.add_event_handler(event, lambda _, e=event: fired.__setitem__(e, fired[e] + 1))

    trainer, outputs = run_on(batch, name, 12, net, pretrain_iterations=1, n2v_mask=RandN2VMask(5.0),
                              optimizer=make_optimizer(net, name, lr=1e-3), attach=count)
    assert fired == {e: 12 for e in events}, (name, fired)
    losses = [o["terms"] for o in outputs]
    assert all(np.isfinite(list(t.values())).all() for t in losses)
    assert set(losses[0]) == {"loss", *strategy.weights}
    first, last = (np.mean([t["loss"] for t in part]) for part in (losses[:3], losses[-3:]))
    assert last < first, (name, losses[0], losses[-1])
    assert trainer.state.metrics["train_loss"] == pytest.approx(np.mean([t["loss"] for t in losses]))
    for n, p in trainer.core.named_parameters():  # only the trainable stages move (pretrained ones were trained first)
        moved = not torch.equal(before[n], p)
        stage = n.split(".")[0]
        if stage not in strategy.stages or (stage in strategy.frozen and stage not in strategy.pretrain):
            assert not moved, f"{name}: frozen/unused stage parameter {n} changed"


@pytest.mark.parametrize("name", [n for n, s in STRATEGIES.items() if s.uses_blind_spots])
def test_n2v_strategies_never_read_the_clean_image(name, loader):
    batch = dict(next(iter(loader)))
    batch["clean"] = torch.full_like(batch["clean"], float("nan"))  # any read would make the loss NaN
    _, outputs = run_on(batch, name, pretrain_iterations=1)
    assert np.isfinite(list(outputs[0]["terms"].values())).all()
    assert outputs[0]["label"]["clean"] is None and not get_strategy(name).needs_clean


def test_the_network_sees_the_masked_input_and_the_loss_only_the_blind_spots(loader):
    """Noise2Void through a real iteration: the denoiser's input is the noisy patch with values changed at the
    blind spots only, and the loss is 4 x the mean squared error there (the reference's [-1, 1] units)."""
    batch = next(iter(loader))
    seen = []
    net = tiny_net()
    net.denoiser.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    _, (out,) = run_on(batch, "n2v_only", net=net)
    blind, noisy = out["label"]["blind_spots"], batch["noisy"]
    per_image = blind.flatten(1).sum(1)
    assert (per_image == per_image[0]).all() and per_image[0] >= 4  # every patch has its blind spots
    x = seen[0]
    assert torch.equal(x[~blind], noisy[~blind])
    assert (x[blind] != noisy[blind]).float().mean() > 0.8  # replaced (a neighbour may share a uint8 value)
    coarse = out["pred"]["coarse"].detach().double().numpy()
    b, y = blind.numpy(), noisy.double().numpy()
    expected = (4 * (coarse - y) ** 2 * b).sum() / b.sum()
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_the_joint_loss_of_an_iteration_is_the_reference_formula(loader):
    """Same batch, same network: the trainer's loss equals 1 MSE(I_c) + 3 WBCE + 50 MSE(I_f) computed in numpy
    on [-1, 1] images (2 x - 1), WBCE = mean over all affinities of w * BCE (reference: binary_cross_entropy)."""
    batch = next(iter(loader))
    _, (out,) = run_on(batch, "joint")
    pred = {k: v.detach().double().numpy() for k, v in out["pred"].items()}
    clean = 2 * batch["clean"].double().numpy() - 1
    mse_c = ((2 * pred["coarse"] - 1 - clean) ** 2).mean()
    mse_f = ((2 * pred["final"] - 1 - clean) ** 2).mean()
    p = 1 / (1 + np.exp(-pred["affinity"]))
    y, w = batch["affinity"].double().numpy(), batch["affinity_weight"].double().numpy()
    wbce = (-w * (y * np.log(p) + (1 - y) * np.log(1 - p))).mean()
    assert out["terms"]["res_c"] == pytest.approx(mse_c, rel=1e-6, abs=1e-6)
    assert out["terms"]["seg"] == pytest.approx(wbce, rel=1e-6, abs=1e-6)
    assert out["terms"]["res_f"] == pytest.approx(mse_f, rel=1e-6, abs=1e-6)
    assert out["loss"].item() == pytest.approx(mse_c + 3 * wbce + 50 * mse_f, rel=1e-6, abs=1e-6)


def test_an_injected_objective_is_the_one_trained(loader):
    """``loss_function`` is MONAI's: the trainer optimises what it is given (here L1 terms) and logs its terms."""
    batch = next(iter(loader))
    l1 = JointDenoiSegLoss(restoration_loss=torch.nn.L1Loss())
    _, (out,) = run_on(batch, "joint", loss_function=l1)
    coarse, clean = out["pred"]["coarse"].double(), batch["clean"].double()
    assert out["terms"]["res_c"] == pytest.approx(float((2 * (coarse - clean)).abs().mean()), rel=1e-5)


def test_blind_spot_property_through_the_whole_iem_chain(loader):
    trainer = DenoiSegTrainer("cpu", 1, loader, tiny_net(), "n2v_joint_iem")
    batch = next(iter(loader))
    trainer.prepare_batch.iteration = 7
    masked, targets, _, kwargs = trainer.prepare_batch(batch)
    blind = targets["blind_spots"]
    assert blind.sum() > 0
    changed = batch["noisy"].clone()
    changed[blind] = 1.0 - changed[blind]  # other values at the blind spots only
    masked2, targets2, _, _ = trainer.prepare_batch({**batch, "noisy": changed})
    assert torch.equal(blind, targets2["blind_spots"]) and torch.equal(masked, masked2)
    trainer.core.eval()
    with torch.no_grad():
        a, b = trainer.core(masked, **kwargs), trainer.core(masked2, **kwargs)
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


def test_training_leaves_the_callers_random_stream_alone(loader):
    """Dropout draws come from a per-iteration fork of the global generator: the caller's stream is untouched,
    and the same (seed, iteration) gives the same dropout, whatever the caller drew before."""
    batch = next(iter(loader))

    def dropout_run(caller_seed):
        net = tiny_net()
        net.fusion.dropout = nn.Dropout(0.5)  # a random op in the forward pass
        inner = net.fusion.forward
        net.fusion.forward = lambda *a, **k: net.fusion.dropout(inner(*a, **k))
        torch.manual_seed(caller_seed)
        run_on(batch, "joint", 3, net, pretrain_iterations=1)
        return torch.rand(4), [p.detach().clone() for p in net.parameters()]

    torch.manual_seed(5)
    expected = torch.rand(4)
    after, params = dropout_run(5)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)
    _, again = dropout_run(6)
    for a, b in zip(params, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_strategy_and_missing_inputs_are_clear(loader):
    with pytest.raises(ValueError, match="strategy"):
        DenoiSegTrainer("cpu", 1, loader, tiny_net(), "jointt")
    with pytest.raises(ValueError, match="clean.*strategy 'joint' needs them in the batch"):
        run_on({k: v for k, v in next(iter(loader)).items() if k != "clean"}, "joint")


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
    _, (out,) = run_on(batch, "n2v_joint_supervised", pretrain_iterations=1)
    logits, target = out["pred"]["affinity"][:1], batch["affinity"][:1]
    w = batch["affinity_weight"][:1]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert out["terms"]["seg"] == pytest.approx(float((w * bce).mean()), rel=1e-5)  # the labelled item's mean
    blind, coarse = out["label"]["blind_spots"], out["pred"]["coarse"]
    assert blind[1].sum() > 0
    n2v = 4 * ((coarse - batch["noisy"]) ** 2 * blind).sum() / blind.sum()
    assert out["terms"]["n2v_c"] == pytest.approx(float(n2v), rel=1e-5)


def test_self_supervised_strategies_select_without_clean_images_or_labels(split):
    """n2v_only validates on noisy volumes alone: its selection metric is the N2V loss at fixed blind spots
    (recomputed here in numpy), the same at every validation; strategies with labels keep VOI / IoU."""
    from monai_denoiseg.bundle import selection_metric

    vol = {"noisy": split["noisy"][:2, :64, :64]}  # no clean image, no labels
    net = tiny_net()
    ev = DenoiSegEvaluator("cpu", vol, net, "n2v_only", roi_size=(64, 64), n2v_seed=11)
    ev.run()
    first = ev.state.metrics["self_supervised_loss"]
    ev.run()
    assert ev.state.metrics["self_supervised_loss"] == first  # fixed blind spots: comparable across epochs
    noisy = torch.as_tensor(vol["noisy"] / 255.0, dtype=torch.float32)[:, None]
    masking = RandN2VMask()
    masking.set_random_state(seed=11)  # volume 0
    masked, blind = masking(noisy)
    net.eval()
    with torch.no_grad():
        coarse = net(masked, stages=("denoiser",))["coarse"].double().numpy()
    b, y = blind.numpy(), noisy.double().numpy()
    assert first == pytest.approx((4 * (coarse - y) ** 2 * b).sum() / b.sum(), rel=1e-5)
    assert selection_metric("n2v_only") == ("self_supervised_loss", True)
    assert selection_metric("n2v_joint_unsupervised") == ("self_supervised_loss", True)
    assert selection_metric("n2v_only", labels=True) == ("psnr_coarse", False)
    assert selection_metric("n2v_joint_supervised") == ("voi", True)
    assert selection_metric("n2v_joint_supervised", binary=True) == ("iou", False)


def test_pretrained_stage_cache_is_keyed_by_what_determines_it(loader, tmp_path):
    """The same settings reuse the cached pretrained denoiser; a change in iterations, data or seed trains anew."""
    def start(**kwargs):
        trainer = DenoiSegTrainer("cpu", 1, kwargs.pop("data", loader), tiny_net(), "sequential", output_dir=tmp_path,
                                  **{"pretrain_iterations": 1, **kwargs})
        trainer._prepare_pretrained(trainer)  # what STARTED does
        return trainer.pretrain_cache("denoiser")

    first = start()
    assert first.is_file() and first.name.startswith("pretrained_denoiser_")
    stamp = first.stat().st_mtime_ns
    assert start() == first and first.stat().st_mtime_ns == stamp  # reused, not retrained
    other_data = torch.utils.data.DataLoader(PatchDataset(load_split(data_path("medulla_fibsem.h5"), (8, 16),
                                                                     noise_seed=3), (48, 48), 4, train_transforms()),
                                             batch_size=2)
    keys = {first, start(pretrain_iterations=2), start(seed=1), start(data=other_data)}
    assert len(keys) == 4 and all(k.is_file() for k in keys)


def test_the_run_logs_its_budget_and_an_estimate_after_the_first_iterations(loader, caplog):
    batch = next(iter(loader))
    with caplog.at_level("INFO", logger="monai_denoiseg.engines.trainer"):
        run_on(batch, "dn_only", DenoiSegTrainer.BUDGET_PROBE + 2)
    lines = [r.getMessage() for r in caplog.records if "need about" in r.getMessage()]
    assert len(lines) == 1 and f"the remaining 2 of {DenoiSegTrainer.BUDGET_PROBE + 2}" in lines[0], lines
