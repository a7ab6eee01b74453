"""CelebA by identity: the MI papers' private faces, and identity ranges as OOD sets (BiDO+).

Identities are ranked by image count (most frequent first; ties by identity number, so the
ranking is reproducible). The private classes are ranks 0..N-1 (N = 1000 in the papers);
BiDO+ draws auxiliary OOD faces from ranks 2000-3999 and OOD test faces from 4000-4999.

Preprocessing follows the authors' code (AlanPeng0897/Defend_MI `BiDO/dataloader.py`): a
centred 108x108 crop of the 178x218 aligned image (box (35, 55, 143, 163)), resized to 64.
torchvision's CelebA class is not used: it requires four annotation files this does not need
and md5-checks them, and it reads nothing lazily by identity.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from workbench.api import DataSplits, StrictModel, WorkbenchError

from .base import DataComponent, OODComponent
from .common import (
    OOD_LABEL,
    ImageFileDataset,
    OODSizeParams,
    check_in_channels,
    require_files,
    seeded_subset,
    split_per_class,
)
from .description import ExpectedFile
from .torchvision_sets import RootParams

IDENTITY_FILE = "identity_CelebA.txt"
IMAGE_FOLDER = "img_align_celeba"
CELEBA_SOURCE = (
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Liu et al. 2015): Img/img_align_celeba.zip "
    "and Anno/identity_CelebA.txt"
)
CELEBA_FILES = [
    ExpectedFile(IDENTITY_FILE, "one line per image: 'FILENAME IDENTITY'"),
    ExpectedFile(f"{IMAGE_FOLDER}/", "the aligned 178x218 JPEGs (extract img_align_celeba.zip here)"),
]


class CelebaIndex:
    """The identity file parsed once: file names, identities, and identities ranked by frequency."""

    def __init__(self, root: Path):
        self.root = root
        path = root / IDENTITY_FILE
        files, identities = [], []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or not fields[1].isdigit():
                    raise WorkbenchError(
                        f"{path} line {number}: expected 'FILENAME IDENTITY' (e.g. '000001.jpg 2880'), got {line.strip()!r}"
                    )
                files.append(fields[0])
                identities.append(int(fields[1]))
        if not files:
            raise WorkbenchError(f"{path} lists no images; expected one 'FILENAME IDENTITY' line per image")
        self.files = np.array(files, dtype=object)
        self.identities = np.array(identities, dtype=np.int64)
        counts = Counter(identities)
        self.ranked = sorted(counts, key=lambda identity: (-counts[identity], identity))
        """Identity numbers, most frequent first."""
        self.rank_of = {identity: rank for rank, identity in enumerate(self.ranked)}

    def check_images(self, indices: np.ndarray) -> None:
        """Every listed image is in the image folder (one directory listing, not 200k stat calls)."""
        folder = self.root / IMAGE_FOLDER
        present = set(os.listdir(folder))
        absent = [name for name in self.files[indices] if name not in present]
        if absent:
            raise WorkbenchError(
                f"celeba: {folder / absent[0]} is listed in {self.root / IDENTITY_FILE} but missing "
                f"({len(absent)} listed images are missing); expected the aligned JPEGs from img_align_celeba.zip"
            )

    def paths(self, indices: np.ndarray) -> list[Path]:
        folder = self.root / IMAGE_FOLDER
        return [folder / name for name in self.files[indices]]

    def indices_of_ranks(self, start: int, stop: int) -> np.ndarray:
        chosen = set(self.ranked[start:stop])
        return np.flatnonzero([identity in chosen for identity in self.identities.tolist()])


@lru_cache(maxsize=4)
def _cached_index(root: str, mtime_ns: int) -> CelebaIndex:
    return CelebaIndex(Path(root))


def celeba_index(root: Path) -> CelebaIndex:
    """The parsed identity file, cached while the file is unchanged (the OOD sets reread it)."""
    return _cached_index(str(root), (root / IDENTITY_FILE).stat().st_mtime_ns)


class CelebaParams(RootParams):
    image_size: int = Field(64, ge=8, le=1024)
    """Side length after the centre crop (the papers use 64)."""
    private_identities: int = Field(1000, ge=2)
    """The N most frequent identities are the private classes; the rest are the attacker's public faces."""
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Share of each private identity's images held out for testing (seeded, per identity)."""
    crop_size: int = Field(108, ge=8)
    """Side of the centred square crop taken before resizing (108 of 178x218, as BiDO does)."""
    in_channels: Literal[1, 3] = 3
    """3 keeps RGB; 1 converts to grayscale."""


