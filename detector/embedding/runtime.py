"""torch process settings, kept here because only ``embedding/`` may import torch.

A serving process never imports torch (learned encoders run in numpy, ``frozen.py``), so the
thread count is recorded and applied when torch is first needed, by training.
"""

from __future__ import annotations

import sys

_requested_threads: list[int] = []


def set_torch_threads(n_threads: int) -> None:
    """Use ``n_threads`` torch threads: now if torch is loaded, else once training loads it."""
    _requested_threads[:] = [n_threads]
    if "torch" in sys.modules:
        apply_torch_threads()


def apply_torch_threads() -> None:
    """Apply the recorded thread count (training calls this after importing torch)."""
    if _requested_threads:
        import torch

        torch.set_num_threads(_requested_threads[0])
