"""Mirror, black-box variant (An et al., NDSS 2022), spec/attacks-black-box.md B.

A genetic search over the generator's latent space that sees the target only through its oracle's
probability vectors (`njuaplusplus/mirror@2730a14`, `my_blackbox_mirror.py`):

1. Pool: `pool_size` latents, their images scored once by T (the full vector is kept, so every
   class reuses it; `my_generate_blackbox_attack_dataset.py:51-65`, `my_blackbox_mirror.py:140-146`).
   Per-coordinate bounds mean ± `bound_std`·std of the pool's latents (`:113-129`; for a Gaussian
   latent the authors' own bound is this, `my_whitebox_mirror_helper.py:196-206`).
2. Per class, fitness f = log p_y (`:321-330`); the population is the top `population` pool latents.
3. Per generation (`:64-98,166-181`): sort by f; stop if the elite's f >= log(min_score); N − 1
   children, each from two parents drawn with replacement with probability softmax(f) = p_y / Σ p_y;
   uniform crossover taking each gene from parent 1 with probability f1/(f1 + f2) (the code's rule
   on log-probabilities, which favours the *worse* parent: spec B.7.1; `crossover = "proportional"`
   uses p_y1/(p_y1 + p_y2)); mutation of each gene with probability `mutation_prob` by
   `mutation_ce`·U(−σ, σ), one noise vector per generation shared by all children (`:134`, spec
   B.7.2; `shared_mutation_noise = false` draws per child); clip to the bounds; the new population
   (elite + children) is scored (N queries).
4. The result is the elite: one image per class per restart.

The workbench's GAN prior (GMI's DCGAN on the public data, z in R^z_dim) stands in for the
authors' StyleGAN (W space, truncation 0.7, CelebA 256 px): the genome is z, the "p-space" of the
StyleGAN mapping network is the identity. docs/attacks/mirror.md lists the deviations.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from workbench.api import (
    AttackCapabilities,
    AttackContext,
    AttackResult,
    BatchSize,
    Count,
    QueryBudget,
    bounded_int,
    seeds,
)
from workbench.attack_toolkit import GANBudget, check_finite, dtype_of
from workbench_attacks.gmi import OnGMIPrior


class MirrorBParams(GANBudget, QueryBudget):
    """Mirror-B's budget. Reference values: `njuaplusplus/mirror@2730a14`,
    `scripts/run_*_blackbox.sh:4` and `my_blackbox_mirror.py`'s argparse (`:238-252`)."""

    prior_seed: int | None = None
    """Seed of GMI's prior (unset = the run's seed); the same value shares GMI's cached prior."""
    gp_weight: float = Field(10.0, ge=0)
    """WGAN-GP gradient-penalty weight of GMI's prior (part of its cache key, as in `gmi`)."""
    classes: list[int] | None = None
    """Private classes to attack (default: all of them)."""
    first_classes: Count | None = None
    """Attack only the first N private classes; ignored when `classes` is set."""
    pool_size: bounded_int(2, 10_000_000) = 100_000
    """Latents in the initial pool, each scored once (reference 100,000: `my_sample_z_w_space.py:59-64`)."""
    population: bounded_int(2, 1_000_000) = 1000
    """Population size N (reference 1000, `scripts/run_*_blackbox.sh:4`; argparse default 100)."""
    generations: bounded_int(0, 10_000_000, "a number of generations") = 100
    """Generations at most (reference 100, `my_blackbox_mirror.py:246`)."""
    min_score: float = Field(1.0, gt=0, le=1)
    """Stop a class once its elite's p_y reaches this (reference 0.95, `:250`). Digits: 1.0 = never:
    the digits target is so confident that every class's best pool image already clears 0.95 and the
    search would be a best-of-pool pick (spec B.5, §D: E top-1 0.30 against 0.70-0.90 with the GA)."""
    mutation_prob: float = Field(0.1, ge=0, le=1)
    """Probability that a gene mutates (reference 0.1, `:244`)."""
    mutation_ce: float = Field(0.1, ge=0)
    """Mutation noise scale: ce·U(−σ_j, σ_j) with σ_j the pool's std (reference 0.1, `:245`)."""
    bound_std: float = Field(1.0, gt=0)
    """Latents are clipped to mean ± bound_std·std of the pool per coordinate (reference `p_std_ce`
    1, `:249`)."""
    crossover: Literal["reference", "proportional"] = "reference"
    """`reference`: gene from parent 1 with probability f1/(f1 + f2) on log-probabilities, as the code
    (`:77-85`), which favours the worse parent; `proportional`: p_y1/(p_y1 + p_y2) (spec B.7.1)."""
    shared_mutation_noise: bool = True
    """One noise vector per generation for all children, as the code (`:134`); false: one per child."""
    restarts: Count = 1
    """Independent genetic searches per class on the same pool (each returns its elite)."""
    max_batch: BatchSize = 1000
    """Images per generator pass (results do not depend on it)."""


