"""One seed scheme for every random stream of a run.

`derive(seed, *purpose)` turns the run's seed and a purpose ("init", "batch-order", epoch...)
into an independent 63-bit seed. A stream depends only on its own purpose, never on how many
other streams were drawn before it, so adding an attack or a variant changes nothing else.
Python's `hash` is salted per process, so the hash here is SHA-256 over a JSON encoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import torch


def derive(seed: int, *purpose: Any) -> int:
    """A stable 63-bit seed for the stream `purpose` of a run seeded with `seed`.

    `purpose` parts may be any JSON-able values (names, indices, a component's params).
    """
    blob = json.dumps([seed, *purpose], sort_keys=True, default=str, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def generator(seed: int, *purpose: Any) -> torch.Generator:
    """A CPU generator for the stream `purpose`: the same draws on every device."""
    return torch.Generator().manual_seed(derive(seed, *purpose))


@contextlib.contextmanager
def seeded(seed: int, *purpose: Any, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's global RNG for the block (module initialisation, say) without disturbing the
    caller's RNG state afterwards."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive(seed, *purpose))
        yield
