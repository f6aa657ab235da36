"""The architecture of a monai-denoiseg bioimage.io package: build :class:`ExportNetwork` from plain kwargs.

This file is copied into every package that ``python -m monai_denoiseg.bioimageio export`` writes and is
named there as the ``pytorch_state_dict`` weights' architecture source (``callable: build_export_network``),
so a bioimage.io consumer (bioimageio.core, deepImageJ's PyTorch engine, ilastik, napari) rebuilds the
network from the package alone, with ``monai-denoiseg`` installed. It imports nothing of the package at
module level, so it loads standalone.

``network_def`` is the bundle's ``network_def`` with every ``@reference`` and ``$expression`` resolved
to plain values at export time: nested ``{"_target_": "dotted.path", **kwargs}`` dicts are instantiated
here by importing ``dotted.path`` and calling it with the kwargs. Only targets under ``monai_denoiseg``,
``monai`` and ``torch`` are accepted (a package from elsewhere cannot make this call anything else), and
no expression is evaluated.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["build_export_network", "instantiate_plain", "ALLOWED_TARGET_PREFIXES"]

ALLOWED_TARGET_PREFIXES = ("monai_denoiseg.", "monai.", "torch.")
_SPECIAL_KEYS = ("_target_", "_requires_", "_disabled_", "_desc_", "_mode_")


def _locate(target: str):
    if not isinstance(target, str) or not target.startswith(ALLOWED_TARGET_PREFIXES):
        raise ValueError(f"_target_: expected a dotted path under {ALLOWED_TARGET_PREFIXES}, got {target!r}.")
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"_target_: cannot import {target!r}.")


def instantiate_plain(node: Any) -> Any:
    """Build ``node``: a dict with ``_target_`` is called with its (built) other items; lists and dicts recurse."""
    if isinstance(node, dict):
        if "_target_" in node:
            if node.get("_disabled_") in (True, "true", "True"):
                return None
            kwargs = {k: instantiate_plain(v) for k, v in node.items() if k not in _SPECIAL_KEYS}
            return _locate(node["_target_"])(**kwargs)
        return {k: instantiate_plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [instantiate_plain(v) for v in node]
    return node


def build_export_network(network_def: dict, strategy: str | None = None, spatial_dims: int = 2, in_channels: int = 1):
    """``ExportNetwork(instantiate_plain(network_def), strategy, spatial_dims, in_channels)``, untrained.

    Its ``forward(x)`` takes ``(B, in_channels, *spatial)`` float32 in [0, 1] and returns one tensor:
    the denoised image, then the segmenter's probabilities (see ``monai_denoiseg.networks.ExportNetwork``).
    """
    from monai_denoiseg.networks import ExportNetwork

    return ExportNetwork(instantiate_plain(network_def), strategy=strategy, spatial_dims=int(spatial_dims),
                         in_channels=int(in_channels))
