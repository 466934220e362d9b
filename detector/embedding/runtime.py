"""torch process settings, kept here because only ``embedding/`` may import torch."""

from __future__ import annotations


def set_torch_threads(n_threads: int) -> None:
    """``torch.set_num_threads`` where torch is installed; a torch-free install has no pool."""
    try:
        import torch  # lazy: importing torch costs seconds and identity-only users skip it
    except ImportError:
        return
    torch.set_num_threads(n_threads)
