"""Faults during training on real medulla crops: a SIGKILL at any point, also in the middle of writing a
checkpoint or the best model, and a truncated checkpoint on disk. The re-run resumes from the newest
checkpoint that loads and ends with weights (and best model) bit-identical to the uninterrupted run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import data_path

TESTS = os.path.dirname(os.path.abspath(__file__))
EPOCHS, ITERS = 4, 3  # 3 iterations an epoch: iteration i is in epoch (i - 1) // 3 + 1

# One training run: tiny joint net, validation every epoch keeping the best model (lowest VOI) in models/model.pt.
# FAULT="iter:<i>" SIGKILLs the process after iteration i; FAULT="save:<name>:<n>:<fraction>" SIGKILLs it in the
# middle of the n-th torch.save into a file whose name contains <name> (the temporary file of an atomic save
# as well as the target of a plain one), after writing that fraction of the bytes.
RUN = textwrap.dedent(
    """
    import io, logging, os, signal, sys, torch
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, {tests!r})
    from test_engines import tiny_net
    from ignite.engine import Events
    from monai.handlers import CheckpointSaver, ValidationHandler
    from monai_denoiseg.data.datasets import PatchDataset, load_split, train_transforms
    from monai_denoiseg.engines import DenoiSegTrainer, make_optimizer, poly_scheduler
    from monai_denoiseg.engines.evaluator import DenoiSegEvaluator

    fault = os.environ.get("FAULT", "")
    if fault.startswith("save:"):
        _, part, nth, frac = fault.split(":")
        real_save, count = torch.save, [0]

        def save(obj, f, *args, **kwargs):
            if part in os.path.basename(str(getattr(f, "name", f))):
                count[0] += 1
                if count[0] == int(nth):  # write the first bytes, then die as a SIGKILL would
                    buf = io.BytesIO()
                    real_save(obj, buf, *args, **kwargs)
                    data = buf.getvalue()[: int(len(buf.getvalue()) * float(frac))]
                    out = f if hasattr(f, "write") else open(f, "wb")
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save

    split = load_split({path!r}, (0, 8), noise_seed=3)
    val = {{k: v[:, :64, :64] for k, v in load_split({path!r}, (8, 10), noise_seed=3).items()}}
    loader = torch.utils.data.DataLoader(PatchDataset(split, (48, 48), 6, train_transforms(), seed=0), batch_size=2)
    net = tiny_net()
    opt = make_optimizer(net, "joint", lr=1e-3)
    sched = poly_scheduler(opt, {epochs} * 3)
    best = CheckpointSaver(save_dir={models!r}, save_dict={{"network": net}}, save_key_metric=True,
                           key_metric_name="voi", key_metric_negative_sign=True, key_metric_filename="model.pt")
    evaluator = DenoiSegEvaluator("cpu", val, net, "joint", roi_size=(64, 64), val_handlers=[best])
    tr = DenoiSegTrainer("cpu", {epochs}, loader, net, "joint", optimizer=opt, lr_scheduler=sched,
                         checkpoint_dir={ckpt!r}, seed=5,
                         train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True)])
    if fault.startswith("iter:"):
        tr.add_event_handler(Events.ITERATION_COMPLETED(once=int(fault[5:])), lambda e: os.kill(os.getpid(), 9))
    if os.environ.get("KEEP"):  # a copy of each epoch's checkpoint (after the saver: handlers run in order)
        import shutil
        tr.add_event_handler(Events.EPOCH_COMPLETED, lambda e: shutil.copytree({ckpt!r}, os.environ["KEEP"],
                                                                               dirs_exist_ok=True))
    tr.run()
    torch.save(net.state_dict(), {out!r})
    """
)


def run(folder: Path, fault: str = "", epochs: int = EPOCHS, keep: Path | None = None) -> subprocess.CompletedProcess:
    """One training process with its checkpoints, best model and final weights under ``folder`` (``keep``: a folder
    that collects every epoch's checkpoint)."""
    script = RUN.format(tests=TESTS, path=str(data_path("medulla_fibsem.h5")), ckpt=str(folder / "checkpoints"),
                        models=str(folder / "models"), out=str(folder / "final.pt"), epochs=epochs)
    env = {**os.environ, "FAULT": fault, "OMP_NUM_THREADS": "1", "KEEP": str(keep or "")}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    sa, sb = sa.get("network", sa), sb.get("network", sb)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def best_epochs(log: str) -> list[int]:
    """Epochs whose validation saved a new best model, from the run's log."""
    found, epoch = [], None
    for line in log.splitlines():
        if m := re.search(r"validation at epoch (\d+):", line):
            epoch = int(m.group(1))
        elif "best model (voi " in line:
            found.append(epoch)
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, str]:
    """The uninterrupted run: its folder (``kept/``: a copy of every epoch's checkpoint) and its log."""
    folder = tmp_path_factory.mktemp("reference")
    res = run(folder, keep=folder / "kept")
    assert res.returncode == 0, res.stderr[-3000:]
    return folder, res.stderr


