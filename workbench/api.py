"""The public API for plugin authors: everything a plugin may import from workbench.

Built-in plugins import only this module, exactly as a third-party package would; an
import-linter contract (pyproject.toml, run in CI) keeps it so. What is not named here is
internal and may change without notice.

- Hooks: `hookimpl` marks an implementation of a hook in `workbench.components.hookspecs`.
- Params: `StrictModel` (every component's params model), `NoParams`, `ComponentTable` and
  `NestedComponent` for components that hold other components; bounded ints for what a run loops
  over or allocates (`Epochs`, `Steps`, `Count`, `Width`, `BatchSize`, `ImageSize`, `bounded_int`).
- Contracts: one Protocol or base class per component kind (`Backbone`, `DependencyMeasure`,
  `DatasetComponent`, `OODDatasetComponent`, `Defense`, `Attack`, `Metric`, `OODScore`,
  `OODLoss`, `Executor`, `EventSink`) and the dataclasses they exchange (`Job`, `Outcome`, `DefenseContext`,
  `TrainingSetup`, `AttackShard`...).
- Helpers the built-ins share: `train_classifier` (the one trainer; TL-DMI pretrains with it),
  `cross_entropy` (the trainer's reduction), `accuracy`, `iterate_batches`,
  `StageCache` with `load_or_compute`, weight fingerprints and state-dict flattening, `seeds`;
  for judging reconstructions, `collect_images` and `nearest_indices` (pixel-space nearest images).
- Executors: `execute_outcome(job)` runs a `Job` in any process; `die_with_parent()` for workers.
- Data parallel (torchrun): `gather_with_grad` (a batch statistic over the global batch),
  `world_size`, `rank`, `is_main_process` (the one process that writes files); for a stage
  trained by every rank together (an attack's prior; `StageCache.load_or_compute` takes rank 0's
  cache decision and weights): `training_together`, `split_forward`, `average_gradients`,
  `in_data_parallel`.
- Threat model: `TargetOracle` (what a black-box or label-only attack sees of the target, queries
  counted), `QueryBudget` (the params mixin with `query_budget`), `ThreatModelError`.
- Errors: `WorkbenchError` (one clear line for the user) and `did_you_mean`.
"""

from __future__ import annotations

from workbench.components.capabilities import (
    AttackCapabilities,
    DefenseCapabilities,
    ExecutorCapabilities,
    OODLossCapabilities,
)
from workbench.components.hookspecs import hookimpl
from workbench.components.params import (
    BatchSize,
    ComponentTable,
    Count,
    Epochs,
    ImageSize,
    NestedComponent,
    NoParams,
    Steps,
    StrictModel,
    Width,
    bounded_int,
)
from workbench.components.protocols import (
    Attack,
    AttackContext,
    AttackResult,
    AttackShard,
    Backbone,
    DatasetComponent,
    DataSplits,
    Defense,
    DefenseContext,
    DependencyMeasure,
    EvalContext,
    EventSink,
    Executor,
    HiddenModule,
    Job,
    LossOutput,
    Metric,
    OODDatasetComponent,
    OODLoss,
    OODScore,
    Outcome,
    TrainingSetup,
)
from workbench.errors import WorkbenchError, did_you_mean
from workbench.running import seeds
from workbench.running.batches import iterate_batches
from workbench.running.device import autocast
from workbench.running.distributed import (
    average_gradients,
    gather_with_grad,
    in_data_parallel,
    is_main_process,
    rank,
    split_forward,
    training_together,
    world_size,
)
from workbench.running.evaluators import collect_images, nearest_indices
from workbench.running.jobs import die_with_parent, execute_outcome
from workbench.running.losses import accuracy, cross_entropy, upcast
from workbench.running.oracle import QueryBudget, TargetOracle, ThreatModelError
from workbench.running.threads import usable_cores
from workbench.running.trainer import train_classifier
from workbench.storage.cache import StageCache
from workbench.storage.checkpoint import (
    model_state,
    state_to_tensors,
    tensors_with_prefix,
    weights_fingerprint,
)

__all__ = [
    "Attack",
    "AttackCapabilities",
    "AttackContext",
    "AttackResult",
    "AttackShard",
    "Backbone",
    "BatchSize",
    "ComponentTable",
    "Count",
    "DataSplits",
    "DatasetComponent",
    "Defense",
    "DefenseCapabilities",
    "DefenseContext",
    "DependencyMeasure",
    "Epochs",
    "EvalContext",
    "EventSink",
    "Executor",
    "ExecutorCapabilities",
    "HiddenModule",
    "ImageSize",
    "Job",
    "LossOutput",
    "Metric",
    "NestedComponent",
    "NoParams",
    "OODDatasetComponent",
    "OODLoss",
    "OODLossCapabilities",
    "OODScore",
    "Outcome",
    "QueryBudget",
    "StageCache",
    "Steps",
    "StrictModel",
    "TargetOracle",
    "ThreatModelError",
    "TrainingSetup",
    "Width",
    "WorkbenchError",
    "accuracy",
    "autocast",
    "average_gradients",
    "bounded_int",
    "collect_images",
    "cross_entropy",
    "did_you_mean",
    "die_with_parent",
    "execute_outcome",
    "gather_with_grad",
    "hookimpl",
    "in_data_parallel",
    "is_main_process",
    "iterate_batches",
    "model_state",
    "nearest_indices",
    "rank",
    "seeds",
    "split_forward",
    "state_to_tensors",
    "tensors_with_prefix",
    "train_classifier",
    "training_together",
    "upcast",
    "usable_cores",
    "weights_fingerprint",
    "world_size",
]
