"""Image folders: a class-per-folder dataset, folder-based OOD sets, and the 300K tiny images array.

Images are read lazily in `__getitem__`; only the file listing happens in `load()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from workbench.api import DataSplits, StrictModel, WorkbenchError, did_you_mean

from .base import DataComponent, OODComponent
from .common import (
    OOD_LABEL,
    ImageFileDataset,
    OODSizeParams,
    UInt8ArrayDataset,
    check_in_channels,
    require_files,
    seeded_subset,
    split_per_class,
)
from .description import IMAGE_EXTENSIONS, ExpectedFile
from .torchvision_sets import RootParams

# ---------------------------------------------------------------- class-per-folder dataset


class ImageFolderParams(RootParams):
    image_size: int = Field(64, ge=8, le=1024)
    """Side length images are resized to (square)."""
    in_channels: Literal[1, 3] = 3
    """1 converts to grayscale, 3 to RGB."""
    private_classes: int | list[str] | None = None
    """Which class folders are private: a number N (the first N in sorted order), a list of folder names, or empty for all. The other classes become the public data."""
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of each private class held out for testing (seeded, per class)."""
    center_crop_fraction: float = Field(1.0, gt=0.0, le=1.0)
    """Crop a centred square of this fraction of the shorter side before resizing (1 = no crop)."""


class ImageFolder(DataComponent):
    """Any class-per-folder tree (root/<class>/<image>): choose the private classes, the rest is public."""

    name: ClassVar[str] = "image-folder"
    summary: ClassVar[str] = (
        "any class-per-folder image tree (root/CLASS/*.jpg): private classes by count or name"
    )
    source: ClassVar[str] = (
        "your own files: one sub-folder per class, images inside (torchvision ImageFolder layout)"
    )
    notes: ClassVar[str] = (
        "Private class k is the k-th chosen folder (sorted, or in the order listed); the evaluation model "
        "learns the same private classes."
    )
    params: ImageFolderParams
    params_model: ClassVar[type[StrictModel]] = ImageFolderParams

    @classmethod
    def expected_files(cls, params=None) -> list[ExpectedFile]:
        return [
            ExpectedFile(
                "CLASS/IMAGE (one folder per class)", "images, one sub-folder per class", any_image=True
            )
        ]

    def choose_private(self, classes: list[str]) -> list[str]:
        chosen = self.params.private_classes
        if chosen is None:
            return classes
        if isinstance(chosen, int):
            if not 1 <= chosen <= len(classes):
                raise WorkbenchError(
                    f"image-folder: private_classes={chosen} but {self.root} has {len(classes)} class folders; "
                    f"expected 1..{len(classes)}"
                )
            return classes[:chosen]
        for name in chosen:
            if name not in classes:
                raise WorkbenchError(
                    f"image-folder: private class {name!r} has no folder {self.root / name}"
                    f"{did_you_mean(name, classes)}; expected one of the class folders"
                )
        if len(set(chosen)) != len(chosen):
            raise WorkbenchError(f"image-folder: private_classes lists a class twice: {chosen}")
        return list(chosen)

    def load(self, seed: int) -> DataSplits:
        p = self.params
        root = require_files(self.describe())
        classes, samples = class_folders(root)
        private = self.choose_private(classes)
        paths = np.array([path for path, _ in samples], dtype=object)
        folder_names = np.array([classes[label] for _, label in samples], dtype=object)
        for name in private:
            if not np.any(folder_names == name):
                raise WorkbenchError(
                    f"image-folder: class {name!r} ({root / name}) holds no images; expected at least two"
                )
        label_of = {name: k for k, name in enumerate(private)}
        is_private = np.array([name in label_of for name in folder_names], dtype=bool)
        labels = np.array([label_of.get(name, -1) for name in folder_names], dtype=np.int64)
        private_idx = np.flatnonzero(is_private)
        train, test = split_per_class(
            labels[private_idx], p.test_fraction, seed, private.__getitem__, "image-folder"
        )

        def files(indices: np.ndarray, with_labels: np.ndarray) -> ImageFileDataset:
            return ImageFileDataset(
                [Path(x) for x in paths[indices]],
                with_labels[indices],
                p.image_size,
                p.in_channels,
                center_crop_fraction=p.center_crop_fraction,
            )

        public_idx = np.flatnonzero(~is_private)
        # Public classes keep distinct labels after the private ones (N, N+1, ...), never 0..N-1.
        public_label_of = {
            name: len(private) + k for k, name in enumerate(sorted(set(folder_names[public_idx].tolist())))
        }
        public_labels = np.array([public_label_of.get(name, -1) for name in folder_names], dtype=np.int64)
        return DataSplits(
            train=files(private_idx[train], labels),
            test=files(private_idx[test], labels),
            public=files(public_idx, public_labels) if len(public_idx) else None,
            num_classes=len(private),
            in_channels=p.in_channels,
            image_size=p.image_size,
            class_names=private,
        )


# ---------------------------------------------------------------- folder OOD sets


