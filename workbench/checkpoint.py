"""Checkpoints: safetensors tensors plus a JSON sidecar, written atomically, never pickle."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from workbench.errors import RunError


class CheckpointError(RunError):
    """A checkpoint that is missing, truncated or does not match what it should hold."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """`path` (.safetensors) and `path.json`; the sidecar is written last and marks completion."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(contiguous, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True, default=str))


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata); CheckpointError naming the file when anything is off."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint missing")
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{sidecar}: metadata missing; the checkpoint was not finished") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{sidecar}: unreadable metadata ({exc})") from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({exc})") from None
    return tensors, meta


def state_to_tensors(prefix: str, state: dict[str, Any]) -> dict[str, Tensor]:
    """Flatten a (possibly nested) state dict of tensors into safetensors keys `prefix.a.b`."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Tensor):
            out[name] = value
        elif isinstance(value, dict):
            out.update(state_to_tensors(name, value))
    return out


def tensors_with_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def model_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """A module's state dict without shared-storage aliases (safetensors refuses duplicates)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's weights and buffers: what a stage that depends on a trained
    model (KED-MI's GAN, an attack's reconstructions) is cached by."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]

