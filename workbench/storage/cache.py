"""The stage cache: results of stages that do not depend on the defense, kept across runs.

The evaluation model and the GMI generator depend only on the data and their own config, so
a comparison of six defenses trains them once, and a second run trains them not at all. Each
entry is one checkpoint file (tensors, metadata and a checksum; see `workbench.storage.checkpoint`)
keyed by a hash of everything that determines it: config, data identity, and code —
workbench's version and a hash of its source and the built-in plugins' source, plus the
version and source of every other plugin whose component took part. A corrupt entry is named
in one warning, removed and rebuilt, never trusted. `clear` deletes only entries the tool
recognises as its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.storage.checkpoint import (
    CheckpointError,
    checkpoint_meta,
    is_workbench_checkpoint,
    legacy_sidecar,
    load_checkpoint,
    save_checkpoint,
)
from workbench.storage.files import StorageError
from workbench.storage.fingerprints import code_fingerprint, plugin_fingerprint

if TYPE_CHECKING:
    from torch import nn

    from workbench.components.registry import Registry

CACHE_ENV = "WORKBENCH_CACHE_DIR"

# Bump when a cached stage's code changes in a way that changes its result.
# 2: one-file entries with a checksum; keys cover third-party plugins.
# 3: every random stream from `workbench.running.seeds` (new seeds: new targets, E, priors, attacks).
CACHE_FORMAT = 3

# A stage is one folder level inside the cache: a plain name, never a path.
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
ENTRY_NAME = re.compile(r"[0-9a-f]{16}\.safetensors")
TEMP_NAME = re.compile(r"\.[0-9a-f]{16}\.safetensors\..*\.tmp")

log = logging.getLogger("workbench.storage.cache")


class CacheError(WorkbenchError):
    """A cache folder or stage name that cannot be used."""


def default_cache_dir() -> Path:
    """`$WORKBENCH_CACHE_DIR`, else the user's cache directory (XDG on Linux)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "workbench"


def check_stage_name(stage: str) -> str:
    if not isinstance(stage, str) or not STAGE_NAME.fullmatch(stage):
        raise CacheError(f"stage {stage!r}: not a stage name (letters, digits, '-' and '_'; "
                         "no path separators or leading dots)")
    return stage