def list_images(root: Path, seen: set[tuple[int, int]] | None = None,
                skip: frozenset[tuple[int, int]] = frozenset()) -> list[Path]:
    """Every image file under root, sorted, so the order (and seeded subsets) are reproducible.

    Symlinked folders are followed, each real folder visited once, and a file reached twice
    (a symlink loop, two links to one folder or one file) counts once: a loop must not turn
    12 images into hundreds with copies on both sides of a train/test split. `seen` (real
    files, by device and inode) is shared across calls to keep one image in one class only;
    folders in `skip` are never entered (a class's link back to the dataset root).
    """
    seen = set() if seen is None else seen
    visited: set[tuple[int, int]] = set(skip)
    found: list[Path] = []
    stack = [Path(root)]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
        except OSError:
            continue  # a dangling link
        if (info.st_dev, info.st_ino) in visited:
            continue
        visited.add((info.st_dev, info.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            raise WorkbenchError(f"cannot list the folder {folder}: {exc.strerror or exc}") from None
        subfolders = []
        for entry in entries:
            try:
                if entry.is_dir():  # follows symlinks; loops end at `visited`
                    subfolders.append(Path(entry.path))
                elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    stat = entry.stat()
                    if (stat.st_dev, stat.st_ino) not in seen:
                        seen.add((stat.st_dev, stat.st_ino))
                        found.append(Path(entry.path))
            except OSError:
                continue
        stack.extend(reversed(subfolders))
    return sorted(found)


def class_folders(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(sorted class folder names, [(image path, class index)]) of a root/CLASS/IMAGE tree,
    each real image once (see `list_images`)."""
    try:
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError as exc:
        raise WorkbenchError(
            f"image-folder: cannot list classes in {root}: {exc.strerror or exc}; expected root/CLASS/IMAGE"
        ) from None
    if not classes:
        raise WorkbenchError(f"image-folder: {root} has no class folders; expected root/CLASS/IMAGE")
    def identity(folder: Path) -> tuple[int, int]:
        info = folder.stat()
        return info.st_dev, info.st_ino

    others = {name: identity(root / name) for name in classes}
    outside = frozenset({identity(root)})
    seen: set[tuple[int, int]] = set()
    samples = []
    for label, name in enumerate(classes):
        skip = outside | {key for key in others.values() if key != others[name]}
        samples += [(path, label) for path in list_images(root / name, seen, skip)]
    return classes, samples


class FolderOODParams(RootParams, OODSizeParams):
    center_crop_fraction: float = Field(1.0, gt=0.0, le=1.0)
    """Crop a centred square of this fraction of the shorter side before resizing (1 = no crop)."""


class FolderOOD(OODComponent):
    """Reads every image under root (any layout); labels are ignored."""

    params: FolderOODParams
    params_model: ClassVar[type[StrictModel]] = FolderOODParams
    layout: ClassVar[str] = "any images under root, in any sub-folders"

    @classmethod
    def expected_files(cls, params=None) -> list[ExpectedFile]:
        return [ExpectedFile(cls.layout, "images (jpg/png/...)", any_image=True)]

    def load(self, image_size: int, in_channels: int, seed: int) -> ImageFileDataset:
        check_in_channels(in_channels, self.name)
        root = require_files(self.describe())
        paths = list_images(root)
        chosen = seeded_subset(len(paths), self.params.size, seed)
        return ImageFileDataset(
            [paths[i] for i in chosen],
            [OOD_LABEL] * len(chosen),
            image_size,
            in_channels,
            center_crop_fraction=self.params.center_crop_fraction,
        )

    def check_disjoint(self, data: DataSplits) -> None:
        """Refuse a folder tree that has a sub-folder named like a private class."""
        root = self.root
        if root is None or not root.is_dir() or not data.class_names:
            return
        private = set(data.class_names)
        for folder, subfolders, _ in os.walk(root):
            for name in sorted(subfolders):
                if name in private:
                    raise WorkbenchError(
                        f"{self.name}: folder {Path(folder) / name} is named like the private class {name!r}; "
                        "expected OOD data disjoint from the private classes (remove or move that folder)"
                    )


class FfhqParams(FolderOODParams):
    center_crop_fraction: float = Field(88 / 128, gt=0.0, le=1.0)
    """Centred crop before resizing; 88/128 of the 128 px thumbnails, as BiDO+ does for 64 px faces."""


class FaceScrubParams(FolderOODParams):
    center_crop_fraction: float = Field(54 / 64, gt=0.0, le=1.0)
    """Centred crop before resizing; 54/64 of the face crop, as BiDO+ does for 64 px faces."""


class FaceScrub(FolderOOD):
    """FaceScrub faces: OOD data for CelebA, or the attacker's public prior data."""

    name: ClassVar[str] = "facescrub"
    summary: ClassVar[str] = "FaceScrub faces (image folder): OOD for CelebA, or public prior data"
    source: ClassVar[str] = (
        "http://vintage.winklerbros.net/facescrub.html (Ng & Winkler 2014); the crops you made"
    )
    layout: ClassVar[str] = "e.g. actors/faces/NAME/*.jpg and actresses/faces/NAME/*.jpg"
    notes: ClassVar[str] = "Every image under root is read; identity folders are not used as labels."
    params: FaceScrubParams
    params_model: ClassVar[type[StrictModel]] = FaceScrubParams


class Ffhq(FolderOOD):
    """FFHQ faces: OOD data for CelebA, or the attacker's public prior data."""

    name: ClassVar[str] = "ffhq"
    summary: ClassVar[str] = (
        "FFHQ faces (image folder, e.g. thumbnails128x128): OOD for CelebA, or public prior data"
    )
    source: ClassVar[str] = "https://github.com/NVlabs/ffhq-dataset (Karras et al. 2019)"
    layout: ClassVar[str] = "e.g. thumbnails128x128/00000/*.png"
    params: FfhqParams
    params_model: ClassVar[type[StrictModel]] = FfhqParams


class Textures(FolderOOD):
    """Describable Textures Dataset: a far-OOD test set."""

    name: ClassVar[str] = "textures"
    summary: ClassVar[str] = "Describable Textures (DTD, image folder): far-OOD test set"
    source: ClassVar[str] = "https://www.robots.ox.ac.uk/~vgg/data/dtd/ (Cimpoi et al. 2014)"
    layout: ClassVar[str] = "e.g. dtd/images/CLASS/*.jpg"


class Lsun(FolderOOD):
    """LSUN scenes as packaged for OOD benchmarks (ODIN's LSUN crop/resize)."""

    name: ClassVar[str] = "lsun"
    summary: ClassVar[str] = "LSUN scenes (image folder, e.g. ODIN's LSUN_resize): OOD test set"
    source: ClassVar[str] = "https://github.com/facebookresearch/odin (LSUN crop/resize, from Yu et al. 2015)"
    layout: ClassVar[str] = "e.g. LSUN_resize/*.jpg"


class Isun(FolderOOD):
    """iSUN scenes as packaged for OOD benchmarks (ODIN)."""

    name: ClassVar[str] = "isun"
    summary: ClassVar[str] = "iSUN scenes (image folder, as packaged by ODIN): OOD test set"
    source: ClassVar[str] = "https://github.com/facebookresearch/odin (iSUN, from Xu et al. 2015)"
    layout: ClassVar[str] = "e.g. iSUN/*.jpeg"


class Places365(FolderOOD):
    """Places365 scenes: an OOD test set."""

    name: ClassVar[str] = "places365"
    summary: ClassVar[str] = "Places365 scenes (image folder): OOD test set"
    source: ClassVar[str] = "http://places2.csail.mit.edu/download.html (Zhou et al. 2017)"
    layout: ClassVar[str] = "e.g. places365/CLASS/*.jpg"


FOLDER_SETS: tuple[type[FolderOOD], ...] = (FaceScrub, Ffhq, Textures, Lsun, Isun, Places365)


# ---------------------------------------------------------------- 300K random tiny images


class TinyImagesParams(RootParams, OODSizeParams):
    filename: str = "300K_random_images.npy"
    """Name of the .npy file inside root: uint8 array [N, 32, 32, 3]."""


class TinyImages300k(OODComponent):
    """The 300K random Tiny Images (.npy, memory-mapped): the usual outlier-exposure auxiliary set."""

    name: ClassVar[str] = "tinyimages-300k"
    summary: ClassVar[str] = (
        "300K random Tiny Images (.npy uint8 [N,32,32,3], memory-mapped): OOD auxiliary data"
    )
    source: ClassVar[str] = (
        "Hendrycks et al., Deep Anomaly Detection with Outlier Exposure (ICLR 2019): "
        "https://github.com/hendrycks/outlier-exposure (300K_random_images.npy)"
    )
    notes: ClassVar[str] = (
        "Intended as BiDO+ auxiliary data for 32 px RGB data (CIFAR); keep it out of the test sets."
    )
    params: TinyImagesParams
    params_model: ClassVar[type[StrictModel]] = TinyImagesParams

    @classmethod
    def expected_files(cls, params=None) -> list[ExpectedFile]:
        filename = getattr(params, "filename", "300K_random_images.npy")
        return [ExpectedFile(filename, "uint8 numpy array [N, 32, 32, 3] (NumPy .npy format)")]

    def load(self, image_size: int, in_channels: int, seed: int) -> UInt8ArrayDataset:
        check_in_channels(in_channels, self.name)
        path = require_files(self.describe()) / self.params.filename
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise WorkbenchError(
                f"{self.name}: cannot read {path}: {exc}; expected a complete .npy file"
            ) from None
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] not in (1, 3):
            raise WorkbenchError(
                f"{self.name}: {path} holds {array.dtype} {list(array.shape)}; expected uint8 [N, H, W, 3] (e.g. [300000, 32, 32, 3])"
            )
        chosen = seeded_subset(len(array), self.params.size, seed)
        labels = np.full(len(array), OOD_LABEL, dtype=np.int64)
        return UInt8ArrayDataset(array, labels, image_size, in_channels, layout="NHWC", indices=chosen)
