"""The papers' comparisons on real data, run through the bundles (issue 6), resumable across sittings.

Every run is ``python -m monai.bundle run training`` of a bundle with overrides (strategy, seed, scale),
then ``evaluating`` of the checkpoint that validation selected, on the test split. A run whose test
metrics exist is skipped; a killed run resumes from its epoch-end checkpoint. Results (one JSON per
experiment, rows = strategy x seed) go to ``benchmarks/results/``; ``report`` turns them into the
tables of ``docs/results.md`` (mean and standard deviation over seeds).

Every run's entry records its ``provenance`` (commit and dirty flag, the hash of :func:`run_config`, md5 of
the data files, package versions, seed); ``report`` lists them per row, marks entries recorded before
provenance was ("no provenance") and warns when the seeds of one row come from different configs or data.

    python benchmarks/experiments.py run medulla_2d            # in the background: nohup ... &
    python benchmarks/experiments.py run medulla_2d --only joint --seeds 0 1 2
    python benchmarks/experiments.py report                    # benchmarks/results/*.json -> tables
    python benchmarks/experiments.py list

Set ``OMP_NUM_THREADS`` to keep cores free; runs land in ``benchmarks/runs/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from monai_denoiseg.provenance import config_hash, provenance

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "runs"
RESULTS = ROOT / "benchmarks" / "results"
DATA = Path(os.environ.get("MONAI_DENOISEG_DATA") or ROOT.parent / "shared" / "data")

# CPU scale (2 cores): a run takes minutes. configs/paper_scale.yaml holds the paper's settings.
CPU_SCALE = {"features": "[8,16,32,64]", "patch_size": "[128,128]", "batch_size": "4", "epochs": "12",
             "iterations_per_epoch": "50", "val_interval": "4", "lr": "5e-4", "pretrain_iterations": "600",
             "num_workers": "0"}


def rows(*strategies: str, **extra) -> dict[str, dict]:
    """Rows named after their strategy, with the same extra overrides; ``sequential`` reuses ``dn_only``."""
    out = {s: {"strategy": s, **extra} for s in strategies}
    if "sequential" in out and "dn_only" in out:
        out["sequential"]["pretrained_from"] = "dn_only"
    return out


@dataclass
class Experiment:
    """Rows (label -> bundle overrides, with ``strategy``) of one table, trained with ``seeds`` at ``scale``.

    ``pretrained_from`` in a row names the row whose trained denoiser it freezes (the paper's Sequential:
    the same seed's DN-only model), instead of pretraining one itself.
    """

    bundle: str
    rows: dict[str, dict]
    seeds: tuple[int, ...] = (0, 1, 2)
    configs: tuple[str, ...] = ("train.yaml",)
    scale: dict = field(default_factory=lambda: dict(CPU_SCALE))
    columns: tuple[str, ...] = ("psnr", "ssim", "voi_split", "voi_merge", "voi", "arand")
    row_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)  # rows run with fewer seeds
    description: str = ""
    noisy_input: dict | None = None  # load_split arguments of the test split: adds a "noisy input" row
    rerun_of: str | None = None  # the experiment this one repeats with newer code: the report puts both side by side

    def seeds_of(self, row: str) -> tuple[int, ...]:
        return self.row_seeds.get(row, self.seeds)


LUCCHI_SIGMAS = (10, 25, 50)
PAPER_ROWS = ("dn_only", "seg_only", "sequential", "dms", "joint", "no_denoiser", "no_fusion")
IEM_CONTROLS = ("joint_iem_off", "joint_shuffled_affinity")
# 3 seeds for the rows the claim rests on (DN-only, SEG-only, joint); the others get a first seed, more as time allows
ONE_SEED = {r: (0,) for r in ("sequential", "dms", "no_denoiser", "no_fusion")}
DN_BACKBONES = {"unet": {}, "dncnn": {"num_layers": 8, "features": 32}, "ridnet": {"features": 32, "num_blocks": 2}}
EXPERIMENTS: dict[str, Experiment] = {
    "medulla_2d": Experiment(
        "medulla_fibsem_denoiseg", rows(*PAPER_ROWS), row_seeds=ONE_SEED,
        noisy_input={"path": "medulla_fibsem.h5", "z_range": (200, 250)},
        description="Neurons, FIB-SEM medulla, Gaussian-Poisson noise, 2-D per slice "
                    "(z 0-169 train, 170-199 validation, 200-249 test); the paper's Tables 1 and 4.",
    ),
    # issue 14: the same comparison after the eval-mode fix (0b1f95f) and the faithful objective (1f8a31d), every
    # row with 3 seeds, plus the two IEM controls; and a 5x budget for joint vs its ablations
    "medulla_2d_rerun": Experiment(
        "medulla_fibsem_denoiseg", rows(*PAPER_ROWS, *IEM_CONTROLS),
        noisy_input={"path": "medulla_fibsem.h5", "z_range": (200, 250)},
        description="medulla_2d rerun with the eval-mode network, the reference-scale objective and the IEM controls.",
        rerun_of="medulla_2d",
    ),
    "medulla_2d_long": Experiment(
        "medulla_fibsem_denoiseg", rows("joint", "no_fusion", *IEM_CONTROLS[:1]),
        scale={**CPU_SCALE, "epochs": "60", "val_interval": "20"},
        noisy_input={"path": "medulla_fibsem.h5", "z_range": (200, 250)},
        description="joint vs no_fusion vs joint_iem_off at 5x the iterations (3000): does the ordering change?",
    ),
    "isbi_film": Experiment(
        "isbi2012_denoiseg", rows(*PAPER_ROWS), row_seeds=ONE_SEED,
        noisy_input={"path": "isbi2012/train-input.tif", "z_range": (25, 30), "raw_key": None, "label_key": None,
                     "label_path": "isbi2012/train-labels.tif", "noise": "film"},
        description="Neurons, ISBI 2012 ssTEM, film noise (slices 0-19 train, 20-24 validation, 25-29 test); "
                    "the paper's Table 2, right half.",
    ),
    "medulla_n2v": Experiment(
        "medulla_fibsem_denoiseg", rows("n2v_only", "n2v_joint_supervised", "n2v_joint_iem"),
        description="Experiment 1's synthetic noise without clean images: the Noise2Void strategies beside "
                    "medulla_2d's joint (which needs clean images).",
    ),
    # issue 14: the N2V rows after the masking fix (no replacement reads a blind spot) and label-free selection
    "medulla_n2v_rerun": Experiment(
        "medulla_fibsem_denoiseg", rows("n2v_only", "n2v_joint_supervised", "n2v_joint_iem"), rerun_of="medulla_n2v",
        description="medulla_n2v rerun: the eval-mode network, the reference-scale objective, blind spots whose "
                    "replacements never read another blind spot, n2v_only selected on its validation N2V loss.",
    ),
    "medulla_real_noise": Experiment(
        "medulla_fibsem_denoiseg",
        {**rows("seg_only", "n2v_joint_supervised", "n2v_joint_iem", noise="$None"),
         "n2v_joint_supervised+unlabelled": {"strategy": "n2v_joint_supervised", "noise": "$None",
                                             "unlabelled_key": "volumes/raw_unlabelled"}},
        columns=("voi_split", "voi_merge", "voi", "arand"),
        description="Real noise: the medulla raw as acquired (no synthetic noise, no clean image); "
                    "segmentation only, and the Noise2Void joint strategies; '+unlabelled': half of the "
                    "training items are patches of the second, unannotated cube (N2V loss only).",
    ),
    "medulla_3d": Experiment(
        "medulla_fibsem_denoiseg", rows("joint"), seeds=(0,), configs=("train.yaml", "train_3d.yaml"),
        scale={**CPU_SCALE, "features": "[4,8,16,32]", "patch_size": "[16,64,64]", "batch_size": "2",
               "roi_size": "[32,128,128]", "epochs": "6", "val_interval": "3"},
        description="3-D joint configuration (3-D affinities, 3-D mutex watershed, metrics per volume); beyond the paper.",
    ),
    "lucchi_mito": Experiment(
        "lucchi_mito_n2v", seeds=(0,), rows=
        {"seg_clean": {"strategy": "seg_clean", "noise_sigma": 25},
         **{f"{s}/sigma{sigma}": {"strategy": s, "noise_sigma": sigma}
            for sigma in LUCCHI_SIGMAS for s in ("n2v_only", "n2v_joint_supervised")}},
        scale={**CPU_SCALE, "features": "[16,16,32,64,128,16]", "pretrain_iterations": "200", "crop": "[512,512]",
               "splits": "{'train': [0, 70], 'val': [70, 80], 'test': [0, 5]}"},
        columns=("psnr", "ssim", "iou", "f1"),
        description="Mitochondria, Lucchi++ (train volume slices 0-69 train, 70-79 validation; test volume slices "
                    "0-4 test; 512x512 centre crops), clipped Gaussian noise sigma 10 / 25 / 50; the N2V paper's "
                    "EM experiment. benchmarks/lucchi_mito.py adds noisy input, BM3D and the clean-trained segmenter.",
    ),
    "backbones": Experiment(
        "medulla_fibsem_denoiseg",
        {f"{dn}+transunet/{s}": {"strategy": s, "network_def#denoiser": dn, "network_def#segmenter": "transunet",
                                 "network_def#denoiser_kwargs": repr(kw or {"features": [8, 16, 32, 64]}),
                                 "network_def#segmenter_kwargs": "{}"}
         for dn, kw in DN_BACKBONES.items() for s in ("sequential", "joint")},
        seeds=(0,),
        description="Backbones on experiment 1 (the paper's Table 3): denoiser UNet / DnCNN / RIDNet with a "
                    "TransUNet segmenter, Sequential vs Joint.",
    ),
    # issue 19: docs/own_data.md's worked example, the generic bundle at its documented (default) scale
    "isbi_own_data": Experiment(
        "em_denoiseg", rows("joint", "dn_only", "seg_only", train_file="{data}/isbi2012/train-input.tif",
                            train_label_file="{data}/isbi2012/train-labels.tif", background_label="0"),
        seeds=(0,), scale={},
        noisy_input={"path": "isbi2012/train-input.tif", "z_range": (24, 30), "raw_key": None, "label_key": None,
                     "label_path": "isbi2012/train-labels.tif", "noise": "gaussian_poisson"},
        description="docs/own_data.md's worked example: ISBI 2012 as a user's TIFF stack + label stack through "
                    "em_denoiseg with its defaults (Gaussian-Poisson noise; slices 0-20 train, 21-23 validation, "
                    "24-29 test: the default 70/10/20 split), one seed.",
    ),
}


def run_dir(name: str, row: str, seed: int) -> Path:
    return RUNS / name / f"{row.replace('/', '_').replace('+', '_')}_seed{seed}"


DATA_PLACEHOLDER = "{data}"  # in a row's file override: the shared data folder, kept out of the config hash


def _bundle_cmd(exp: Experiment, cmd: str, configs: list[str], out: Path, overrides: dict) -> list[str]:
    cfg = ROOT / "bundles" / exp.bundle / "configs"
    files = "[" + ",".join(repr(str(cfg / c)) for c in configs) + "]"
    args = [sys.executable, "-m", "monai.bundle", "run", cmd, "--config_file", files,
            "--output_dir", str(out), "--model_dir", str(out / "models"), "--data_dir", str(DATA)]
    for key, value in overrides.items():
        args += [f"--{key}", str(value).replace(DATA_PLACEHOLDER, str(DATA))]
    return args


def _steps(exp: Experiment) -> tuple[tuple[str, list[str]], ...]:
    """The bundle commands of a run and the config files each reads (later ones override earlier ones)."""
    return ("training", list(exp.configs)), ("evaluating", [*exp.configs, "evaluate.yaml"])


def run_config(name: str, row: str) -> dict:
    """Everything that determines a run's result but its seed and this machine's paths: the bundle, the
    parsed contents of each config file (comments and layout do not count) per command, the overrides
    (scale and row), and for a row reusing another's denoiser that row's config. Its hash is the run's
    ``provenance["config_hash"]``; the seeds of one row share it."""
    exp = EXPERIMENTS[name]
    folder = ROOT / "bundles" / exp.bundle / "configs"
    spec = dict(exp.rows[row])
    source = spec.pop("pretrained_from", None)
    files = sorted({c for _, configs in _steps(exp) for c in configs})
    out = {"bundle": exp.bundle, "steps": [list(s) for s in _steps(exp)],
           "config_files": {c: yaml.safe_load((folder / c).read_text()) for c in files},
           "overrides": {**exp.scale, **spec}}
    if source is not None:
        out["pretrained_from"] = {"row": source, "config": run_config(name, source)}
    return out


def data_files(name: str) -> list[Path]:
    """The data files an experiment's bundle reads: every literal ``locate_data('<file>', ...)`` of its
    configs, where ``locate_data`` finds it for the runs (``DATA``, then the bundle's ``data/``); a file
    found nowhere is left out; plus the files a row names with ``{data}/...`` (a user's volume)."""
    exp = EXPERIMENTS[name]
    bundle = ROOT / "bundles" / exp.bundle
    names = []
    for c in sorted({c for _, configs in _steps(exp) for c in configs}):
        for line in (bundle / "configs" / c).read_text().splitlines():
            if not line.lstrip().startswith("#"):
                names += [n for n in re.findall(r"locate_data\(\s*['\"]([^'\"]+)['\"]", line) if n not in names]
    found = ([f for f in (DATA / n, bundle / "data" / n) if f.is_file()][:1] for n in names)
    given = {Path(str(v).replace(DATA_PLACEHOLDER, str(DATA))) for spec in exp.rows.values() for v in spec.values()
             if str(v).startswith(DATA_PLACEHOLDER)}  # files a row names itself (a user's volume)
    return [f for first in found for f in first] + sorted(f for f in given if f.is_file())


def run_provenance(name: str, row: str, seed: int) -> dict:
    """:func:`~monai_denoiseg.provenance.provenance` of one run (row, seed) as it is launched now."""
    return provenance(run_config(name, row), data_files(name), seed)


def _model_file(out: Path) -> Path:
    models = sorted((out / "models").glob("*.pt"))
    if len(models) != 1:
        raise RuntimeError(f"{out}: expected one validation-selected model in models/, found {models}.")
    return models[0]


def run_one(name: str, row: str, seed: int) -> dict:
    """Train (or resume) one row with one seed, evaluate its validation-selected model on the test split."""
    exp = EXPERIMENTS[name]
    out = run_dir(name, row, seed)
    metrics_file = out / "test" / "metrics_test_epoch1.json"
    if metrics_file.is_file():
        return _summary(metrics_file)
    out.mkdir(parents=True, exist_ok=True)
    spec = dict(exp.rows[row])
    source = spec.pop("pretrained_from", None)
    overrides = {**exp.scale, **spec, "seed": seed}
    if source is not None:
        run_one(name, source, seed)
        overrides["pretrained"] = repr({"denoiser": str(_model_file(run_dir(name, source, seed)))})
    prov = run_provenance(name, row, seed)  # the code and data this sitting trains with
    log = (out / "log.txt").open("a")
    t0 = time.time()
    for cmd, configs in _steps(exp):
        extra = {"checkpoint": str(_model_file(out))} if cmd == "evaluating" else {}
        res = subprocess.run(_bundle_cmd(exp, cmd, configs, out, {**overrides, **extra}), stdout=log,
                             stderr=subprocess.STDOUT, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError(f"{name}/{row}/seed{seed}: {cmd} failed (exit {res.returncode}); see {out / 'log.txt'}.")
    (out / "run.json").write_text(json.dumps({"seconds": time.time() - t0, "overrides": overrides,
                                              "provenance": prov}, indent=1))
    return _summary(metrics_file)


def _summary(metrics_file: Path) -> dict:
    """The mean row of a metrics file; ``psnr``/``ssim`` of the final image, or the coarse one without fusion."""
    rows = json.loads(metrics_file.read_text())
    m = dict(rows[0] if isinstance(rows, list) else rows)
    for k in ("psnr", "ssim"):
        m.setdefault(k, m.get(f"{k}_final", m.get(f"{k}_coarse")))
    return m


def recorded(name: str) -> dict[str, dict[str, dict]]:
    """The rows already in ``results/<name>.json`` (the record a fresh checkout starts from)."""
    f = RESULTS / f"{name}.json"
    return json.loads(f.read_text())["rows"] if f.is_file() else {}


def seeds_run(name: str, row: str) -> list[int]:
    """Every seed with a run directory for ``row``, also seeds given with ``--seeds`` beyond the default."""
    stem = run_dir(name, row, 0).name.removesuffix("0")
    tails = (d.name[len(stem):] for d in run_dir(name, row, 0).parent.glob(f"{stem}*"))
    return sorted(int(t) for t in tails if t.isdigit())


def collect(name: str) -> dict:
    """Every finished run of an experiment, over the recorded ones: ``{row: {seed: metrics}}``, written to
    ``results/<name>.json``. Runs live in the git-ignored ``runs/``, so a new checkout has none: recorded
    results are kept, never dropped because their run directory is gone."""
    exp = EXPERIMENTS[name]
    table = {row: seeds for row, seeds in recorded(name).items() if row in exp.rows}
    for row in exp.rows:
        for seed in seeds_run(name, row):
            f = run_dir(name, row, seed) / "test" / "metrics_test_epoch1.json"
            if f.is_file():
                info = run_dir(name, row, seed) / "run.json"
                entry = _summary(f)
                if info.is_file():
                    run = json.loads(info.read_text())
                    entry["train_seconds"] = run["seconds"]
                    if "provenance" in run:  # runs of older versions have none: left without
                        entry["provenance"] = run["provenance"]
                table.setdefault(row, {})[str(seed)] = entry
    if exp.noisy_input is not None:
        table["noisy input"] = {"-": _noisy_input_metrics(exp)}
    result = {"experiment": name, "bundle": exp.bundle, "description": exp.description, "scale": exp.scale,
              "configs": list(exp.configs), "rows": table}
    if table:  # nothing finished yet: no file
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def _noisy_input_metrics(exp: Experiment) -> dict:
    """PSNR / SSIM of the fixed noisy test split itself (the bundle's cached copy), for scale."""
    from monai_denoiseg.data.datasets import load_split
    from monai_denoiseg.engines.evaluation import evaluate_prediction

    kw = dict(exp.noisy_input)
    kw = {**kw, "path": DATA / kw["path"], **({"label_path": DATA / kw["label_path"]} if "label_path" in kw else {})}
    split = load_split(cache_dir=ROOT / "bundles" / exp.bundle / "data" / "noisy_cache", keys=("noisy", "clean"), **kw)
    m = evaluate_prediction({"coarse": split["noisy"][None] / 255.0}, clean=split["clean"] / 255.0)
    files = [kw["path"], *([kw["label_path"]] if "label_path" in kw else [])]
    return {"psnr": m["psnr_coarse"], "ssim": m["ssim_coarse"],
            "provenance": provenance({"noisy_input": exp.noisy_input}, files)}


def provenance_report(result: dict, current: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Per row of ``result``: its config hashes, commits and seeds (``no provenance`` for entries recorded
    before provenance was), and warnings for rows whose seeds come from different configs or data.

    ``current``: row -> the hash of its :func:`run_config` now; entries of another config are marked.
    Returns ``(summary lines, warnings)``.
    """
    lines, warnings = [], []
    for row, seeds in result["rows"].items():
        groups: dict[tuple, list[str]] = {}
        commits, bare = set(), []
        for seed, m in seeds.items():
            p = m.get("provenance")
            if not isinstance(p, dict):
                bare.append(seed)
                continue
            md5 = tuple(sorted((p.get("data_md5") or {}).values()))
            groups.setdefault((p.get("config_hash"), md5), []).append(seed)
            commits.add(f"{(p.get('commit') or 'no git')[:10]}{' (dirty)' if p.get('dirty') else ''}")
        named = {k: f"config {k[0]}, data {config_hash(list(k[1]))[:8]}" for k in groups}
        parts = []
        for k, group in groups.items():
            stale = " (not the current config)" if current and row in current and k[0] != current[row] else ""
            parts.append(f"{named[k]}{stale}: seeds {', '.join(group)}")
        if commits:
            parts.append("commits " + ", ".join(sorted(commits)))
        if bare:
            parts.append(f"no provenance: seeds {', '.join(bare)}")
        lines.append(f"{row}: " + "; ".join(parts))
        if len(groups) > 1:
            what = [w for i, w in enumerate(("config", "data")) if len({k[i] for k in groups}) > 1]
            warnings.append(f"row {row!r} mixes runs of different {' and '.join(what)}: "
                            + "; ".join(f"seeds {', '.join(g)} ({named[k]})" for k, g in groups.items()))
    return lines, warnings


def markdown_table(result: dict, columns) -> str:
    """Mean +- standard deviation (ddof=1) over seeds per row; n = number of seeds."""
    head = "| strategy | n | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 2) + "\n"
    lines = []
    for row, seeds in result["rows"].items():
        cells = []
        for col in columns:
            v = np.array([m[col] for m in seeds.values() if m.get(col) is not None], dtype=float)
            v = v[np.isfinite(v)]
            cells.append("-" if v.size == 0 else f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if v.size > 1 else f"{v[0]:.4f}")
        n = "-" if "-" in seeds else len(seeds)
        lines.append(f"| {row} | {n} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


LOWER_IS_BETTER = {"voi", "voi_split", "voi_merge", "arand"}


def comparison(result: dict, reference: str, columns) -> str:
    """``reference`` against every other row: the difference of means, signed so that > 0 means the
    reference is better, beside the largest seed standard deviation of the two rows (the noise floor)."""
    rows = result["rows"]
    if reference not in rows:
        return ""

    def stats(row, col):
        v = np.array([m[col] for m in rows[row].values() if m.get(col) is not None], dtype=float)
        v = v[np.isfinite(v)]
        return (v.mean(), v.std(ddof=1) if v.size > 1 else np.nan, v.size) if v.size else None

    out = [f"| {reference} vs | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for row in rows:
        if row == reference:
            continue
        cells = []
        for col in columns:
            a, b = stats(reference, col), stats(row, col)
            if a is None or b is None:
                cells.append("-")
                continue
            gain = (b[0] - a[0]) if col in LOWER_IS_BETTER else (a[0] - b[0])
            noise = np.nanmax([a[1], b[1]]) if np.isfinite([a[1], b[1]]).any() else np.nan
            verdict = "" if not np.isfinite(noise) else (" (wins)" if gain > noise else " (loses)" if gain < -noise
                                                        else " (within seed noise)")
            cells.append(f"{gain:+.4f} / {noise:.4f}{verdict}" if np.isfinite(noise) else f"{gain:+.4f} / n=1")
        out.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def before_after(before: dict, after: dict, columns) -> str:
    """Per row and column the mean of ``before`` (an earlier code's run) and of ``after``, each with its seed count."""
    def mean(seeds, col):
        v = np.array([m[col] for m in seeds.values() if m.get(col) is not None], dtype=float)
        v = v[np.isfinite(v)]
        return f"{v.mean():.4f} (n={v.size})" if v.size else "-"

    out = ["| strategy | " + " | ".join(f"{c} before → after" for c in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for row, seeds in after["rows"].items():
        old = before["rows"].get(row)
        out.append(f"| {row} | " + " | ".join(f"{mean(old, c) if old else '-'} → {mean(seeds, c)}" for c in columns) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("run", "report", "list"))
    p.add_argument("experiments", nargs="*")
    p.add_argument("--only", nargs="*", help="rows to run (default: all of the experiment)")
    p.add_argument("--seeds", nargs="*", type=int, help="seeds to run (default: the experiment's)")
    p.add_argument("--update-docs", action="store_true", help="report: refresh the tables in docs/results.md")
    a = p.parse_args(argv)
    names = a.experiments or list(EXPERIMENTS)
    if a.action == "list":
        for n, e in EXPERIMENTS.items():
            print(f"{n}: {e.bundle} rows={list(e.rows)} seeds={e.seeds}\n    {e.description}")
    elif a.action == "run":
        for n in names:
            exp, done = EXPERIMENTS[n], recorded(n)  # rows in results/ from an earlier sitting are not rerun
            for seed in a.seeds or exp.seeds:  # seed-major: every row gets a first seed before any gets a third
                for row in a.only or exp.rows:
                    if seed not in exp.seeds_of(row) and not (a.only and a.seeds):  # explicit rows and seeds: run them
                        continue
                    if str(seed) in done.get(row, {}):
                        continue
                    t0 = time.time()
                    try:
                        m = run_one(n, row, seed)
                    except RuntimeError as e:  # one failed run must not stop a stream of hours: report, go on
                        print(f"FAILED {e}", flush=True)
                        continue
                    print(f"{n} {row} seed{seed}: " + ", ".join(f"{c}={m.get(c)}" for c in exp.columns)
                          + f" ({time.time() - t0:.0f} s)", flush=True)
                collect(n)
    elif a.action == "report":
        tables = {}
        for n in names:
            r = collect(n)
            cols = EXPERIMENTS[n].columns
            ref = "joint" if "joint" in r["rows"] else list(EXPERIMENTS[n].rows)[-1]
            tables[n] = (markdown_table(r, cols) + "\n" + comparison(r, ref, cols)) if r["rows"] else \
                "*(no finished run yet)*\n"
            if r["rows"] and EXPERIMENTS[n].rerun_of:
                old = EXPERIMENTS[n].rerun_of
                tables[n] += f"\nBefore (`{old}`, older code) → after (this rerun), means over seeds:\n\n" + \
                    before_after({"rows": recorded(old)}, r, cols)
            current = {row: config_hash(run_config(n, row)) for row in EXPERIMENTS[n].rows}
            notes, warns = provenance_report(r, current)
            for w in warns:  # never mixed silently: on stderr, and under the table in the docs
                print(f"WARNING {n}: {w}", file=sys.stderr, flush=True)
                tables[n] += f"\n> **Warning:** {w}\n"
            print(f"## {n}\n{r['description']}\n\n" + tables[n])
            print("Provenance:\n" + "\n".join(f"- {line}" for line in notes) + "\n")
            if a.update_docs and r["rows"]:
                metric_figure(n, r, [c for c in cols if c not in ("voi_split", "voi_merge")])
        if a.update_docs:
            update_docs(tables)
    return 0


FIGURES = ROOT / "docs" / "figures"
PANELS = FIGURES / "panels"  # git-ignored: they render the datasets' pixels, which the repository never stores


def metric_figure(name: str, result: dict, columns) -> Path:
    """Bars of mean +- seed standard deviation per row, one panel per metric (``docs/figures/<name>.png``),
    and a copy of each row's seed-0 test panel (Fig. 2-style) into the git-ignored ``docs/figures/panels/``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in result["rows"] if r != "noisy input"]
    fig = Figure(figsize=(3.2 * len(columns), 3.2))
    FigureCanvasAgg(fig)
    for i, col in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), i + 1)
        means, stds, labels = [], [], []
        for row in rows:
            v = np.array([m[col] for m in result["rows"][row].values() if m.get(col) is not None], dtype=float)
            v = v[np.isfinite(v)]
            if v.size:
                labels.append(row)
                means.append(v.mean())
                stds.append(v.std(ddof=1) if v.size > 1 else 0.0)
        ax.bar(range(len(means)), means, yerr=stds, capsize=3,
               color=["tab:red" if lab.endswith("joint") or lab == "joint" else "tab:gray" for lab in labels])
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(col + (" (lower is better)" if col in LOWER_IS_BETTER else ""), fontsize=9)
    fig.suptitle(f"{name}: mean +- std over seeds (test split)", fontsize=10)
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    out = FIGURES / f"{name}.png"
    fig.savefig(out, dpi=80)
    for row in rows:
        panel = run_dir(name, row, 0) / "test" / "figure_test_epoch1.png"
        if panel.is_file():
            PANELS.mkdir(parents=True, exist_ok=True)
            (PANELS / f"{name}_{panel.parent.parent.name}.png").write_bytes(panel.read_bytes())
    return out


def update_docs(tables: dict[str, str], doc: Path = ROOT / "docs" / "results.md") -> None:
    """Replace the text between ``<!-- table:<name> -->`` and ``<!-- /table:<name> -->`` in ``doc``."""
    if not doc.is_file():
        return
    text = doc.read_text()
    for name, table in tables.items():
        start, end = f"<!-- table:{name} -->", f"<!-- /table:{name} -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + start + "\n" + table + rest[rest.index(end):]
    doc.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
