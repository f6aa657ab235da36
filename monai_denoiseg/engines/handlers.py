"""Ignite handlers that a config attaches like MONAI's own (an ``attach(engine)`` method)."""

from __future__ import annotations

from ignite.handlers import ProgressBar

__all__ = ["ProgressBarHandler"]


class ProgressBarHandler:
    """A console progress bar (tqdm) showing every loss term of the current iteration."""

    def __init__(self, persist: bool = True) -> None:
        self.bar = ProgressBar(persist=persist)

    def attach(self, engine) -> None:
        self.bar.attach(engine, output_transform=lambda out: out["terms"])