class Celeba(DataComponent):
    """CelebA faces: the 1000 most frequent identities are private, the others public."""

    name: ClassVar[str] = "celeba"
    summary: ClassVar[str] = (
        "CelebA faces: top-1000 identities private, the rest public; 108 px centre crop to 64"
    )
    source: ClassVar[str] = CELEBA_SOURCE
    notes: ClassVar[str] = (
        "Images are read lazily. Private class k is the identity of frequency rank k; class_names are the "
        "CelebA identity numbers. Public images carry label -1."
    )
    params: CelebaParams
    params_model: ClassVar[type[StrictModel]] = CelebaParams

    @classmethod
    def expected_files(cls, params: StrictModel | None = None) -> list[ExpectedFile]:
        return list(CELEBA_FILES)

    def load(self, seed: int) -> DataSplits:
        p = self.params
        root = require_files(self.describe())
        index = celeba_index(root)
        if p.private_identities >= len(index.ranked):
            raise WorkbenchError(
                f"celeba: private_identities={p.private_identities} but {root / IDENTITY_FILE} has only "
                f"{len(index.ranked)} identities; expected fewer, so some remain public"
            )
        index.check_images(np.arange(len(index.files)))
        private_ids = index.ranked[: p.private_identities]
        label_of = {identity: k for k, identity in enumerate(private_ids)}
        labels = np.array([label_of.get(i, -1) for i in index.identities.tolist()], dtype=np.int64)
        private_idx = np.flatnonzero(labels >= 0)
        names = [str(identity) for identity in private_ids]
        train, test = split_per_class(
            labels[private_idx], p.test_fraction, seed, lambda k: f"identity {names[k]}", "celeba"
        )

        def files(indices: np.ndarray) -> ImageFileDataset:
            return ImageFileDataset(
                index.paths(indices),
                labels[indices],
                p.image_size,
                p.in_channels,
                center_crop_size=p.crop_size,
            )

        return DataSplits(
            train=files(private_idx[train]),
            test=files(private_idx[test]),
            public=files(np.flatnonzero(labels < 0)),
            num_classes=p.private_identities,
            in_channels=p.in_channels,
            image_size=p.image_size,
            class_names=names,
        )


class CelebaIdentitiesParams(RootParams, OODSizeParams):
    private_identities: int = Field(1000, ge=1)
    """How many top-ranked identities the private dataset uses; this set must start at or after it."""
    rank_start: int = Field(4000, ge=0)
    """First identity rank (0 = most frequent) in this set. BiDO+: 2000 for auxiliary, 4000 for test."""
    rank_stop: int = Field(5000, ge=1)
    """One past the last rank. BiDO+: 4000 for auxiliary, 5000 for test."""
    crop_size: int = Field(108, ge=8)
    """Side of the centred square crop taken before resizing (108 of 178x218, as BiDO does)."""

    # Field validators (not one model validator) so the error names the offending key.
    @field_validator("rank_start")
    @classmethod
    def _after_private(cls, rank_start: int, info: ValidationInfo) -> int:
        private = info.data.get("private_identities")
        if private is not None and rank_start < private:
            raise ValueError(
                f"rank_start={rank_start} overlaps the {private} private identities (ranks 0-{private - 1}); "
                f"expected rank_start >= {private}"
            )
        return rank_start

    @field_validator("rank_stop")
    @classmethod
    def _after_start(cls, rank_stop: int, info: ValidationInfo) -> int:
        start = info.data.get("rank_start")
        if start is not None and rank_stop <= start:
            raise ValueError(f"rank_stop={rank_stop} must be greater than rank_start={start}")
        return rank_stop


class CelebaIdentities(OODComponent):
    """CelebA identities in a frequency-rank range, as OOD faces (BiDO+: 2000-3999 aux, 4000-4999 test)."""

    name: ClassVar[str] = "celeba-identities"
    summary: ClassVar[str] = (
        "CelebA identities by frequency rank as OOD faces (BiDO+: 2000-3999 aux, 4000-4999 test)"
    )
    source: ClassVar[str] = CELEBA_SOURCE
    notes: ClassVar[str] = (
        "Pair rank_start=2000, rank_stop=4000 (auxiliary, BiDO+ training) with the default 4000-5000 (test): "
        "disjoint identities, both disjoint from the private top 1000."
    )
    params: CelebaIdentitiesParams
    params_model: ClassVar[type[StrictModel]] = CelebaIdentitiesParams

    @classmethod
    def expected_files(cls, params: StrictModel | None = None) -> list[ExpectedFile]:
        return list(CELEBA_FILES)

    def chosen_identities(self, index: CelebaIndex) -> list[int]:
        p = self.params
        if p.rank_stop > len(index.ranked):
            raise WorkbenchError(
                f"celeba-identities: rank_stop={p.rank_stop} but {index.root / IDENTITY_FILE} ranks only "
                f"{len(index.ranked)} identities; expected rank_stop <= {len(index.ranked)}"
            )
        return index.ranked[p.rank_start : p.rank_stop]

    def load(self, image_size: int, in_channels: int, seed: int) -> ImageFileDataset:
        check_in_channels(in_channels, self.name)
        index = celeba_index(require_files(self.describe()))
        self.chosen_identities(index)
        indices = index.indices_of_ranks(self.params.rank_start, self.params.rank_stop)
        indices = indices[seeded_subset(len(indices), self.params.size, seed)]
        index.check_images(indices)
        return ImageFileDataset(
            index.paths(indices),
            [OOD_LABEL] * len(indices),
            image_size,
            in_channels,
            center_crop_size=self.params.crop_size,
        )

    def check_disjoint(self, data: DataSplits) -> None:
        """Refuse identities that are private classes of `data` (class names are identity numbers)."""
        root = self.root
        if root is None or not (root / IDENTITY_FILE).is_file():
            return
        private = set(data.class_names)
        for identity in self.chosen_identities(celeba_index(root)):
            if str(identity) in private:
                raise WorkbenchError(
                    f"celeba-identities: identity {identity} (rank {celeba_index(root).rank_of[identity]}) is a "
                    f"private class; expected ranks after the {len(private)} private identities "
                    f"(set rank_start >= {len(private)})"
                )
