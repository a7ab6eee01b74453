"""Device choice in one place: CUDA with bf16 autocast and channels-last when present, else CPU."""

from __future__ import annotations

import contextlib
import os

import torch

from workbench.errors import WorkbenchError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> this process's CUDA device (LOCAL_RANK under torchrun) or the CPU."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError("device = \"cuda\" but no CUDA device is visible; use \"auto\" or \"cpu\"")
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= torch.cuda.device_count():
            raise WorkbenchError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible: start "
                                 "at most one process per GPU (--nproc / --nproc-per-node), or set device = \"cpu\"")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on the CPU (CPU training stays float32 and deterministic)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_machine() -> dict[str, str]:
    """Versions and hardware for report headers and checkpoint sidecars."""
    import platform

    from workbench.version import __version__

    info = {
        "workbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpu_threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        count = torch.cuda.device_count()  # every local GPU (a DDP run uses them all)
        info["gpu"] = torch.cuda.get_device_name(0) if count == 1 else f"{count} × {torch.cuda.get_device_name(0)}"
    return info
