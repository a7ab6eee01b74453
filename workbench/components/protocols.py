"""What each component kind must provide: one contract per kind, checked when a component is built.

Protocols are structural (duck-typed): a plugin's object satisfies one by having the methods,
without subclassing. `Defense` and `Metric` are small abstract bases because they carry
defaults. `CONTRACTS` maps each kind to its contract; the registry checks every created
component against it and names the plugin when one falls short. Re-exported by `workbench.api`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from workbench.running.oracle import TargetOracle

# ---------------------------------------------------------------- datasets


@dataclass
class DataSplits:
    """What a `dataset` component's `load(seed)` returns.

    Every dataset yields `(image, label)` with `image` a float tensor `[C, H, W]` in [0, 1] and
    `label` an int. Private labels run 0..num_classes-1.
    """

    train: Dataset
    """Private training split: the target model learns it, the attacker wants it."""
    test: Dataset
    """Private test split: utility is the target's accuracy here."""
    public: Dataset | None
    """The attacker's public data: same domain, other classes (labels are not private classes)."""
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str] = field(default_factory=list)
    evaluation_train: Dataset | None = None
    """Training data for the evaluation model E (defaults to `train`)."""
    evaluation_test: Dataset | None = None
    """Test data for E (defaults to `test`)."""
    evaluation_num_classes: int | None = None
    """E's number of classes (defaults to `num_classes`); private class k is E's class k."""


@runtime_checkable
class DatasetComponent(Protocol):
    """Kind `dataset`: `load(seed)` gives the private/public splits."""

    def load(self, seed: int) -> DataSplits: ...


@runtime_checkable
class OODDatasetComponent(Protocol):
    """Kind `ood_dataset`: `load(...)` gives images in [0, 1] shaped like the ID data.

    May also offer `check_disjoint(data)` to refuse a set that shares classes with `data`.
    """

    def load(self, image_size: int, in_channels: int, seed: int) -> Dataset: ...


# ---------------------------------------------------------------- backbones


@runtime_checkable
class HiddenModule(Protocol):
    """A classifier that exposes its hidden representations in the same forward pass."""

    def forward(self, x: Tensor) -> Tensor: ...

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]: ...


@runtime_checkable
class Backbone(Protocol):
    """Kind `backbone`: `build(...)` gives a fresh `HiddenModule`."""

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module: ...


# ---------------------------------------------------------------- dependency measures


@runtime_checkable
class DependencyMeasure(Protocol):
    """`measure(a, b)` on `[m, d_a]`, `[m, d_b]`: a differentiable 0-d tensor.

    Measures that can share work across layers also offer `prepare(t, kernel)` (the
    per-variable part: kernel matrix and its centred/normalised form) and `pair(pa, pb)`;
    then `measure(a, b) == pair(prepare(a, kernel_a), prepare(b, kernel_b))`.
    """

    def __call__(self, a: Tensor, b: Tensor) -> Tensor: ...


# ---------------------------------------------------------------- defenses


