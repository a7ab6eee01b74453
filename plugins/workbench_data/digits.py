"""The embedded default: scikit-learn's bundled UCI handwritten digits (no download, no files).

Split like the BiDO papers split MNIST: the first `private_classes` digits (0-4) are private,
the rest (5-9) are the attacker's public data, and the evaluation model learns all ten digits
with private digit k as its class k.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import TensorDataset

from workbench.api import DataSplits, StrictModel, WorkbenchError

from .base import DataComponent, OODComponent
from .common import OOD_LABEL, OODSizeParams, convert_channels, resize_batch, seeded_subset, split_per_class

DIGITS_SOURCE = (
    "scikit-learn's bundled copy of the UCI 'Optical Recognition of Handwritten Digits' test set "
    "(sklearn.datasets.load_digits; Alpaydin & Kaynak 1998, https://archive.ics.uci.edu/dataset/80)"
)


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 1, 8, 8] float32 in [0, 1], labels [N] int64), read once per process.

    Reads scikit-learn's bundled `digits.csv.gz` directly: importing `sklearn.datasets` costs
    seconds (it pulls in scipy), the file itself parses in ~50 ms. Falls back to
    `load_digits()` should a future scikit-learn move the file.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    bundled = (
        Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    )
    if bundled is not None and bundled.is_file():
        table = np.loadtxt(bundled, delimiter=",", dtype=np.float32)
        pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, labels = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    return (pixels / 16.0).reshape(-1, 1, 8, 8), labels  # pixel values are 0..16


def digits_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _digits_arrays()
    return resize_batch(torch.from_numpy(images), image_size), torch.from_numpy(labels)


class DigitsParams(StrictModel):
    image_size: int = Field(16, ge=8, le=128)
    """Side length the 8x8 digits are upsampled to (bilinear), e.g. 16 or 32."""
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of each digit held out for testing (seeded, stratified)."""
    private_classes: int = Field(5, ge=2, le=9)
    """Digits 0..N-1 are private (the target learns them); digits N..9 are the attacker's public data."""


class Digits(DataComponent):
    """UCI digits: private 0-4 / public 5-9 (as BiDO splits MNIST); embedded, loads in milliseconds."""

    name: ClassVar[str] = "digits"
    summary: ClassVar[str] = (
        "UCI handwritten digits bundled with scikit-learn: private 0-4, public 5-9 (embedded)"
    )
    source: ClassVar[str] = DIGITS_SOURCE
    embedded: ClassVar[bool] = True
    notes: ClassVar[str] = (
        "1797 grayscale 8x8 digits (~180 per class), upsampled. One seeded stratified split over all ten "
        "digits serves both models: the target sees its private digits of that split, the evaluation "
        "model all ten, so private class k is evaluation class k and neither trains on a test image."
    )
    params: DigitsParams
    params_model: ClassVar[type[StrictModel]] = DigitsParams

    def load(self, seed: int) -> DataSplits:
        p = self.params
        images, labels = digits_images(p.image_size)
        train_idx, test_idx = split_per_class(labels.numpy(), p.test_fraction, seed, str, "digits")
        train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
        private = labels < p.private_classes

        def subset(indices: torch.Tensor) -> TensorDataset:
            return TensorDataset(images[indices], labels[indices])

        public_idx = torch.nonzero(~private).flatten()
        return DataSplits(
            train=subset(train_idx[private[train_idx]]),
            test=subset(test_idx[private[test_idx]]),
            public=subset(public_idx),
            num_classes=p.private_classes,
            in_channels=1,
            image_size=p.image_size,
            class_names=[str(d) for d in range(p.private_classes)],
            evaluation_train=subset(train_idx),
            evaluation_test=subset(test_idx),
            evaluation_num_classes=10,
        )


class DigitsPublicParams(OODSizeParams):
    private_classes: int = Field(5, ge=2, le=9)
    """Digits 0..N-1 are private, so N..9 form this near-OOD set; match the `digits` dataset's value."""


class DigitsPublic(OODComponent):
    """The public digits 5-9 as a near-OOD test set: same strokes and style, other classes."""

    name: ClassVar[str] = "digits-public"
    summary: ClassVar[str] = "near-OOD test set: the public digits 5-9 of the embedded digits (embedded)"
    source: ClassVar[str] = DIGITS_SOURCE
    embedded: ClassVar[bool] = True
    notes: ClassVar[str] = (
        "Intended as an OOD *test* set for a `digits` run (the hardest one: same domain, other classes). "
        "These are also the attacker's public data; do not use them as BiDO+ auxiliary data."
    )
    params: DigitsPublicParams
    params_model: ClassVar[type[StrictModel]] = DigitsPublicParams

    def load(self, image_size: int, in_channels: int, seed: int) -> TensorDataset:
        images, labels = digits_images(image_size)
        public = torch.nonzero(labels >= self.params.private_classes).flatten()
        public = public[torch.from_numpy(seeded_subset(len(public), self.params.size, seed))]
        chosen = convert_channels(images[public], in_channels)
        return TensorDataset(chosen, torch.full((len(chosen),), OOD_LABEL, dtype=torch.long))

    def check_disjoint(self, data: DataSplits) -> None:
        names = set(data.class_names)
        if not names or not names <= {str(d) for d in range(10)}:
            return  # not a digit dataset: class names cannot be compared
        shared = sorted(names & {str(d) for d in range(self.params.private_classes, 10)})
        if shared:
            raise WorkbenchError(
                f"digits-public: digit {shared[0]!r} is a private class of the in-distribution data; "
                f"set private_classes={len(names)} so the OOD digits start after the private ones"
            )
