"""Memory estimates: a network or a batch that cannot fit is refused before anything is allocated.

A width of 10⁵ or a batch of 65,536 CelebA images passes every bound a recipe checks and would then
end in an allocator traceback (or the kernel's OOM killer) minutes into a run. Instead the network
is first built on PyTorch's `meta` device, which records shapes and allocates nothing: its
parameters, and the activations one image makes on its way through (forward hooks on a meta
forward pass), give the bytes training needs. That is compared with what the machine has free now,
and a shortfall is one line naming the component, its params and both figures.

The estimate is a floor, not a promise (no allocator overhead, no workspace, the defense's extra
forward passes not counted): it refuses only what certainly cannot fit.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.errors import RunError, WorkbenchError

TRAINING_COPIES = 4
"""Bytes per parameter byte while training with Adam: the weights, their gradients and two moments."""
ACTIVATION_COPIES = 2
"""Bytes per activation byte while training: the activation kept for the backward pass and its gradient."""


@dataclass(frozen=True)
class Footprint:
    """What one network occupies: its parameters and buffers, and the activations of one image."""

    parameter_bytes: int
    activation_bytes_per_image: int | None
    """None when the meta forward pass was not possible (a network that does not run on `meta`)."""

    def training_bytes(self, batch: int) -> int:
        """A floor on the bytes training needs with batches of `batch` images (weights included)."""
        activations = (self.activation_bytes_per_image or 0) * batch * ACTIVATION_COPIES
        return self.parameter_bytes * TRAINING_COPIES + activations


def human(size: float) -> str:
    """1.5 GB, 320 MB, 12 kB (powers of 1000, as `df -H` and memory vendors count)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(size) < 1000 or unit == "PB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} PB"


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory free for this process on `device` now (CUDA: the driver's free memory; CPU: the
    kernel's MemAvailable, lowered to the cgroup's limit where one is set), or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    free: int | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):  # a container's limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            room = int(limit) - used
            free = room if free is None else min(free, room)
    return free


def footprint(build: Callable[[], nn.Module], input_shape: tuple[int, ...] | None) -> Footprint | None:
    """The footprint of the network `build()` makes, measured on the `meta` device (nothing allocated,
    no random number drawn from any generator); None when the network cannot be built there."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "copying a non-meta parameter ... is a no-op": meant here
            module = build()
    except Exception:  # a builder that needs real tensors is simply not estimated
        return None
    if not isinstance(module, nn.Module):
        return None
    tensors = [*module.parameters(), *module.buffers()]
    parameter_bytes = sum(t.numel() * t.element_size() for t in tensors)
    return Footprint(parameter_bytes, _activation_bytes(module, input_shape) if input_shape else None)


def _activation_bytes(module: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """Bytes of every leaf module's outputs for one image, from a forward pass on `meta`."""
    total = 0

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    handles = [leaf.register_forward_hook(count) for leaf in leaves]
    try:
        with torch.no_grad():
            module(torch.empty((1, *input_shape), device="meta"))
    except Exception:  # a forward pass that cannot run on meta is not estimated
        return None
    finally:
        for handle in handles:
            handle.remove()
    return total


def check_network_fits(what: str, found: Footprint | None, device: torch.device | str = "cpu") -> None:
    """Refuse (a WorkbenchError naming `what` and both figures) a network whose weights, gradients and
    optimizer state alone exceed the memory free on `device`."""
    if found is None:
        return
    needed = found.parameter_bytes * TRAINING_COPIES
    free = available_bytes(device)
    if free is not None and needed > free:
        raise WorkbenchError(
            f"{what}: its weights take {human(found.parameter_bytes)}, about {human(needed)} to train (weights, "
            f"gradients, optimizer state), and {torch.device(device).type} memory has {human(free)} free; "
            "choose a smaller width")


def check_batch_fits(what: str, found: Footprint | None, batch: int, device: torch.device | str,
                     resident: bool = True) -> None:
    """Refuse (a RunError naming `what`, the batch and both figures) training with batches of `batch`
    images that cannot fit on `device`. `resident`: the weights are already there (not counted again)."""
    if found is None or found.activation_bytes_per_image is None:
        return
    needed = found.training_bytes(batch) - (found.parameter_bytes if resident else 0)
    free = available_bytes(device)
    if free is not None and needed > free:
        activations = found.activation_bytes_per_image * batch * ACTIVATION_COPIES
        raise RunError(
            f"{what}: a batch of {batch:,} images needs about {human(activations)} of activations "
            f"({human(needed)} with gradients and optimizer state), and {torch.device(device).type} memory has "
            f"{human(free)} free; lower batch_size")


FOOTPRINT_ATTRIBUTE = "workbench_footprint"
"""Where a network built through the registry keeps its `Footprint` (read by the trainer)."""


def footprint_of(model: nn.Module) -> Footprint | None:
    """The footprint recorded on `model` or on the network a defense wrapped inside it."""
    for module in model.modules():
        found = module.__dict__.get(FOOTPRINT_ATTRIBUTE)
        if isinstance(found, Footprint):
            return found
    return None


class CheckedBackbone:
    """A backbone whose `build` first measures the network on `meta` and refuses, in one line naming the
    component and its params, one whose training could not fit in memory; the footprint stays on the
    built network, so the trainer checks its batch size against it before the first batch."""

    def __init__(self, backbone: Any, name: str, params: dict[str, Any]):
        self._backbone, self._name, self._params = backbone, name, params

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") or attribute in ("_backbone", "_name", "_params"):
            raise AttributeError(attribute)  # pickling and copying look these up before __init__ ran
        return getattr(self._backbone, attribute)

    def build(self, num_classes: int, in_channels: int, image_size: int, *args: Any, **kwargs: Any) -> nn.Module:
        found = footprint(lambda: self._backbone.build(num_classes, in_channels, image_size, *args, **kwargs),
                          (in_channels, image_size, image_size))
        shown = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        check_network_fits(f"backbone {self._name!r} ({shown or 'defaults'}; {num_classes} classes, "
                           f"{in_channels} channels, {image_size} px)", found)
        model = self._backbone.build(num_classes, in_channels, image_size, *args, **kwargs)
        if found is not None and isinstance(model, nn.Module):
            model.__dict__[FOOTPRINT_ATTRIBUTE] = found
        return model