@dataclass
class LossOutput:
    """A defense's training loss and the figures to log for this step (floats)."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class DefenseContext:
    """What `Defense.prepare_model` may use besides the model (a pretraining stage, say)."""

    num_classes: int
    data: DataSplits | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    cache: Any = None
    """A `StageCache` for stages of the defense's own (TL-DMI's pretraining); None: no caching."""
    train: Any = None
    """The target's `TrainConfig` (epochs, batch size, optimizer), for a defense's own stage."""
    emit: Callable[..., None] = lambda *args, **kwargs: None
    """`emit(type, **fields)`: events (a `log` line saying what the defense changed in the model)."""


@dataclass
class TrainingSetup:
    """What `Defense.start_training` learns about the run: sizes, schedule, device, seed."""

    dataset_size: int
    batch_size: int
    epochs: int
    device: torch.device
    seed: int


class Defense(abc.ABC):
    """Base for defenses; the one trainer calls, in this order:

    - `prepare_model(model, num_classes, ctx)` once when the target is built (freeze layers,
      replace norms, load or pretrain weights, add a head); also when a trained target is loaded,
      so it must build the same structure every time;
    - `param_groups(model)` for the optimizer, then `start_training(model, optimizer, setup)`,
      which may return a wrapped optimizer (DP-SGD);
    - per epoch `start_epoch(epoch, epochs)` (schedules);
    - per step `transform(x, y, model=, epoch=, step=)` on the ID batch before the forward pass
      (erasing, trigger blending; may append samples after the batch's own), then `loss`;
    - per epoch `epoch_figures()` (logged with the epoch, kept in the history);
    - `state_dict()` / `load_state_dict()` for the training checkpoint (resume), and
      `finish_training(model)` after the last epoch.
    Every hook but `loss` has a default that does nothing. `loss` gets the ID part of the batch
    only (BiDO+ concatenates OOD images into the same forward pass; the trainer slices them off).
    """

    report_keys: tuple[str, ...] = ()
    """Keys of `epoch_figures()` that go into results.json (last epoch) under the variant's
    `defense` section (DP-SGD: `epsilon`, `delta`)."""

    data_parallel: bool = True
    """Whether the trainer may run this defense under torchrun (DDP); False makes a data-parallel
    run refuse it in one line (DP-SGD: Opacus's per-sample clipping and accounting assume one process)."""

    def prepare_model(self, model: nn.Module, num_classes: int, ctx: DefenseContext | None = None) -> nn.Module:
        """Wrap or extend the backbone (MID adds a bottleneck head); default: unchanged."""
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The optimizer's parameter groups; a group may carry `lr_scale` (its share of the
        schedule's learning rate). Default: every parameter that requires grad, one group."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def start_training(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                       setup: TrainingSetup) -> torch.optim.Optimizer:
        """Called once before the first (or the resumed) epoch; returns the optimizer to step."""
        return optimizer

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called at the start of 0-based `epoch` of `epochs` (a schedule is a function of it)."""
        return None

    def transform(self, x: Tensor, y: Tensor, *, model: nn.Module, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        """The training batch the model sees; samples appended after the first `len(y)` rows are
        the defense's own (trapdoor images) and are left out of the train accuracy."""
        return x, y

    @abc.abstractmethod
    def loss(self, *, x: Tensor, y: Tensor, logits: Tensor, hiddens: Sequence[Tensor], model: nn.Module) -> LossOutput:
        """The training loss of one ID batch (and figures to log)."""

    def epoch_figures(self) -> dict[str, float]:
        """Figures to add to the epoch's metrics (privacy spent so far, say)."""
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        """Training state that is not the model's (triggers, accountant), for resuming."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` gave (called when a run resumes)."""
        return None

    def finish_training(self, model: nn.Module) -> None:
        """Called after the last epoch (remove hooks a wrapper attached)."""
        return None


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalContext:
    """What a metric sees: the trained target on the private data."""

    model: nn.Module
    data: DataSplits
    device: torch.device
    batch_size: int = 256
    evaluation_model: nn.Module | None = None
    """The separately trained evaluation classifier E (for privacy metrics)."""
    evaluators: dict[str, nn.Module] = field(default_factory=dict)
    """Every evaluation model by name, E first as `E` then the recipe's `evaluators` (empty when the
    runner has none: metrics then judge by `evaluation_model` alone)."""
    attack: AttackResult | None = None
    """Set for metrics of section `attacks`: the reconstructions to judge."""


class Metric(abc.ABC):
    """Base for metrics: `evaluate(ctx)` returns figures (fractions, not percent) for `section`."""

    section: str = "utility"

    @abc.abstractmethod
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        """Figures for `section`, as fractions in [0, 1] where they are shares."""


@runtime_checkable
class OODScore(Protocol):
    """Per-sample scores for a batch, higher = more in-distribution."""

    def __call__(self, model: nn.Module, x: Tensor) -> Tensor: ...


@runtime_checkable
class OODLoss(Protocol):
    """Kind `ood_loss`: the term added to the defense's loss once auxiliary OOD data joins.

    Called on the ID and the OOD logits of one forward pass (float32) and returns a 0-d tensor
    to *add* (signs applied). A loss that needs statistics of the warmed-up model (the energy
    margins) also offers `prepare(model, id_data, ood_data, device) -> dict[str, float]`, called
    once when the OOD phase starts; what it returns is logged, kept in the training checkpoint
    and handed back to `restore(state)` when a run resumes.
    """

    def __call__(self, id_logits: Tensor, ood_logits: Tensor) -> Tensor: ...


@dataclass
class AttackContext:
    """What an attack sees: the target as its declared access allows, public prior data, and the
    evaluation model.

    A `white-box` attack gets the module as `target` (and an oracle beside it); a `black-box` or
    `label-only` attack gets `target = None` and only `oracle`, a `TargetOracle` that answers
    probabilities or top-1 labels, counts every image sent and enforces the attack's `query_budget`
    (`AttackCapabilities.access`; `workbench.running.oracle`)."""

    target: nn.Module | None
    data: DataSplits
    evaluation_model: nn.Module | None
    device: torch.device
    seed: int
    cache: Any = None
    """A `workbench.storage.cache.StageCache`: `load_state(stage, key)` / `save_state(stage, key, tensors, meta)`
    so target-independent stages (the GMI GAN) train once across variants and runs."""
    emit: Callable[..., None] = lambda *args, **kwargs: None
    """`emit(type, **fields)` streams progress events (per-class loss, target confidence)."""
    shard: AttackShard | None = None
    """Set when the attack runs as one of several jobs (`[attacks.X] shards`): run only this part of
    the per-class search (see `AttackShard`); None runs all of it."""
    oracle: TargetOracle | None = None
    """The target behind its threat model (`probabilities(x)`, `labels(x)`, `queries`, `budget`):
    every attack the harness runs gets one; None where there is no target (`prepare`)."""


@dataclass(frozen=True)
class AttackShard:
    """Which part of its per-class search an attack runs (`workbench.running.attack_shards`).

    The search's forward batches (whole `(class, restart)` groups, in order) are split into
    `count` contiguous runs; shard `index` runs one of them. Because every batch is computed
    exactly as in the unsharded search, the shards' rows, concatenated in order, are the
    unsharded result bit for bit. `search=False` is the pass before the shards: train or load
    what the search needs (per-target GANs, surrogates) into the stage cache, search nothing.
    """

    index: int
    count: int
    search: bool = True
    may_be_empty: bool = False
    """The ranks of a data-parallel run split a search this way: with fewer forward batches than
    ranks, the last ranks search nothing (a recipe's `shards` beyond the batches is refused instead)."""

    def part(self, batches: int) -> range:
        """This shard's batches out of `batches`: contiguous, the first `batches % count` shards
        one batch longer (an empty range for the pass before the shards)."""
        if not self.search:
            return range(0)
        size, extra = divmod(batches, self.count)
        start = self.index * size + min(self.index, extra)
        return range(start, start + size + (1 if self.index < extra else 0))


@runtime_checkable
class Attack(Protocol):
    """Kind `attack`: `run(ctx)` reconstructs images of the private classes from the target.

    An attack whose prior does not depend on the target (GMI's GAN trained on public data) also
    offers `prepare(ctx)`, called once per run with `ctx.target = None` before any variant, so
    every variant (and every run with the same prior) shares one trained prior through
    `ctx.cache`. `run` then finds it in the cache.

    An attack that can split its per-class search into jobs offers `merge_shards(prepared,
    parts)` and a `shards` param, and its `run` honours `ctx.shard` (docs/attacks.md, "Sharded
    attacks"); the built-in searches do.
    """

    def run(self, ctx: AttackContext) -> AttackResult: ...


@dataclass
class AttackResult:
    """Reconstructions `[n, C, H, W]` in [0, 1] with the private class each one targets."""

    images: Tensor
    targets: Tensor
    restarts: Tensor | None = None
    """Index of the random restart each image came from (for mean/std over restarts)."""
    figures: dict[str, float] = field(default_factory=dict)
    confidences: Tensor | None = None
    """Each image's final target confidence (T's softmax on its class), where the attack keeps
    it: the shards of a sharded attack merge their mean exactly from these."""


# ---------------------------------------------------------------- executors and sinks


@dataclass(frozen=True)
class Job:
    """A picklable piece of work: `workbench.running.jobs.execute(job)` runs it in any process.

    Jobs are descriptions, never closures; their output lands in files (the run directory, the
    stage cache), so any engine that can call a Python function can run them.
    """

    kind: str
    """What to do: `run` (a whole run directory), `variant`, `shared-stage`, `attack-shard`."""
    run_dir: str
    cache_dir: str | None = None
    item: str | None = None
    """The variant, stage or shard the job is about (None for `run`)."""
    plugins_dir: str | None = None
    threads: int | None = None
    """CPU threads for torch inside the job (None: leave torch's default)."""
    resumed: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    """Kind-specific extras (JSON-able)."""


@dataclass
class Outcome:
    """What became of one job: `value` when it succeeded, a one-line `error` when it did not."""

    ok: bool
    value: Any = None
    error: str | None = None


@runtime_checkable
class Executor(Protocol):
    """Kind `executor`: runs jobs somewhere (this process, a process pool, Slurm, Ray).

    `run` returns one `Outcome` per job, in the order given, calling `poll()` every fraction of a
    second while it waits (the runner relays worker events then); a failed job does not stop
    the others. `close(cancel=True)` stops what is still running (Ctrl-C).
    """

    def run(self, jobs: Sequence[Job], poll: Callable[[], None]) -> list[Outcome]: ...

    def close(self, cancel: bool = False) -> None: ...


@runtime_checkable
class EventSink(Protocol):
    """Kind `event_sink`: receives every event the runner writes to `events.jsonl`, in order.

    `events.jsonl` stays the truth and is written first; a sink that raises is reported once
    and dropped, never stopping the run.
    """

    def open(self, run_dir: Path, recipe: dict[str, Any]) -> None: ...

    def write(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


CONTRACTS: dict[str, type] = {
    "backbone": Backbone,
    "dependency": DependencyMeasure,
    "dataset": DatasetComponent,
    "ood_dataset": OODDatasetComponent,
    "defense": Defense,
    "attack": Attack,
    "metric": Metric,
    "ood_score": OODScore,
    "ood_loss": OODLoss,
    "executor": Executor,
    "event_sink": EventSink,
}
"""The contract each component kind's objects must satisfy (checked by the registry on creation)."""
