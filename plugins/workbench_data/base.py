"""Small base classes so every data component answers `describe()`, `missing()` the same way."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from workbench.api import DataSplits, StrictModel

from .description import DataDescription, ExpectedFile


class DataComponent:
    """Base for `dataset` and `ood_dataset` components.

    Subclasses set the class attributes; `description(root)` works without an instance so the
    CLI can say what a real dataset needs before the user has a root to point at.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "dataset"
    summary: ClassVar[str] = ""
    source: ClassVar[str] = ""
    embedded: ClassVar[bool] = False
    notes: ClassVar[str] = ""

    def __init__(self, params: StrictModel):
        self.params = params

    @classmethod
    def expected_files(cls, params: StrictModel | None = None) -> list[ExpectedFile]:
        """Files read below root; `params` is given when they depend on it (e.g. a file name)."""
        return []

    @classmethod
    def description(cls, root: Path | None = None, params: StrictModel | None = None) -> DataDescription:
        return DataDescription(
            name=cls.name,
            kind=cls.kind,
            summary=cls.summary,
            source=cls.source,
            embedded=cls.embedded,
            files=cls.expected_files(params),
            root=root,
            notes=cls.notes,
        )

    @property
    def root(self) -> Path | None:
        root = getattr(self.params, "root", None)
        return Path(root).expanduser() if root is not None else None

    def describe(self) -> DataDescription:
        return self.description(self.root, self.params)

    def missing(self) -> list[str]:
        """Expected files not present at `root`; always empty for embedded/procedural data."""
        return self.describe().missing()


class OODComponent(DataComponent):
    """Base for `ood_dataset` components.

    `check_disjoint(data)` lets the runner refuse an OOD set that shares classes with the
    private data once both are known; the default finds nothing to compare.
    """

    kind: ClassVar[str] = "ood_dataset"

    def check_disjoint(self, data: DataSplits) -> None:
        """Raise `WorkbenchError` when this set contains private classes of `data`."""
        return None
