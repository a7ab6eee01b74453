"""Checkpoints: one safetensors file holding the tensors, their metadata and a checksum.

The metadata (JSON) and a SHA-256 over the metadata and every tensor (name, dtype, shape,
bytes) sit in the safetensors header's `__metadata__`, so a checkpoint and its metadata
commit as one file, written atomically (temp file, fsync, rename): a process killed at any
moment leaves either the old checkpoint or the new one, never tensors of one epoch with the
metadata of another. Loading verifies the checksum; a flipped bit anywhere is refused with a
line that names the file. Never pickle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from workbench.errors import RunError
from workbench.storage.files import atomic_path, atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)

# `__metadata__` keys; FORMAT marks a file this tool wrote (and so may verify or delete).
FORMAT = "workbench-checkpoint/1"
FORMAT_KEY = "format"
META_KEY = "workbench"
SUM_KEY = "sha256"

# What a corrupt file in a run directory is answered with: how to get going again.
WAY_FORWARD = ("delete it and continue with `workbench run RUN_DIR --resume` (what it held is recomputed), "
               "or start the run over with --force")


class CheckpointError(RunError):
    """A checkpoint that is missing, truncated, corrupt or does not match what it should hold."""


def checksum(tensors: dict[str, Tensor], meta_json: str) -> str:
    """SHA-256 over the metadata text and each tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    digest.update(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.numel():
            raw = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(memoryview(raw.numpy()))
    return digest.hexdigest()


def _meta_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, default=str)


def save_checkpoint(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """`path` (.safetensors): tensors, metadata and checksum in one file, replaced atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta_json = _meta_json(meta)
    header = {FORMAT_KEY: FORMAT, META_KEY: meta_json, SUM_KEY: checksum(contiguous, meta_json)}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=header)
    # The old two-file scheme's sidecar would now describe another state: it must not outlive it.
    legacy_sidecar(path).unlink(missing_ok=True)


def legacy_sidecar(path: Path) -> Path:
    """Where earlier versions kept a checkpoint's metadata (`x.safetensors` -> `x.json`); unused now."""
    return Path(path).with_suffix(".json")


def read_header(path: Path) -> dict[str, str]:
    """The safetensors `__metadata__` of a file (no tensors read, nothing verified)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({_first_line(exc)}); {WAY_FORWARD}") from None


def is_workbench_checkpoint(path: Path) -> bool:
    """Whether `path` is a checkpoint this tool wrote (its header says so); False on any doubt."""
    try:
        return read_header(path).get(FORMAT_KEY) == FORMAT
    except CheckpointError:
        return False


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's metadata from its header alone (for listings; not verified)."""
    header = read_header(path)
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: no readable metadata in the header; {WAY_FORWARD}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata is not a JSON object; {WAY_FORWARD}")
    return meta


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata), checksum verified; CheckpointError naming the file when anything is off."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint missing")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    header = read_header(path)
    if header.get(FORMAT_KEY) != FORMAT or SUM_KEY not in header or META_KEY not in header:
        raise CheckpointError(f"{path}: no checksum in the header (written by an older workbench or another "
                              f"tool), so it cannot be verified; {WAY_FORWARD}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({_first_line(exc)}); {WAY_FORWARD}") from None
    if checksum(tensors, header[META_KEY]) != header[SUM_KEY]:
        raise CheckpointError(f"{path}: corrupt checkpoint (checksum mismatch); {WAY_FORWARD}")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:  # unreachable with a matching checksum, but never trust
        raise CheckpointError(f"{path}: unreadable metadata ({exc}); {WAY_FORWARD}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata is not a JSON object; {WAY_FORWARD}")
    return tensors, meta


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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

