"""Encoder weights ↔ bytes, with ``torch.load(weights_only=True)``: no pickle code paths."""

from __future__ import annotations

import io
from typing import Any

from ..errors import BundleError


def tensors_to_bytes(tensors: dict[str, Any]) -> bytes:
    import torch  # lazy: only learned encoders have weights

    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def tensors_from_bytes(data: bytes) -> dict[str, Any]:
    import pickle

    import torch

    # weights_only: refuse anything but tensors and plain containers (no pickle code paths).
    try:
        loaded = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise BundleError(f"encoder weights could not be read: {exc}") from exc
    if not isinstance(loaded, dict):
        raise BundleError("encoder weights are not a state dict")
    return loaded
