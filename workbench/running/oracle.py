"""The target as an attack may see it: `TargetOracle`, built by the harness from the attack's declared access.

An attack declares what it may see of the target with `AttackCapabilities(access=...)`:

- `white-box`: the module itself (`ctx.target`, and `oracle.module`), its gradients and logits;
- `black-box`: probability vectors only (`oracle.probabilities(x)`, the target's softmax, no grad);
- `label-only`: the top-1 label only (`oracle.labels(x)`).

For `black-box` and `label-only` attacks the harness sets `ctx.target = None` and hands over only
the oracle. Every call counts `x.shape[0]` images as queries; an optional `query_budget` (the
`QueryBudget` params mixin) is enforced: the call that would go past it raises a `WorkbenchError`
naming the attack, the budget and the count, and sends nothing to the target.

What is and is not guaranteed. The oracle holds no reference to the module in any attribute:
its slots hold ints and strings, it has no `__dict__`, `vars()` fails on it, `__getattr__` does
not forward, its methods are plain functions without closures, and the tensors it returns are
fresh, detached and carry no autograd graph. The forward function (a closure over the module) is
kept in this module's private `_FORWARDS` table, keyed weakly by the oracle. So nothing reachable
from the oracle object by attributes, slots, `__closure__`, `__self__`, `__func__` or `__wrapped__`
leads to the module, its parameters, gradients or logits; `tests/test_oracle.py` walks all of
them. Python cannot do more within one process: code that imports this module's privates, walks
`gc.get_objects()`, inspects interpreter frames or uses ctypes can still find the module. The
threat model is enforced against attacks written in good faith and against accidental leaks
(an attack that reads logits it should not see), not against a hostile plugin; a plugin runs in
the same process with the same rights as the workbench.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from workbench.components.capabilities import ACCESS_LEVELS
from workbench.components.params import StrictModel, bounded_int
from workbench.errors import WorkbenchError


class ThreatModelError(WorkbenchError):
    """An attack asked its oracle for more than its declared access allows."""


class QueryBudget(StrictModel):
    """Params mixin for black-box and label-only attacks: the optional query budget the oracle enforces.

    `class MyParams(QueryBudget): ...` adds the field; the harness reads it (and only it) through
    `isinstance(params, QueryBudget)`."""

    query_budget: bounded_int(1, 10**12) | None = None
    """The most images the attack may send to the target (every probability or label query counts
    one per image); the run stops with an error naming the attack when it would go past. None: no limit."""


# The forward closures, one per live oracle: not reachable from the oracle object itself (see the module doc).
_FORWARDS: weakref.WeakKeyDictionary[TargetOracle, Callable[[Tensor], Tensor]] = weakref.WeakKeyDictionary()
_MODULES: weakref.WeakKeyDictionary[TargetOracle, nn.Module] = weakref.WeakKeyDictionary()


class TargetOracle:
    """The target behind an API: probabilities (white-box, black-box) or top-1 labels (any access),
    every image counted, an optional budget enforced; the module itself for white-box only."""

    __slots__ = ("__weakref__", "_access", "_queries", "_budget", "_num_classes", "_attack", "_device", "_batch")

    def __init__(self, target: nn.Module, access: str, num_classes: int, *, budget: int | None = None,
                 attack: str = "attack", device: torch.device | str | None = None, batch_size: int = 512):
        if access not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {', '.join(ACCESS_LEVELS)}, not {access!r}")
        if budget is not None and budget < 1:
            raise ValueError(f"budget must be a positive number of images or None, not {budget!r}")
        self._access, self._budget, self._num_classes = access, budget, int(num_classes)
        self._queries, self._attack, self._batch = 0, attack, int(batch_size)
        self._device = torch.device(device) if device is not None else _device_of(target)
        _FORWARDS[self] = _forward_of(target)
        if access == "white-box":
            _MODULES[self] = target

    # -------------------------------------------------------------- what any attack may read

    @property
    def access(self) -> str:
        """`white-box`, `black-box` or `label-only`: what this oracle answers."""
        return self._access

    @property
    def queries(self) -> int:
        """Images sent to the target so far (probability and label queries alike)."""
        return self._queries

    @property
    def budget(self) -> int | None:
        """The most images this oracle answers for (None: no limit)."""
        return self._budget

    @property
    def num_classes(self) -> int:
        """K, the number of the target's classes (the length of a probability vector)."""
        return self._num_classes

    @property
    def attack(self) -> str:
        """The attack this oracle answers (named in its errors)."""
        return self._attack

    @property
    def remaining(self) -> int | None:
        """Images left within the budget (None: no limit)."""
        return None if self._budget is None else self._budget - self._queries

    # -------------------------------------------------------------- queries

    def probabilities(self, x: Tensor) -> Tensor:
        """The target's softmax `[n, K]` for images `x` `[n, C, H, W]` in [0, 1] (float32, detached,
        on `x`'s device). White-box and black-box only; counts `n` queries."""
        if self._access == "label-only":
            raise ThreatModelError(f"attack {self._attack!r} declared label-only access: its oracle answers "
                                   "labels(x) only, not probabilities (declare access='black-box' to see them)")
        return torch.softmax(self._answer(x), dim=1).to(x.device)

    def labels(self, x: Tensor) -> Tensor:
        """The target's top-1 class `[n]` (int64, on `x`'s device) for images `x`; counts `n` queries."""
        return self._answer(x).argmax(dim=1).to(x.device)

    @property
    def module(self) -> nn.Module:
        """The target module itself: white-box oracles only."""
        if self._access != "white-box":
            raise ThreatModelError(f"attack {self._attack!r} declared {self._access} access: the target module, "
                                   "its parameters, gradients and logits are not available to it")
        return _MODULES[self]

    def _answer(self, x: Tensor) -> Tensor:
        """The target's float32 logits for `x`, counted and within the budget (never handed out as such)."""
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ThreatModelError(f"attack {self._attack!r}: the oracle takes a batch of images [n, C, H, W], "
                                   f"not {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
        n = int(x.shape[0])
        if self._budget is not None and self._queries + n > self._budget:
            raise WorkbenchError(f"attack {self._attack!r}: query budget {self._budget:,} exhausted: "
                                 f"{self._queries:,} images sent, {n:,} more asked (raise `query_budget` "
                                 "or lower the attack's search budget)")
        self._queries += n
        forward = _FORWARDS[self]
        x = x.detach().to(self._device, torch.float32)
        with torch.no_grad():
            return torch.cat([forward(chunk) for chunk in x.split(self._batch)]) if n else \
                torch.zeros(0, self._num_classes, device=self._device)

    # -------------------------------------------------------------- no way through

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}: it answers probabilities(x) "
                             "(white-box, black-box), labels(x), and module (white-box) only")

    def __reduce_ex__(self, protocol: int) -> Any:
        raise TypeError("a TargetOracle cannot be pickled or copied (it would carry the target)")

    def __repr__(self) -> str:
        budget = "no budget" if self._budget is None else f"budget {self._budget:,}"
        return f"TargetOracle({self._access}, {self._num_classes} classes, {self._queries:,} queries, {budget})"


def _forward_of(target: nn.Module) -> Callable[[Tensor], Tensor]:
    """The target's logits as a closure (the one place the module lives for a non-white-box oracle)."""
    def forward(x: Tensor) -> Tensor:
        return target(x).float().detach()

    return forward


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def query_budget_of(attack: Any) -> int | None:
    """The attack's `query_budget` param when its params use the `QueryBudget` mixin, else None."""
    params = getattr(attack, "params", None)
    return params.query_budget if isinstance(params, QueryBudget) else None