def test_uninterrupted_run_logs_validation_and_best_model_and_leaves_one_checkpoint(reference):
    folder, log = reference
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [f"checkpoint_epoch={EPOCHS}.pt"]
    assert sorted(p.name for p in (folder / "models").iterdir()) == ["model.pt"]
    for epoch in range(1, EPOCHS + 1):
        assert re.search(rf"validation at epoch {epoch}: {{.*'voi': [0-9.]+", log), log[-3000:]
    assert re.search(rf"best model \(voi [0-9.]+\) saved to {re.escape(str(folder / 'models' / 'model.pt'))}", log)
    assert best_epochs(log)[0] == 1 and "resumed from" not in log


def test_kills_during_best_model_and_checkpoint_saves_resume_bit_identical(reference, tmp_path):
    """SIGKILL while writing the first best model (from the start: no model.pt may appear, only a torn temporary
    file), then while writing checkpoint k when checkpoint k-1 is the only one (it must survive). The last run
    resumes from checkpoint k-1, remembers the best VOI of the epochs before (it is in the checkpoint: epoch k,
    which did not improve, saves no model) and ends bit-identical to the uninterrupted run."""
    ref, log = reference
    saved = best_epochs(log)
    k = next((e for e in range(2, EPOCHS + 1) if e not in saved), None)
    assert k is not None, f"the reference improves at every epoch ({saved}): no epoch to test the best-model memory"
    ckpt, model = tmp_path / "checkpoints", tmp_path / "models" / "model.pt"

    res = run(tmp_path, "save:model.pt:1:0.5")
    assert res.returncode == -9, res.stderr[-3000:]
    assert not model.exists() and list(model.parent.glob(".model.pt.*.part"))  # the kill hit the write
    assert not list(ckpt.glob("*.pt"))

    res = run(tmp_path, f"save:checkpoint_epoch={k}:1:0.5")
    assert res.returncode == -9, res.stderr[-3000:]
    assert "resumed from" not in res.stderr
    assert [p.name for p in ckpt.glob("*.pt")] == [f"checkpoint_epoch={k - 1}.pt"]  # outlived the failed save
    assert list(ckpt.glob(f".checkpoint_epoch={k}.pt.*.part"))
    torch.load(ckpt / f"checkpoint_epoch={k - 1}.pt", weights_only=True)
    assert not list(model.parent.glob(".*.part"))  # the re-run's best model cleared the torn one

    res = run(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {ckpt / f'checkpoint_epoch={k - 1}.pt'} at epoch {k - 1}" in res.stderr, res.stderr[-3000:]
    assert best_epochs(res.stderr) == [e for e in saved if e >= k], res.stderr[-3000:]
    assert_same_weights(ref / "final.pt", tmp_path / "final.pt")
    assert_same_weights(ref / "models" / "model.pt", model)
    assert sorted(p.name for p in ckpt.iterdir()) == [f"checkpoint_epoch={EPOCHS}.pt"]  # torn file and old one gone


def test_truncated_newest_checkpoint_is_skipped_with_a_warning_and_the_previous_one_used(reference, tmp_path):
    """Checkpoints EPOCHS-1 (complete) and EPOCHS (cut in half, as a crashed non-atomic writer leaves it): the
    re-run names the torn file, resumes from the complete one and ends as the uninterrupted run."""
    ref, _ = reference
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    shutil.copy(ref / "kept" / f"checkpoint_epoch={EPOCHS - 1}.pt", ckpt)
    newest = ckpt / f"checkpoint_epoch={EPOCHS}.pt"
    data = (ref / "kept" / newest.name).read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    res = run(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(rf"WARNING .*checkpoint {re.escape(str(newest))} is unreadable .*skipped", res.stderr), \
        res.stderr[-3000:]
    assert f"resumed from {ckpt / f'checkpoint_epoch={EPOCHS - 1}.pt'} at epoch {EPOCHS - 1}" in res.stderr
    assert_same_weights(ref / "final.pt", tmp_path / "final.pt")
    assert sorted(p.name for p in ckpt.iterdir()) == [newest.name]
    torch.load(newest, weights_only=True)  # rewritten whole by the re-run


@pytest.mark.parametrize("damage", ["empty", "garbage", "not_a_checkpoint", "truncated"])
def test_resume_skips_each_kind_of_unusable_checkpoint(tmp_path, damage, caplog):
    """In-process: the resume handler skips an unusable newest file (naming it) and loads the previous one."""
    import logging

    from ignite.engine import Engine

    from monai_denoiseg.engines.handlers import ResumeFromCheckpoint

    net = torch.nn.Linear(3, 2)
    good = {"network": net.state_dict(), "trainer": {"iteration": 6, "epoch_length": 3, "max_epochs": 5}}
    torch.save(good, tmp_path / "checkpoint_epoch=2.pt")
    bad = tmp_path / "checkpoint_epoch=3.pt"
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif damage == "not_a_checkpoint":
        torch.save({"something": torch.zeros(1)}, bad)
    else:
        torch.save(good, bad)
        bad.write_bytes(bad.read_bytes()[:-100])
    fresh = torch.nn.Linear(3, 2)
    engine = Engine(lambda e, b: None)
    handler = ResumeFromCheckpoint(tmp_path, {"network": fresh, "trainer": engine})
    handler.attach(engine)
    with caplog.at_level(logging.INFO):
        engine.run([0, 0, 0], max_epochs=5)
    assert handler.loaded == tmp_path / "checkpoint_epoch=2.pt" and handler.others == [bad]
    assert any(r.levelno == logging.WARNING and str(bad) in r.getMessage() for r in caplog.records)
    assert any("resumed from" in r.getMessage() and "at epoch 2" in r.getMessage() for r in caplog.records)
    for k, v in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_atomic_saver_keeps_the_old_file_until_the_new_one_is_complete(tmp_path, monkeypatch):
    """ignite removes the dropped checkpoint before saving the next; the removal waits for a complete save."""
    from monai_denoiseg.engines.handlers import AtomicDiskSaver

    saver = AtomicDiskSaver(tmp_path)
    saver({"a": torch.ones(2)}, "checkpoint_epoch=1.pt")
    saver.remove("checkpoint_epoch=1.pt")  # what Checkpoint does first (n_saved=1)
    assert (tmp_path / "checkpoint_epoch=1.pt").is_file()

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        saver({"a": torch.zeros(2)}, "checkpoint_epoch=2.pt")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]  # no torn file, old one kept
    saver({"a": torch.zeros(2)}, "checkpoint_epoch=2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=2.pt"]


def test_best_model_with_a_fixed_name_is_replaced_only_by_a_complete_one(tmp_path, monkeypatch):
    """MONAI's key_metric_filename: the same file is removed and saved again; a failed save keeps the old one."""
    from monai_denoiseg.engines.handlers import AtomicDiskSaver

    saver = AtomicDiskSaver(tmp_path, filename="model.pt", best_metric=("voi", True))
    saver({"w": torch.ones(2)}, "model_key_metric=-0.5000.pt", {"priority": -0.5})
    assert saver.last_saved == (tmp_path / "model.pt", 0.5)
    saver.remove("model_key_metric=-0.5000.pt")

    def torn(obj, f, *_a, **_k):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # stands for the kill: no code after it runs in the saver

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        saver({"w": torch.zeros(2)}, "model_key_metric=-0.4000.pt", {"priority": -0.4})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.ones(2))
