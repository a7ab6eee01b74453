"""Hook specifications: the whole public plugin surface of workbench.

Each hook receives a `register` callable. Call it once per component:

    register(name, factory, params=ParamsModel, summary="one line")

`factory(params)` is called with a validated instance of `params` (a `StrictModel`) and
returns the component object; `workbench.api` names the contract each kind must satisfy (the
registry checks it). Built-in plugins use exactly these hooks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("workbench")
hookimpl = pluggy.HookimplMarker("workbench")


@hookspec
def register_backbones(register):
    """Register classifier backbones (kind `backbone`).

    A backbone component has `build(num_classes, in_channels, image_size)` returning a
    `torch.nn.Module` with `forward_hidden(x) -> (logits, [Z_1, ..., Z_L])`.
    """


@hookspec
def register_dependency_measures(register):
    """Register kernel dependency measures (kind `dependency`).

    A measure is called `measure(a, b)` on `[m, d_a]`, `[m, d_b]` tensors and returns a
    differentiable 0-d tensor on the inputs' device.
    """


@hookspec
def register_datasets(register):
    """Register private/public datasets (kind `dataset`).

    A dataset component has `load(seed)` returning `workbench.components.protocols.DataSplits`.
    """


@hookspec
def register_ood_datasets(register):
    """Register out-of-distribution datasets (kind `ood_dataset`).

    An OOD dataset component has `load(image_size, in_channels, seed)` returning a torch
    `Dataset` of images in [0, 1] shaped like the in-distribution data.
    """


@hookspec
def register_defenses(register):
    """Register training-time defenses (kind `defense`).

    A defense supplies the training loss; every defense runs through the same trainer.
    """


@hookspec
def register_attacks(register):
    """Register model-inversion attacks (kind `attack`)."""


@hookspec
def register_metrics(register):
    """Register metrics (kind `metric`) that turn a trained model into figures."""


@hookspec
def register_ood_scores(register):
    """Register OOD scores (kind `ood_score`): higher means more in-distribution."""


@hookspec
def register_ood_losses(register):
    """Register OOD training losses (kind `ood_loss`) for unknown-aware training (BiDO+ phase 2).

    A loss is called `loss(id_logits, ood_logits)` and returns a 0-d tensor to add to the
    defense's loss; it may offer `prepare(model, id_data, ood_data, device)` and `restore(state)`.
    """


@hookspec
def register_executors(register):
    """Register executors (kind `executor`): engines that run a run's or a sweep's jobs.

    An executor has `run(jobs, poll)` returning one `Outcome` per picklable `Job` (in order) and
    `close(cancel)`.
    """


@hookspec
def register_event_sinks(register):
    """Register event sinks (kind `event_sink`): every event of a run, in order, to another store.

    A sink has `open(run_dir, recipe)`, `write(event)` and `close()`.
    """
