"""What every backbone shares: the hidden-output module base and local weight loading.

Weights only ever come from a local file (safetensors, or a torch state dict read with
`weights_only=True`); nothing here downloads.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from workbench.api import WorkbenchError

# Keys that checkpoint wrappers commonly nest the real state dict under.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
# How many offending keys an error message lists before summarising the rest.
_SHOWN_KEYS = 4


class HiddenClassifier(nn.Module, abc.ABC):
    """A classifier whose `forward_hidden` returns logits and every hidden output in one pass.

    Subclasses set `feature_dim` (size of the penultimate feature, always the last hidden) and
    `hidden_names` (one short name per hidden), and implement `forward_hidden`.
    """

    feature_dim: int
    hidden_names: list[str]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_hidden(x)[0]

    @abc.abstractmethod
    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(logits, hiddens) in one forward pass."""


def check_build_args(owner: str, num_classes: int, in_channels: int, image_size: int) -> None:
    """Reject impossible build arguments with one line instead of a shape error deep in torch."""
    for key, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("image_size", image_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WorkbenchError(f"{owner}: {key} must be a positive integer (got {value!r})")


def require_file(owner: str, path: Path | None) -> None:
    """Fail at creation time, before any training, when a named weights file is not there.

    `~` is expanded here rather than in the params, so a resolved recipe stays portable.
    """
    if path is not None and not Path(path).expanduser().is_file():
        raise WorkbenchError(
            f"{owner}: pretrained_file '{path}' does not exist; give a local .safetensors file or a torch "
            "state dict (.pt/.pth); weights are never downloaded"
        )


def read_state_dict(owner: str, path: Path) -> dict[str, Tensor]:
    """Tensors from a local safetensors file or torch checkpoint, unwrapped to a flat state dict.

    Accepts the shapes checkpoints come in: a bare state dict, one nested under `state_dict` /
    `model` (training scripts), and keys prefixed `module.` (saved from DataParallel, as the
    BiDO authors' checkpoints are).
    """
    path = Path(path)
    require_file(owner, path)
    local = path.expanduser()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(local), device="cpu")
        else:
            state = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure is a file the user has to replace
        kind = "safetensors" if path.suffix == ".safetensors" else "torch state dict (weights_only)"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkbenchError(
            f"{owner}: pretrained_file '{path}' could not be read as {kind}: {reason}"
        ) from None
    while isinstance(state, Mapping) and not _is_tensor_dict(state):
        inner = next((state[key] for key in _WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not state or not _is_tensor_dict(state):
        raise WorkbenchError(
            f"{owner}: pretrained_file '{path}' holds no state dict (expected a mapping of names to tensors)"
        )
    tensors = dict(state)
    if all(key.startswith("module.") for key in tensors):
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    return tensors


def _is_tensor_dict(state: Mapping) -> bool:
    return all(isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items())


def load_checked(
    owner: str,
    path: Path,
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    what: str = "model",
    key_prefix: str = "",
) -> None:
    """Load `state` into `module`, or explain in one line which keys or shapes do not fit.

    BatchNorm's `num_batches_tracked` may be absent (older torchvision checkpoints lack it);
    everything else must match exactly, so a wrong file never half-loads silently.
    `key_prefix` is put back on key names in messages when the caller stripped it from the file.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key_prefix}{key} file {list(state[key].shape)} vs model {list(expected[key].shape)}"
        for key in state
        if key in expected and state[key].shape != expected[key].shape
    ]
    problems = []
    if mismatched:
        problems.append("shape " + _listed(mismatched))
    if missing:
        problems.append("missing " + _listed(key_prefix + key for key in missing))
    if unexpected:
        problems.append("unexpected " + _listed(key_prefix + key for key in unexpected))
    if problems:
        raise WorkbenchError(
            f"{owner}: pretrained_file '{path}' does not fit the {what}: " + "; ".join(problems)
        )
    module.load_state_dict(dict(state), strict=False)


def _listed(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_SHOWN_KEYS])
    return shown + (f" (+{len(items) - _SHOWN_KEYS} more)" if len(items) > _SHOWN_KEYS else "")
