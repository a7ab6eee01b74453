"""Atomic file writes: a reader (the TUI, a resumed run, a browser on report.md) never sees half a file.

Write to a temp file in the same folder, flush it to disk, rename it over the target, then flush
the folder so the rename itself survives a crash. No torch here: the runs side of the TUI uses it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from workbench.errors import RunError


class StorageError(RunError):
    """A file that could not be written (disk full, read-only folder...): one line naming the path."""


def write_problem(path: Path, exc: OSError) -> StorageError:
    """The one line for a failed write of `path`, with what to do about it."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space, then continue with --resume (nothing half-written is kept)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "make the folder writable, or choose another (--run-dir, --cache-dir)"
    else:
        advice = "nothing half-written is kept"
    return StorageError(f"{path}: cannot write ({reason}); {advice}")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """`with atomic_path(target) as tmp:` write `tmp` (by any means); on success it replaces `target`.

    A write that fails (the disk full, a read-only folder) leaves `target` as it was, removes the
    temp file and raises a StorageError naming `target`: a truncated file is never put in its place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise write_problem(path, exc) from None
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_problem(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