def stage_key(stage: str, key: dict[str, Any], plugins: dict[str, Any] | None = None) -> str:
    """A short stable hash of a stage name, the JSON-able dict that determines it, the code and
    the plugins (name -> version and source) whose components took part."""
    from workbench.version import __version__

    content = {"stage": stage, "key": key, "format": CACHE_FORMAT, "version": __version__,
               "code": code_fingerprint()}
    if plugins:
        content["plugins"] = plugins
    blob = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _component_tables(value: Any) -> Iterable[str]:
    """Every `use` name in a (resolved) config: the components a key says took part."""
    if isinstance(value, dict):
        if isinstance(value.get("use"), str):
            yield value["use"]
        for item in value.values():
            yield from _component_tables(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _component_tables(item)


class StageCache:
    """Tensors by (stage, key); `None` root disables caching (every load misses).

    With a `registry`, each key also covers the version and source of every non-built-in
    plugin whose component took part: the components named by `use` anywhere in the key, and
    those given to `for_components` (an attack whose key names no component, say).
    """

    def __init__(self, root: Path | str | None, registry: Registry | None = None,
                 components: Iterable[tuple[str, str]] = (),
                 on_problem: Callable[[str], Any] | None = None):
        self.root = Path(root).expanduser() if root is not None else None
        if self.root is not None and self.root.exists() and not self.root.is_dir():
            raise CacheError(f"cache folder {self.root}: is a file, not a directory; "
                             f"name a folder with --cache-dir or ${CACHE_ENV}")
        self.registry = registry
        self.components = tuple(components)
        self.on_problem = on_problem
        self.problems: list[str] = []
        self.device_type = "cpu"
        """The run's device type (set by the run): part of every key (see `environment`)."""

    def for_components(self, *components: tuple[str, str]) -> StageCache:
        """This cache, with the plugins of these (kind, name) components in every key."""
        scoped = StageCache(None, self.registry, (*self.components, *components), self.on_problem)
        scoped.root = self.root
        scoped.problems = self.problems
        scoped.device_type = self.device_type
        return scoped

    def environment(self) -> dict[str, Any]:
        """What changes an entry's floats besides its own config, in every key: the device type, the
        CPU thread count (float reductions; a run trains every stage at one count, `Runner.cpu_threads`)
        and, under torchrun, the world size (N ranks train with per-rank BatchNorm on the CPU)."""
        import torch

        from workbench.running import distributed

        env: dict[str, Any] = {"device": self.device_type, "threads": torch.get_num_threads()}
        if distributed.is_distributed():
            env["world_size"] = distributed.world_size()
        return env

    # -------------------------------------------------------------- keys

    def plugins_for(self, key: dict[str, Any]) -> dict[str, Any]:
        """{plugin: {version, source}} for every non-built-in plugin whose component took part."""
        if self.registry is None:
            return {}
        by_name: dict[str, set[str]] = {}
        for component in self.registry.components():
            by_name.setdefault(component.name, set()).add(component.plugin)
        names: set[str] = set()
        for use in _component_tables(key):
            names |= by_name.get(use, set())  # a name registered for several kinds: all of them
        for kind, name in self.components:
            try:
                names.add(self.registry.get(kind, name).plugin)
            except WorkbenchError:
                names |= by_name.get(name, set())
        info = self.registry.manager.info
        return {name: plugin_fingerprint(self.registry, name) for name in sorted(names)
                if getattr(info.get(name), "source", None) != "builtin"}

    def key_of(self, stage: str, key: dict[str, Any]) -> str:
        return stage_key(check_stage_name(stage), {**key, "environment": self.environment()}, self.plugins_for(key))

    def path(self, stage: str, key: dict[str, Any]) -> Path | None:
        if self.root is None:
            return None
        return self.root / stage / f"{self.key_of(stage, key)}.safetensors"

    # -------------------------------------------------------------- entries

    def load_state(self, stage: str, key: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """(tensors, metadata) of a verified entry, or None when missing or bad (then named
        in one warning and removed, so the stage is recomputed)."""
        path = self.path(stage, key)
        if path is None or not path.exists():
            return None
        try:
            tensors, meta = load_checkpoint(path)
        except CheckpointError as exc:
            reason = str(exc).removeprefix(f"{path}: ").split(";")[0]
            self.discard(path, reason)
            return None
        return tensors, meta

    def load_modules(self, stage: str, key: dict[str, Any], modules: dict[str, nn.Module]
                     ) -> dict[str, Any] | None:
        """Load each `prefix -> module` strictly from an entry; its metadata, or None when the
        entry is missing, bad or does not fit the modules (then removed and recomputed)."""
        from workbench.storage.checkpoint import tensors_with_prefix

        found = self.load_state(stage, key)
        if found is None:
            return None
        tensors, meta = found
        parts = {prefix: tensors_with_prefix(tensors, prefix) for prefix in modules}
        # Checked before anything is copied: a failed strict load_state_dict has already copied
        # the keys that matched, and a stage "retrained" from there starts from foreign weights.
        for prefix, module in modules.items():
            problem = state_mismatch(module, parts[prefix])
            if problem:
                self.discard(self.path(stage, key), f"does not fit the model ({prefix}: {problem})")
                return None
        # Nor are non-finite weights ever loaded (they would be trained on from NaN if recomputed).
        if not all(bool(v.isfinite().all()) for part in parts.values() for v in part.values() if v.is_floating_point()):
            self.discard(self.path(stage, key), "holds NaN or infinite weights")
            return None
        for prefix, module in modules.items():
            module.load_state_dict(parts[prefix], strict=True)
        return meta

    def save_state(self, stage: str, key: dict[str, Any], tensors: dict[str, Tensor],
                   meta: dict[str, Any] | None = None) -> Path | None:
        path = self.path(stage, key)
        if path is None:
            return None
        try:
            self._ensure_root()
            save_checkpoint(path, tensors, {"stage": stage, "key": key, "environment": self.environment(), **(meta or {})})
        except (StorageError, PermissionError) as exc:  # a full disk, a read-only cache: documented fallback
            message = f"stage cache: {exc}; not cached, the run goes on (the stage is computed again next time)"
            self.problems.append(message)
            (self.on_problem or log.warning)(message)
            return None
        return path

    def load_or_compute(self, stage: str, key: dict[str, Any], modules: dict[str, nn.Module],
                        compute: Callable[[], dict[str, Any] | None], what: str) -> tuple[dict[str, Any], bool]:
        """The one load-or-train: fill `modules` (prefix -> module) from the entry for (stage, key), or
        run `compute()` (which trains them in place and returns metadata) and store them. Returns
        (metadata, True on a cache hit). Non-finite weights are never used from nor written to the
        cache: a diverged stage is one error naming `what`."""
        import torch

        from workbench.storage.checkpoint import model_state

        def finite() -> bool:
            return all(torch.isfinite(v).all() for m in modules.values() for v in m.state_dict().values()
                       if v.is_floating_point())

        from workbench.running import distributed

        meta = self.load_modules(stage, key, modules)  # None for an entry that is bad, misfit or not finite
        # Under torchrun, with every rank in lockstep (an attack's priors): rank 0 decides, and on
        # a hit the others take its weights; a miss trains on every rank together.
        if distributed.agree_on_hit(stage, meta is not None):
            for module in modules.values():
                distributed.broadcast_module(module)
            return meta or {}, True
        with distributed.training_together(*modules.values()):
            meta = compute() or {}
        if not finite():
            raise WorkbenchError(f"{what}: training gave NaN or infinite weights; nothing was cached. Lower "
                                 "its learning rate or check its data")
        tensors = {f"{prefix}.{k}": v for prefix, m in modules.items() for k, v in model_state(m).items()}
        self.save_state(stage, key, tensors, meta)
        return meta, False

    def discard(self, path: Path | None, reason: str) -> None:
        """Remove a bad entry and say so in one line (to `on_problem` when set, else a logged warning)."""
        if path is None:
            return
        message = f"stage cache entry {path}: {reason}; removed, recomputing it"
        self.problems.append(message)
        if self.on_problem is not None:  # the runner: a warning event
            self.on_problem(message)
        else:
            log.warning(message)
        self._remove(path)

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise CacheError(f"cache folder {self.root}: a file is in the way; name a folder with "
                             f"--cache-dir or ${CACHE_ENV}") from None
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():  # marks the folder as ours (and tells backup tools to skip it)
            with contextlib.suppress(OSError):
                tag.write_text("Signature: 8a477f597d28d172789f06886806bc55\n"
                               "# This file is a cache directory tag created by workbench (the stage cache).\n")

    # -------------------------------------------------------------- listing and clearing

    def _recognised(self, stage: str | None = None) -> list[Path]:
        """Entry files this tool made: `<stage>/<16 hex>.safetensors` whose header says so
        (or an entry of the older two-file layout, whose sidecar names its stage)."""
        if self.root is None or not self.root.is_dir():
            return []
        folders = [self.root / stage] if stage else sorted(p for p in self.root.iterdir() if p.is_dir())
        found = []
        for folder in folders:
            if not STAGE_NAME.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if not ENTRY_NAME.fullmatch(path.name) or path.is_symlink() or not path.is_file():
                    continue
                if is_workbench_checkpoint(path) or _legacy_entry(path, folder.name):
                    found.append(path)
        return found

    def entries(self) -> list[dict[str, Any]]:
        """Every entry with its stage, size and metadata, for `workbench cache list`."""
        rows = []
        for path in self._recognised():
            try:
                meta = checkpoint_meta(path)
            except CheckpointError:
                try:
                    meta = json.loads(legacy_sidecar(path).read_text())
                except (OSError, json.JSONDecodeError):
                    meta = {}
            if not isinstance(meta, dict):
                meta = {}
            sidecar = legacy_sidecar(path)
            size = path.stat().st_size + (sidecar.stat().st_size if sidecar.is_file() else 0)
            rows.append({"stage": path.parent.name, "key": path.stem, "bytes": size, "path": str(path),
                         "meta": meta})
        return rows

    def clear(self, stage: str | None = None) -> int:
        """Remove every entry (or one stage's) that the tool recognises as its own, and the
        temp files its killed writes left; nothing else. Returns how many entries went."""
        if stage is not None:
            check_stage_name(stage)
        if self.root is None or not self.root.is_dir():
            return 0
        entries = self._recognised(stage)
        for path in entries:
            self._remove(path)
        folders = [self.root / stage] if stage else [p for p in self.root.iterdir() if p.is_dir()]
        for folder in folders:
            if not STAGE_NAME.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
                continue
            for path in folder.iterdir():
                if TEMP_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when nothing else is left in it
        return len(entries)

    @staticmethod
    def _remove(path: Path) -> None:
        path.unlink(missing_ok=True)
        sidecar = legacy_sidecar(path)
        if sidecar.is_file():
            sidecar.unlink(missing_ok=True)


def state_mismatch(module: nn.Module, state: dict[str, Tensor]) -> str | None:
    """Why `state` cannot be loaded into `module` whole (missing, unexpected or reshaped keys), or None."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        shown = ", ".join([*(f"missing {k}" for k in missing[:2]), *(f"unexpected {k}" for k in unexpected[:2])])
        return f"{len(missing)} missing and {len(unexpected)} unexpected keys: {shown}"
    for name, tensor in expected.items():
        if tuple(tensor.shape) != tuple(state[name].shape):
            return f"{name} has shape {list(state[name].shape)}, the model {list(tensor.shape)}"
    return None


def _legacy_entry(path: Path, stage: str) -> bool:
    """An entry of the two-file layout (format 1): its sidecar is JSON naming this stage."""
    try:
        meta = json.loads(legacy_sidecar(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("stage") == stage
