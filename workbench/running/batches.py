"""Batches from datasets: in-memory tensors sliced directly, anything else through a DataLoader."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) batches; in-memory TensorDatasets are sliced directly (much faster on CPU)."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[0], dataset.tensors[1]
        n = len(x)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield x[index], y[index]
        return
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last and len(dataset) >= batch_size,
    )
    for x, y in loader:
        yield x, torch.as_tensor(y)


def shuffled_index_batches(
    n: int, batch_size: int, generator: torch.Generator, *, drop_last: bool = False
) -> Iterator[Tensor]:
    """The index batches `iterate_batches(..., shuffle=True)` draws from the same generator state:
    data-parallel ranks each take their slice of these (`workbench.running.distributed.shard`), so the
    global batches and their order do not depend on the number of ranks."""
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def balanced_batches(
    labels: Tensor, classes: int, per_class: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """Index batches of `classes` classes × `per_class` images (identity-balanced sampling).

    Every rank of a data-parallel run draws the same global batches and takes its slice, so a
    rank's images are `classes × per_class / N` of one global identity-balanced batch."""
    by_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    by_class = [idx for idx in by_class if len(idx) > 0]
    classes = min(classes, len(by_class))
    n_batches = max(1, len(labels) // (classes * per_class))
    for _ in range(n_batches):
        chosen = torch.randperm(len(by_class), generator=generator)[:classes]
        parts = []
        for c in chosen.tolist():
            pool = by_class[c]
            pick = torch.randint(len(pool), (per_class,), generator=generator)
            parts.append(pool[pick])
        yield torch.cat(parts)


def take(dataset: Dataset, index: Tensor) -> tuple[Tensor, Tensor]:
    """The (x, y) batch of the given indices."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0][index], dataset.tensors[1][index]
    x, y = default_collate([dataset[i] for i in index.tolist()])
    return x, torch.as_tensor(y)


def dataset_labels(dataset: Dataset) -> Tensor:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
