"""The stage cache: results of stages that do not depend on the defense, kept across runs.

The evaluation model and the GMI generator depend only on the data and their own config, so
a comparison of six defenses trains them once, and a second run trains them not at all. Each
entry is a safetensors file plus a JSON sidecar, keyed by a hash of everything that
determines it (config, data identity, code: workbench's version and a hash of its source and
the built-in plugins' source). A corrupt entry is rebuilt, not trusted.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from workbench.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CACHE_ENV = "WORKBENCH_CACHE_DIR"

# Bump when a cached stage's code changes in a way that changes its result.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """`$WORKBENCH_CACHE_DIR`, else the user's cache directory (XDG on Linux)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "workbench"


# Subpackages that only show results; editing them does not change what a stage computes.
PRESENTATION_PACKAGES = ("cli", "tui")


def source_fingerprint(packages: list[Path]) -> str:
    """A hash of the Python source under each package folder, presentation code left out."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted(package.rglob("*.py")):
            relative = path.relative_to(package)
            if relative.parts[0] in PRESENTATION_PACKAGES:
                continue
            digest.update(f"{package.name}/{relative.as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """workbench's and the built-in plugins' source, hashed once per process: in a development
    install an edit to a trainer, defense or attack keys new cache entries instead of reusing
    what the old code made (the version number alone does not change)."""
    from workbench.plugins import DEFAULT_PLUGINS

    packages = [Path(__file__).parent]
    for name in DEFAULT_PLUGINS:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            packages.append(Path(spec.origin).parent)
    return source_fingerprint(packages)


def stage_key(stage: str, key: dict[str, Any]) -> str:
    """A short stable hash of a stage name and the JSON-able dict that determines it."""
    from workbench import __version__

    blob = json.dumps({"stage": stage, "key": key, "format": CACHE_FORMAT, "version": __version__,
                       "code": code_fingerprint()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StageCache:
    """Tensors by (stage, key); `None` root disables caching (every load misses)."""

    def __init__(self, root: Path | str | None):
        self.root = Path(root) if root is not None else None

    def path(self, stage: str, key: dict[str, Any]) -> Path | None:
        if self.root is None:
            return None
        return self.root / stage / f"{stage_key(stage, key)}.safetensors"

    def load_state(self, stage: str, key: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """(tensors, metadata) of a cached entry, or None when missing or corrupt (then removed)."""
        path = self.path(stage, key)
        if path is None or not path.exists():
            return None
        try:
            return load_checkpoint(path)
        except CheckpointError:
            self._remove(path)
            return None

    def save_state(self, stage: str, key: dict[str, Any], tensors: dict[str, Tensor],
                   meta: dict[str, Any] | None = None) -> Path | None:
        path = self.path(stage, key)
        if path is None:
            return None
        save_checkpoint(path, tensors, {"stage": stage, "key": key, **(meta or {})})
        return path

    def entries(self) -> list[dict[str, Any]]:
        """Every entry with its stage, size and metadata, for `workbench cache list`."""
        if self.root is None or not self.root.exists():
            return []
        rows = []
        for path in sorted(self.root.glob("*/*.safetensors")):
            sidecar = path.with_suffix(".json")
            try:
                meta = json.loads(sidecar.read_text())
            except (OSError, json.JSONDecodeError):
                meta = {}
            size = path.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)
            rows.append({"stage": path.parent.name, "key": path.stem, "bytes": size, "path": str(path),
                         "meta": meta})
        return rows

    def clear(self, stage: str | None = None) -> int:
        """Remove every entry (or one stage's); returns how many entries went."""
        if self.root is None or not self.root.exists():
            return 0
        count = len([e for e in self.entries() if stage is None or e["stage"] == stage])
        target = self.root / stage if stage else self.root
        shutil.rmtree(target, ignore_errors=True)
        return count

    @staticmethod
    def _remove(path: Path) -> None:
        for p in (path, path.with_suffix(".json")):
            p.unlink(missing_ok=True)
