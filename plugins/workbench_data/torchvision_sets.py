"""MNIST, Fashion-MNIST, CIFAR-10 (datasets) and SVHN (OOD) read from local files by torchvision.

torchvision reads the formats; this module adds the BiDO class split, clear errors for missing
or damaged files, and md5 checks of CIFAR-10's pickled batches before anything is unpickled.
Nothing downloads unless a recipe sets `download = true`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import Field
from torchvision.datasets import CIFAR10, MNIST, SVHN, FashionMNIST
from torchvision.datasets.utils import check_integrity

from workbench.api import DataSplits, StrictModel, WorkbenchError

from .base import DataComponent, OODComponent
from .common import (
    OOD_LABEL,
    OODSizeParams,
    UInt8ArrayDataset,
    check_in_channels,
    describe_files,
    require_classes,
    require_files,
    seeded_subset,
)
from .description import DataDescription, ExpectedFile

T = TypeVar("T")


class RootParams(StrictModel):
    root: Path
    """Folder holding the dataset's files (see `workbench data show NAME` for the layout)."""


class DownloadableParams(RootParams):
    download: bool = False
    """Let torchvision download the files into root when missing (needs network; off by default)."""


def read_with_torchvision(description: DataDescription, download: bool, build: Callable[[], T]) -> T:
    """Run a torchvision constructor, turning its errors into one line that names the folder.

    Without `download`, root and files are checked first so a missing file is named precisely.
    """
    if download:
        Path(description.root or ".").mkdir(parents=True, exist_ok=True)
    else:
        require_files(description)
    try:
        return build()
    except WorkbenchError:
        raise
    except (RuntimeError, OSError, ValueError, TypeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        what = "download or read" if download else "read"
        reason = " ".join(str(exc).split())  # torchvision's messages span lines; the CLI shows one
        raise WorkbenchError(
            f"{description.name}: cannot {what} the files in {description.root}: {reason}; "
            f"expected {', '.join(f.path for f in description.files)} (source: {description.source})"
        ) from None


# ---------------------------------------------------------------- MNIST and Fashion-MNIST


def check_idx_file(path: Path, what: str, name: str) -> None:
    """Validate an IDX header against the file size, so truncation is reported with the file's name."""
    data = path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise WorkbenchError(
            f"{name}: {path} is not an uncompressed IDX uint8 file ({what}); gunzip it if it ends in .gz"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise WorkbenchError(f"{name}: {path} is truncated inside its header ({what})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise WorkbenchError(
            f"{name}: {path} holds {len(data)} bytes but its header {dims} needs {expected} ({what}); "
            "the file is truncated or damaged"
        )


class MnistParams(DownloadableParams):
    image_size: int = Field(32, ge=8, le=256)
    """Side length the 28x28 images are resized to (BiDO's MCNN uses 32)."""
    private_classes: int = Field(5, ge=2, le=9)
    """Classes 0..N-1 are private; N..9 are the attacker's public data (BiDO: 5)."""


class Mnist(DataComponent):
    """MNIST from IDX files: private digits 0-4 / public 5-9; the evaluation model learns all ten."""

    name: ClassVar[str] = "mnist"
    summary: ClassVar[str] = "MNIST (IDX files): private 0-4 / public 5-9 as in BiDO; evaluation on all ten"
    source: ClassVar[str] = (
        "http://yann.lecun.com/exdb/mnist/ (mirror: https://ossci-datasets.s3.amazonaws.com/mnist/)"
    )
    notes: ClassVar[str] = (
        "torchvision's layout: root/MNIST/raw/ with the four uncompressed IDX files. The official "
        "train/t10k files give the train/test splits; public data = training images of the public classes."
    )
    torchvision_class: ClassVar[type[MNIST]] = MNIST
    params: MnistParams
    params_model: ClassVar[type[StrictModel]] = MnistParams

    @classmethod
    def expected_files(cls, params: StrictModel | None = None) -> list[ExpectedFile]:
        folder = f"{cls.torchvision_class.__name__}/raw"
        return describe_files(
            (f"{folder}/train-images-idx3-ubyte", "training images, IDX uint8 [N, 28, 28]"),
            (f"{folder}/train-labels-idx1-ubyte", "training labels, IDX uint8 [N]"),
            (f"{folder}/t10k-images-idx3-ubyte", "test images, IDX uint8 [N, 28, 28]"),
            (f"{folder}/t10k-labels-idx1-ubyte", "test labels, IDX uint8 [N]"),
        )

    def class_names(self) -> list[str]:
        return [str(d) for d in range(10)]

    def load(self, seed: int) -> DataSplits:
        p = self.params
        description = self.describe()
        if not p.download:
            root = require_files(description)
            for expected in description.files:
                check_idx_file(root / expected.path, expected.what, self.name)
        splits = {}
        for train in (True, False):
            dataset = read_with_torchvision(
                description,
                p.download,
                lambda t=train: self.torchvision_class(str(self.root), train=t, download=p.download),
            )
            splits[train] = (dataset.data.numpy(), dataset.targets.numpy().astype(np.int64))
        return make_class_splits(
            self.name,
            splits[True],
            splits[False],
            p.private_classes,
            p.image_size,
            1,
            self.class_names(),
            layout="NHW",
        )


class FashionMnist(Mnist):
    """Fashion-MNIST from IDX files, split like MNIST (private classes 0-4, public 5-9)."""

    name: ClassVar[str] = "fashion-mnist"
    summary: ClassVar[str] = (
        "Fashion-MNIST (IDX files): private classes 0-4 / public 5-9; evaluation on all ten"
    )
    source: ClassVar[str] = "https://github.com/zalandoresearch/fashion-mnist (Xiao et al. 2017)"
    notes: ClassVar[str] = (
        "torchvision's layout: root/FashionMNIST/raw/ with the four uncompressed IDX files."
    )
    torchvision_class: ClassVar[type[MNIST]] = FashionMNIST

    def class_names(self) -> list[str]:
        return list(FashionMNIST.classes)


def make_class_splits(
    name: str,
    train: tuple[Any, np.ndarray],
    test: tuple[Any, np.ndarray],
    private_classes: int,
    image_size: int,
    in_channels: int,
    class_names: list[str],
    layout: Literal["NCHW", "NHWC", "NHW"],
) -> DataSplits:
    """Official train/test files -> private classes 0..N-1, public N.., evaluation on all classes."""
    (train_images, train_labels), (test_images, test_labels) = train, test
    num_all = len(class_names)
    label_name = class_names.__getitem__
    require_classes(train_labels, range(num_all), label_name, name, "training")
    require_classes(test_labels, range(private_classes), label_name, name, "test")

    def part(images: Any, labels: np.ndarray, mask: np.ndarray | None) -> UInt8ArrayDataset:
        indices = np.flatnonzero(mask) if mask is not None else None
        return UInt8ArrayDataset(images, labels, image_size, in_channels, layout=layout, indices=indices)

    return DataSplits(
        train=part(train_images, train_labels, train_labels < private_classes),
        test=part(test_images, test_labels, test_labels < private_classes),
        public=part(train_images, train_labels, train_labels >= private_classes),
        num_classes=private_classes,
        in_channels=in_channels,
        image_size=image_size,
        class_names=class_names[:private_classes],
        evaluation_train=part(train_images, train_labels, None),
        evaluation_test=part(test_images, test_labels, None),
        evaluation_num_classes=num_all,
    )


# ---------------------------------------------------------------- CIFAR-10


def check_official_cifar10(root: Path, source: str) -> None:
    """Every CIFAR-10 batch matches the md5 of the official archive before torchvision unpickles
    it: a pickle can run any code, so a planted or altered batch is refused, never opened."""
    folder = root / CIFAR10.base_folder
    official = [*CIFAR10.train_list, *CIFAR10.test_list, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    for filename, md5 in official:
        path = folder / filename
        if path.is_file() and not check_integrity(str(path), md5):
            raise WorkbenchError(
                f"cifar10: {path} is not the official CIFAR-10 file (its md5 differs); the batches are "
                f"Python pickles, which can run code, so only the official files are read; re-extract "
                f"cifar-10-python.tar.gz from {source} (for a subset of CIFAR, use image-folder)"
            )


class Cifar10Params(DownloadableParams):
    image_size: int = Field(32, ge=8, le=256)
    """Side length the 32x32 images are resized to."""
    private_classes: int = Field(5, ge=2, le=9)
    """Classes 0..N-1 (airplane ... deer for N=5) are private, the rest public."""


class Cifar10(DataComponent):
    """CIFAR-10 python batches: 5 private / 5 public classes; the evaluation model learns all ten."""

    name: ClassVar[str] = "cifar10"
    summary: ClassVar[str] = (
        "CIFAR-10 (python batches): private classes 0-4 / public 5-9; evaluation on all ten"
    )
    source: ClassVar[str] = "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz)"
    notes: ClassVar[str] = (
        "Extract cifar-10-python.tar.gz into root. Every batch is checked against the official md5 "
        "before it is unpickled (a pickle can run code): altered or re-pickled copies are refused."
    )
    params: Cifar10Params
    params_model: ClassVar[type[StrictModel]] = Cifar10Params

    @classmethod
    def expected_files(cls, params: StrictModel | None = None) -> list[ExpectedFile]:
        folder = CIFAR10.base_folder
        files = [
            (f"{folder}/{f}", "training batch (pickled dict: data, labels)") for f, _ in CIFAR10.train_list
        ]
        files.append((f"{folder}/test_batch", "test batch (pickled dict: data, labels)"))
        files.append((f"{folder}/batches.meta", "class names (pickled dict: label_names)"))
        return describe_files(*files)

    def load(self, seed: int) -> DataSplits:
        p = self.params
        description = self.describe()
        if not p.download:
            require_files(description)
            check_official_cifar10(self.root, self.source)
        reader = CIFAR10
        train = read_with_torchvision(
            description, p.download, lambda: reader(str(self.root), train=True, download=p.download)
        )
        test = read_with_torchvision(
            description, p.download, lambda: reader(str(self.root), train=False, download=p.download)
        )
        return make_class_splits(
            self.name,
            (train.data, np.asarray(train.targets, dtype=np.int64)),
            (test.data, np.asarray(test.targets, dtype=np.int64)),
            p.private_classes,
            p.image_size,
            3,
            list(train.classes),
            layout="NHWC",
        )


# ---------------------------------------------------------------- SVHN (OOD)


class _LocalSVHN(SVHN):
    """torchvision's SVHN reader that checks the .mat file is present instead of its md5 (local files only)."""

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


class SvhnParams(DownloadableParams, OODSizeParams):
    split: Literal["train", "test", "extra"] = "test"
    """Which SVHN file to read (OOD benchmarks use test)."""


class Svhn(OODComponent):
    """SVHN house numbers (torchvision, .mat files): a standard OOD test set for CIFAR models."""

    name: ClassVar[str] = "svhn"
    summary: ClassVar[str] = "SVHN house numbers (.mat, test split): OOD test set for CIFAR-style data"
    source: ClassVar[str] = (
        "http://ufldl.stanford.edu/housenumbers/ (Netzer et al. 2011), file test_32x32.mat"
    )
    notes: ClassVar[str] = "Digits in photos: do not use as OOD for digit data (it shares their classes)."
    params: SvhnParams
    params_model: ClassVar[type[StrictModel]] = SvhnParams

    @classmethod
    def expected_files(cls, params: StrictModel | None = None) -> list[ExpectedFile]:
        split = getattr(params, "split", "test")
        return describe_files(
            (f"{split}_32x32.mat", f"SVHN {split} split (MATLAB file with X [32, 32, 3, N], y)")
        )

    def load(self, image_size: int, in_channels: int, seed: int) -> UInt8ArrayDataset:
        check_in_channels(in_channels, self.name)
        p = self.params
        reader = SVHN if p.download else _LocalSVHN
        dataset = read_with_torchvision(
            self.describe(), p.download, lambda: reader(str(self.root), split=p.split, download=p.download)
        )
        chosen = seeded_subset(len(dataset.data), p.size, seed)
        labels = np.full(len(dataset.data), OOD_LABEL, dtype=np.int64)
        return UInt8ArrayDataset(dataset.data, labels, image_size, in_channels, layout="NCHW", indices=chosen)


__all__ = ["Cifar10", "FashionMnist", "Mnist", "Svhn", "check_idx_file"]
