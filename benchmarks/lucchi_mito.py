"""The N2V paper's EM experiment (its Fig. 5 and 8) on Lucchi++: how much each denoiser helps mitochondria.

Runs (or reuses) the ``lucchi_mito`` rows of ``experiments.py`` (a segmenter trained on clean images; for
sigma 10 / 25 / 50 Noise2Void alone and N2V + segmenter end to end), then on the test split:

- (a) the clean-trained segmenter applied to each denoised result: the clean image (its ceiling), the
  noisy input itself, BM3D (``bm3d``
  from PyPI, given the true sigma, an oracle advantage), Noise2Void alone, the end-to-end denoiser;
- (b) the jointly trained segmenter on its own denoiser's output (from the run's test metrics);
- PSNR / SSIM of every image against the clean one.

Every entry (method / sigma, seed) records ``provenance``: commit and dirty flag, the hash of
:func:`evaluation_config` (the runs' configs and this evaluation's settings), md5 of the Lucchi++ files,
versions (bm3d's among them), seed.

    OMP_NUM_THREADS=1 python benchmarks/lucchi_mito.py [--seeds 0]     # results/lucchi_mito_denoisers.json + figure
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import experiments as ex  # noqa: E402

from monai_denoiseg.bundle import load_bundle_network  # noqa: E402
from monai_denoiseg.data.datasets import load_split  # noqa: E402
from monai_denoiseg.engines.evaluation import evaluate_prediction, predict_volume  # noqa: E402
from monai_denoiseg.provenance import config_hash, provenance  # noqa: E402

NAME = "lucchi_mito"
BUNDLE = ex.ROOT / "bundles" / "lucchi_mito_n2v"
FIGURE = ex.PANELS / "lucchi_mito_denoisers.png"  # git-ignored: it shows the dataset's pixels
TILE = (256, 256)


def evaluation_config() -> dict:
    """What determines this script's numbers but the seed: the config hash of each run it reads, its own settings."""
    exp = ex.EXPERIMENTS[NAME]
    return {"script": "lucchi_mito_denoisers", "runs": {row: config_hash(ex.run_config(NAME, row)) for row in exp.rows},
            "sigmas": list(ex.LUCCHI_SIGMAS), "tile": list(TILE), "bm3d_sigma": "true sigma / 255"}


def _net(run: Path):
    """The run's validation-selected network, built from the bundle config at the run's scale."""
    over = {"features": json.loads(ex.EXPERIMENTS[NAME].scale["features"])}
    return load_bundle_network(BUNDLE, "inference.yaml", str(ex._model_file(run)), overrides=over).eval()


def _test_split(sigma: int) -> dict[str, np.ndarray]:
    scale = ex.EXPERIMENTS[NAME].scale
    splits = ast.literal_eval(scale["splits"])  # the runner's own literal dict
    return load_split(ex.DATA / "lucchi_pp" / "test-input.tif", splits["test"], raw_key=None, label_key=None,
                      label_path=ex.DATA / "lucchi_pp" / "test-labels.tif", noise="gaussian",
                      noise_params={"sigma_range": [sigma, sigma]}, crop=json.loads(scale["crop"]),
                      cache_dir=BUNDLE / "data" / "noisy_cache")


@torch.no_grad()
def _run(net, image: np.ndarray, stages) -> dict[str, torch.Tensor]:
    return predict_volume(net, torch.as_tensor(image, dtype=torch.float32), TILE, network_kwargs={"stages": stages})


