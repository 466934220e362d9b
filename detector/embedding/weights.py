"""Encoder weights ↔ bytes: numpy ``.npz`` (no pickle: ``allow_pickle=False``), read by any
process without torch. ``tensors_from_bytes`` reads older bundles' ``encoder.pt`` with
``torch.load(weights_only=True)``."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np

from ..errors import BundleError


def arrays_to_bytes(arrays: dict[str, Any]) -> bytes:
    """Named float arrays as an uncompressed ``.npz``."""
    buffer = io.BytesIO()
    named: dict[str, Any] = {name: np.asarray(value) for name, value in arrays.items()}
    np.savez(buffer, **named)
    return buffer.getvalue()


def arrays_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise BundleError(f"encoder weights could not be read: {exc}") from exc
    if any(array.dtype.kind != "f" for array in arrays.values()):
        raise BundleError("encoder weights are not all float arrays")
    return arrays


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
