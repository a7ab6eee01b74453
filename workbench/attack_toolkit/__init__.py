"""The attack toolkit: what the built-in attacks are made of, public for third-party attacks.

Import from this package (`from workbench.attack_toolkit import search, SearchProblem`), not from
its modules; like `workbench.api`, what is named here is the public surface. Built on
`workbench.api` alone, so a third party could have written it; the built-in attacks use exactly
this (an import-linter contract keeps them to it).

- Latent search (`latent_search`): `SearchBudget` (the fields every per-class search has),
  `SearchProblem` (an attack's start, optimiser, loss, projection and final images), `search`
  (the loop over (class, restart) groups: chunking by `max_batch`, one random stream per group,
  progress, non-finite stops), `result`, and `ShardableSearch` / `merge_shards` for a search
  split into shards that merge exactly.
- GAN priors (`gan`): `GANBudget`, `train_gan` (Adam for both players, `critic_iters` critic
  steps per generator step, data parallel under torchrun), `load_or_train` (the stage cache with
  the attack's log lines), `gan_config` (the key's shared part), `freeze`.
- Reference networks (`networks`): GMI's `Generator`, the WGAN-GP `Critic` and KED-MI's
  `ClassDiscriminator` (with `MinibatchDiscrimination`), layer for layer the authors' at 64 px RGB
  and 32 px grey, generalised to other sizes (`working_size`, `resize`).
- Plumbing (`plumbing`): `public_pool` / `ImagePool` (the attacker's public images, sampled from
  an explicit generator), `resolve_classes`, `require_oracle` (a black-box or label-only attack's
  view of T), `make_groups` / `Group`, `emit_progress`,
  `report_steps`, `stage_cache`, `check_finite` / `check_module_finite` (the one-line error a
  divergence ends in).

docs/plugins.md ("Writing an attack") walks through a minimal attack built on these.
"""

from __future__ import annotations

from workbench.attack_toolkit.gan import (
    GAN_FIELDS,
    NETWORKS_REVISION,
    GANBudget,
    freeze,
    gan_config,
    load_or_train,
    train_gan,
)
from workbench.attack_toolkit.latent_search import (
    Chunk,
    SearchBudget,
    SearchProblem,
    ShardableSearch,
    dtype_of,
    group_stream,
    merge_shards,
    pack_units,
    result,
    search,
    shard_batches,
)
from workbench.attack_toolkit.networks import (
    ClassDiscriminator,
    Critic,
    DownTrunk,
    Generator,
    MinibatchDiscrimination,
    resize,
    working_size,
)
from workbench.attack_toolkit.plumbing import (
    GAN_MEMORY_FORMAT,
    IN_MEMORY_LIMIT_BYTES,
    MAX_EVENTS_PER_CLASS,
    Group,
    ImagePool,
    check_finite,
    check_module_finite,
    emit_progress,
    make_groups,
    public_pool,
    report_steps,
    require_oracle,
    resolve_classes,
    stage_cache,
)

__all__ = [
    "GAN_FIELDS",
    "GAN_MEMORY_FORMAT",
    "IN_MEMORY_LIMIT_BYTES",
    "MAX_EVENTS_PER_CLASS",
    "NETWORKS_REVISION",
    "Chunk",
    "ClassDiscriminator",
    "Critic",
    "DownTrunk",
    "GANBudget",
    "Generator",
    "Group",
    "ImagePool",
    "MinibatchDiscrimination",
    "SearchBudget",
    "SearchProblem",
    "ShardableSearch",
    "check_finite",
    "check_module_finite",
    "dtype_of",
    "emit_progress",
    "freeze",
    "gan_config",
    "group_stream",
    "load_or_train",
    "make_groups",
    "merge_shards",
    "pack_units",
    "public_pool",
    "report_steps",
    "require_oracle",
    "resize",
    "resolve_classes",
    "result",
    "search",
    "shard_batches",
    "stage_cache",
    "train_gan",
    "working_size",
]
