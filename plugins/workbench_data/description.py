"""What a dataset expects on disk and where it comes from, for `workbench data list|show`.

Sources are text (a URL or a paper) for a person to follow: nothing here downloads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
)


def first_image_under(root: Path) -> Path | None:
    """The first image file found under `root` (recursively), or None; stops early on big trees."""
    if not root.is_dir():
        return None
    visited: set[tuple[int, int]] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError:
            subfolders[:] = []
            continue
        if (info.st_dev, info.st_ino) in visited:  # a symlink loop: never walk a folder twice
            subfolders[:] = []
            continue
        visited.add((info.st_dev, info.st_ino))
        subfolders.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                return path
    return None


@dataclass(frozen=True)
class ExpectedFile:
    """One file or folder a dataset reads, relative to its `root`."""

    path: str
    """Relative path; a trailing '/' marks a folder. With `any_image` it is a description, not a path."""
    what: str
    """What the file holds, in a few words (shown next to missing-file errors)."""
    any_image: bool = False
    """True for 'any images under root' (image-folder sets): present when one image is found."""

    def present(self, root: Path) -> bool:
        if self.any_image:
            return first_image_under(root) is not None
        target = root / self.path.rstrip("/")
        return target.is_dir() if self.path.endswith("/") else target.is_file()


@dataclass
class DataDescription:
    """A dataset component's own account of itself: what it is, what it reads, where from."""

    name: str
    kind: str
    """`dataset` or `ood_dataset`."""
    summary: str
    source: str
    """Where the data comes from: a URL or a paper, as text (never fetched)."""
    embedded: bool
    """True when the data ships with the package or is generated (no files needed)."""
    files: list[ExpectedFile] = field(default_factory=list)
    root: Path | None = None
    notes: str = ""
    """Layout hints, licence reminders, the intended auxiliary/test pairing."""

    def missing(self) -> list[str]:
        """Expected files not present at `root` (all of them when no root is set)."""
        if self.embedded:
            return []
        if self.root is None or not self.root.is_dir():
            return [f.path for f in self.files]
        return [f.path for f in self.files if not f.present(self.root)]