def select_parents(fitness: Tensor, count: int, rng: torch.Generator) -> Tensor:
    """`count` indices drawn with replacement with probability softmax(fitness) (`:69-75`)."""
    return torch.multinomial(fitness.softmax(dim=0), count, replacement=True, generator=rng)


def crossover_probability(f1: Tensor, f2: Tensor, rule: str) -> Tensor:
    """Per child, the probability that a gene comes from parent 1."""
    if rule == "reference":
        return f1 / (f1 + f2)  # log-probabilities, as the code: the worse parent weighs more
    p1, p2 = f1.exp(), f2.exp()
    return p1 / (p1 + p2)


def next_generation(
    population: Tensor, fitness: Tensor, low: Tensor, high: Tensor, std: Tensor, p: MirrorBParams,
    rng: torch.Generator,
) -> Tensor:
    """Elite + N − 1 children (`my_blackbox_mirror.py:64-98`); `population` sorted by `fitness`,
    best first. All draws come from `rng` (CPU)."""
    n, dim = population.shape
    k = n - 1
    parents = select_parents(fitness, 2 * k, rng)
    first, second = parents[:k], parents[k:]
    prob = crossover_probability(fitness[first], fitness[second], p.crossover)
    take_first = torch.rand(k, dim, generator=rng, dtype=population.dtype) < prob[:, None]
    children = torch.where(take_first, population[first], population[second])
    mutate = torch.rand(k, dim, generator=rng, dtype=population.dtype) < p.mutation_prob
    rows = 1 if p.shared_mutation_noise else k
    noise = p.mutation_ce * (2 * torch.rand(rows, dim, generator=rng, dtype=population.dtype) - 1) * std
    children = torch.minimum(torch.maximum(children + mutate * noise, low), high)
    return torch.cat([population[:1], children])


class MirrorB(OnGMIPrior):
    """Mirror-B: genetic search over the GAN's latents, scored by T's confidence through the oracle."""

    name = "mirror-b"
    capabilities = AttackCapabilities(access="black-box", prepares=True, seeded_prior=True)

    def __init__(self, params: MirrorBParams):
        self.params = params

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes, generator, hit = self.oracle_start(ctx)
        z = torch.randn(p.pool_size, p.z_dim, generator=seeds.generator(ctx.seed, "attack", self.name, "pool"),
                        dtype=torch.float64)
        pool_probs = self.latent_probabilities(ctx, generator, z, p.max_batch)
        check_finite(pool_probs, attack=self.name, stage=f"attack:{self.name}:pool", what="T's probabilities")
        mean, std = z.mean(dim=0), z.std(dim=0, unbiased=False)
        low, high = mean - p.bound_std * std, mean + p.bound_std * std
        n = min(p.population, p.pool_size)
        elites, targets, restarts, generations_run, confidences = [], [], [], [], []
        for c in classes:
            fitness0 = pool_probs[:, c].clamp_min(1e-300).log()
            order = fitness0.argsort(descending=True, stable=True)[:n]
            for restart in range(p.restarts):
                rng = seeds.generator(ctx.seed, "attack", self.name, "search", c, restart)
                population, fitness = z[order].clone(), fitness0[order].clone()
                done = 0
                for _ in range(p.generations):
                    rank = fitness.argsort(descending=True, stable=True)
                    population, fitness = population[rank], fitness[rank]
                    if fitness[0] >= math.log(p.min_score):
                        break
                    population = next_generation(population, fitness, low, high, std, p, rng)
                    probs = self.latent_probabilities(ctx, generator, population, p.max_batch)
                    fitness = probs[:, c].clamp_min(1e-300).log()
                    done += 1
                best = int(fitness.argmax())
                elites.append(population[best])
                confidences.append(float(fitness[best].exp()))  # known from the search: no extra query
                targets.append(c)
                restarts.append(restart)
                generations_run.append(done)
            ctx.emit("progress", stage=f"attack:{self.name}", step=classes.index(c) + 1, total=len(classes),
                     target_class=c, loss=float(-fitness.max()), confidence=float(fitness.max().exp()))
        latents = torch.stack(elites)
        with torch.no_grad():
            images = torch.cat([generator(part.to(ctx.device, dtype_of(generator))).cpu()
                                for part in latents.split(p.max_batch)]).float().clamp(0, 1)
        reference = p.pool_size + sum(n * g for g in generations_run)
        figures = {
            "target_confidence": sum(confidences) / len(confidences),
            "gan_cached": float(hit),
            "generations": sum(generations_run) / len(generations_run),
            "queries_reference": float(reference),
        }
        ctx.emit("log", level="info", message=f"mirror-b: pool {p.pool_size:,}, population {n}, "
                 f"{sum(generations_run)} generations in all; {ctx.oracle.queries:,} queries")
        return AttackResult(images=images, targets=torch.tensor(targets), restarts=torch.tensor(restarts),
                            figures=figures, confidences=torch.tensor(confidences))
