"""The README's "Compose it yourself" example runs as written, on a real medulla slice."""

import re
from pathlib import Path

import torch
from conftest import data_path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_on_real_data():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 'path = "medulla_fibsem.h5"' in code
    code = code.replace('path = "medulla_fibsem.h5"', f"path = {str(data_path('medulla_fibsem.h5'))!r}")
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert set(scope["loss"].last_terms) == {"loss", "res_c", "seg", "res_f"}
    assert torch.isfinite(scope["total"]) and scope["batch"]["noisy"].shape == (1, 1, 128, 128)
    grads = [p.grad for p in scope["net"].parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