def _bm3d(noisy: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d

    return np.stack([np.clip(bm3d.bm3d(s, sigma_psd=sigma), 0, 1) for s in noisy]).astype(np.float32)


def evaluate_seed(seed: int) -> dict:
    seg_clean = _net(ex.run_dir(NAME, "seg_clean", seed))
    out: dict[str, dict] = {}
    panels = {}
    for sigma in ex.LUCCHI_SIGMAS:
        split = _test_split(sigma)
        noisy, clean, label = split["noisy"] / 255.0, split["clean"] / 255.0, split["label"]
        images = {"clean": clean.astype(np.float32), "noisy": noisy.astype(np.float32)}  # clean: the segmenter's ceiling
        try:
            t0 = time.time()
            images["bm3d"] = _bm3d(images["noisy"], sigma / 255.0)
            print(f"  bm3d sigma {sigma}: {time.time() - t0:.0f} s", flush=True)
        except ImportError:
            print("  bm3d not installed (pip install -e '.[bench]'): row left out", flush=True)
        for row in ("n2v_only", "n2v_joint_supervised"):
            net = _net(ex.run_dir(NAME, f"{row}/sigma{sigma}", seed))
            images[row] = _run(net, images["noisy"], ("denoiser",))["coarse"][0].numpy()
        for method, image in images.items():
            seg = _run(seg_clean, image, ("segmenter",))
            m = evaluate_prediction({"coarse": torch.as_tensor(image)[None], **seg}, clean=clean, labels=label,
                                    binary_key="affinity_prob")
            out[f"{method}/sigma{sigma}"] = {"psnr": m["psnr_coarse"], "ssim": m["ssim_coarse"],
                                             "iou_clean_segmenter": m["iou"], "f1_clean_segmenter": m["f1"]}
        joint = ex._summary(ex.run_dir(NAME, f"n2v_joint_supervised/sigma{sigma}", seed) / "test" / "metrics_test_epoch1.json")
        out[f"n2v_joint_supervised/sigma{sigma}"].update(iou_joint_segmenter=joint["iou"], f1_joint_segmenter=joint["f1"])
        panels[sigma] = ({k: v[0] for k, v in images.items() if k != "clean"}, clean[0], label[0])
    _figure(panels)
    return out


def _figure(panels) -> None:
    """Fig. 5-like: one row per sigma, columns noisy | BM3D | N2V | N2V + seg (end to end) | clean, mitochondria outlined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = ["noisy", "bm3d", "n2v_only", "n2v_joint_supervised", "clean"]
    fig = Figure(figsize=(3 * len(cols), 3 * len(panels)))
    FigureCanvasAgg(fig)
    for r, (sigma, (images, clean, label)) in enumerate(panels.items()):
        for c, col in enumerate(cols):
            ax = fig.add_subplot(len(panels), len(cols), r * len(cols) + c + 1)
            img = clean if col == "clean" else images.get(col)
            if img is not None:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
                ax.contour(label, levels=[0.5], colors="yellow", linewidths=0.5)
            ax.set_title(f"{col} (sigma {sigma})" if c == 0 else col, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=80)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    a = p.parse_args(argv)
    exp = ex.EXPERIMENTS[NAME]
    result = {"experiment": f"{NAME}_denoisers", "scale": exp.scale, "rows": {}}
    for seed in a.seeds:
        for row in exp.rows:
            ex.run_one(NAME, row, seed)
        prov = provenance(evaluation_config(), ex.data_files(NAME), seed)
        for method, metrics in evaluate_seed(seed).items():
            result["rows"].setdefault(method, {})[str(seed)] = {**metrics, "provenance": prov}
    ex.RESULTS.mkdir(parents=True, exist_ok=True)
    (ex.RESULTS / f"{NAME}_denoisers.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    cols = ("psnr", "ssim", "iou_clean_segmenter", "f1_clean_segmenter", "iou_joint_segmenter", "f1_joint_segmenter")
    table = ex.markdown_table(result, cols)
    notes, warns = ex.provenance_report(result)
    for w in warns:
        print(f"WARNING {NAME}_denoisers: {w}", file=sys.stderr, flush=True)
        table += f"\n> **Warning:** {w}\n"
    print(table)
    print("Provenance:\n" + "\n".join(f"- {line}" for line in notes))
    ex.update_docs({f"{NAME}_denoisers": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
