"""docs/tutorial.ipynb stays runnable: its code cells run in order as one script (what a kernel does, without
needing Jupyter), at the notebook's own QUICK sizes, on a crop of the real ISBI 2012 stack; and it is kept
without outputs, so no pixels of the datasets ever land in the repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import DATA_DIR, data_path

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def test_the_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 6 and all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_every_cell_runs_and_the_package_passes_bioimageio_core(tmp_path, monkeypatch):
    data_path("isbi2012", "train-input.tif")  # fails loudly where the data are missing
    monkeypatch.setenv("TUTORIAL_QUICK", "1")
    monkeypatch.setenv("TUTORIAL_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("MONAI_DENOISEG_DATA", str(DATA_DIR))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(NOTEBOOK.parent)  # where Jupyter starts a notebook's kernel
    nb = json.loads(NOTEBOOK.read_text())
    ns: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}:{cell['id']}", "exec"), ns)
    m = ns["metrics"]
    assert all(np.isfinite(m[k]) for k in ("psnr_final", "ssim_final", "voi", "arand")), m
    assert ns["denoised"].shape == (256, 256) and ns["denoised"].dtype == np.uint8
    assert ns["out"]["s0"].shape == (10, 256, 256)
    assert ns["summary"].status == "passed" and Path(ns["package"]).is_file()
    assert not (NOTEBOOK.parent / "tutorial_run").exists()  # everything went to TUTORIAL_DIR
