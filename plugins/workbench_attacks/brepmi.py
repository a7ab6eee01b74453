"""BREP-MI, label-only boundary repulsion (Kahla et al., CVPR 2022), spec/attacks-label-only.md A.

The attack sees only the target's top-1 label (`oracle.labels`), as the authors' code queries it
(`m-kahla/Label-Only-Model-Inversion-Attacks-via-Boundary-Repulsion@8a2e200`, `brep_mi.py`,
`brep_mi_utils.py`, `config2.yaml`; cited as `file:line` below):

1. Initial points (`brep_mi_utils.py:46-103`): batches of `init_batch` latents z ~ N(0, I), clamped
   to [−z_clip, z_clip] (`brep_mi_utils.py:53`), labelled by T; a latent T labels y is a start for
   class y. The workbench attacks a fixed class list (the reference's targeted mode,
   `brep_mi_utils.py:77-103`) and keeps `restarts · samples_per_class` starts per class.
2. Per start, per iteration (`brep_mi.py:46-110`): N points on the sphere of radius R around z,
   p_n = z + R u_n (`:13-25,56-59`, not clamped); φ_n = +1 when T labels p_n y, else −1
   (`brep_mi_utils.py:35-43`), repulsion only φ ← (φ − 1)/2 (`brep_mi.py:75-76`); if more than
   `expand_fraction`·N points are inside, R ← γR (`:62-71`); d = mean_n φ_n (R_old u_n) / R_new
   (`:78`); z' = clamp(z + α d, ±z_clip) with α = min(R_old/3, 3) (`:53,81-82`). A z' that T does not
   label y is rejected (z unchanged, the iteration does not count, `:84-87`); an accepted step in
   an expanding iteration is recorded as the point to report and does not count either (`:89-100`).
3. A start ends after `patience` counted iterations since the last expansion (`:43,46`).
4. The reported image is G(z) right after the last accepted expansion (`:97-100,113-116`).

The GAN prior is GMI's (the reference loads GMI's public-CelebA generator, `main.py:61-65`): the
workbench trains (or loads from the stage cache) the same prior as `gmi`, so both share it.
Workbench additions, each named in its field: `max_iterations` (the reference has no cap and can
loop forever), the finite-radius guard and `max_radius` (spec A6.8), several starts per class.
The reference's logit-based CE logging (`brep_mi.py:90,194`) is dropped: it would break the
label-only threat model. docs/attacks/brep-mi.md lists every deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    Steps,
    seeds,
)
from workbench.attack_toolkit import GANBudget, dtype_of
from workbench_attacks.gmi import OnGMIPrior

REFERENCE = "m-kahla/Label-Only-Model-Inversion-Attacks-via-Boundary-Repulsion@8a2e200"


class BREPMIParams(GANBudget, QueryBudget):
    """BREP-MI's budget. Reference values: the authors' only configuration, `config2.yaml`, and
    `brep_mi.py` (spec/attacks-label-only.md A3.8); digits values are CPU deviations, each named."""

    prior_seed: int | None = None
    """Seed of GMI's prior (unset = the run's seed); the same value shares GMI's cached prior."""
    gp_weight: float = Field(10.0, ge=0)
    """WGAN-GP gradient-penalty weight of GMI's prior (part of its cache key, as in `gmi`)."""
    classes: list[int] | None = None
    """Private classes to attack (default: all). The reference attacks the first 300 labels T gives
    G's random samples (`brep_mi_utils.py:46-72`, untargeted); the workbench attacks a fixed list
    (the reference's targeted mode, `brep_mi_utils.py:77-103`) so attacks compare on the same classes."""
    first_classes: Count | None = None
    """Attack only the first N private classes (reference 300: `num_targets`, `config2.yaml:10`)."""
    points: int = Field(32, ge=1, le=4096)
    """Points N on each sphere (reference 32: `sphere_points_count`, `config2.yaml:1`)."""
    initial_radius: float = Field(2.0, gt=0)
    """Starting sphere radius R₀ (reference 2: `init_sphere_radius`, `config2.yaml:2`)."""
    expansion: float = Field(1.3, gt=1)
    """Radius factor γ of an expansion (reference 1.3: `sphere_expansion_coeff`, `config2.yaml:3`)."""
    expand_fraction: float = Field(0.75, ge=0, lt=1)
    """The sphere expands when more than this share of its points is inside the class (reference
    0.75, hard-coded at `brep_mi.py:63`; the same line keeps the commented-out original, all points)."""
    step_ratio: float = Field(1 / 3, gt=0)
    """α = min(step_ratio · R, max_step) (reference R/3: `brep_mi.py:53`)."""
    max_step: float = Field(3.0, gt=0)
    """The cap of α (reference 3: `brep_mi.py:53`)."""
    z_clip: float = Field(1.5, gt=0)
    """Initial and updated latents are clamped to [−z_clip, z_clip]; sphere points are not (reference
    1.5: `point_clamp_min/max`, `config2.yaml:6-7`, `brep_mi_utils.py:53`, `brep_mi.py:82`)."""
    repulsion_only: bool = True
    """φ ∈ {0, −1}: only points outside the class push (reference True: `config2.yaml:12`,
    `brep_mi.py:75-76`); False uses φ ∈ {+1, −1}."""
    patience: Steps = 200
    """A start ends after this many counted (accepted, non-expanding) iterations since its last
    expansion (reference 1000: `max_iters_at_radius_before_terminate`, `config2.yaml:8`, `brep_mi.py:43,46`).
    Digits: 200 (a CPU deviation; it dominates the run time)."""
    max_iterations: Steps = 1000
    """Iterations per start at most, rejected ones included (not in the reference, which has no cap and
    need not terminate: spec A6.5). A start that reaches it reports what it has."""
    max_radius: float | None = Field(None, gt=0)
    """The radius never grows past this (not in the reference). Unset: no cap, as the reference, but a
    radius that would become non-finite never expands (spec A6.8: on digits some radii overflow to inf,
    where G gives NaN images and argmax picks class 0 forever)."""
    init_batch: BatchSize = 256
    """Latents per initial-point batch (reference 256: `batch_dim_for_initial_points`, `config2.yaml:11`)."""
    init_max_batches: Count = 200
    """Initial-point batches at most (not in the reference, which draws until it has its classes). A
    class T never gives to G's samples within them has no start: it is reported (`unattacked_starts`)
    and its image is the first latent drawn, which the evaluation model will judge a failure as a rule."""
    restarts: Count = 5
    """Independent starts per class and sample (reference: one start per class, `brep_mi.py:128-163`).
    Digits: 5, so accuracy is a mean ± std over restarts as for the other attacks."""
    samples_per_class: Count = 2
    """Starts per class and restart (reference 1). Digits: 2 (5 × 2 = 10 starts per class)."""
    report: Literal["last_expansion", "final"] = "last_expansion"
    """Which point becomes the reconstruction: the one right after the last accepted expansion, as the
    reference scores (`brep_mi.py:97-100,113-116`; a start that never expanded is a failure there, here
    its initial point is returned), or the final point (the commented-out alternative, `brep_mi.py:114`;
    MIBench's choice)."""
    max_batch: BatchSize = 2048
    """Images per generator/oracle pass (results do not depend on it)."""


@dataclass
class Starts:
    """Per-start state of the vectorised search (one row per start)."""

    z: Tensor
    """Current latents [S, D] (float64)."""
    radius: Tensor
    counted: Tensor
    """Accepted non-expanding iterations (`current_iter`, `brep_mi.py:110`)."""
    last_expansion: Tensor
    """`counted` at the last expansion (`last_iter_when_radius_changed`, `brep_mi.py:71`)."""
    iterations: Tensor
    """Every iteration, rejected ones included (for `max_iterations`)."""
    recorded: Tensor
    """The point after the last accepted expansion [S, D] (the initial point until one)."""
    expansions: Tensor
    rejections: Tensor


def sphere_step(z: Tensor, radius: Tensor, units: Tensor, inside: Tensor, p: BREPMIParams
                ) -> tuple[Tensor, Tensor, Tensor]:
    """One BREP-MI step for every start, from its sphere's labels: (candidate z', new radius, expanded).

    `z` [S, D], `radius` [S], `units` [S, N, D] unit directions, `inside` [S, N] bool (T labels the
    sphere point z + R·u_n as the start's class). `brep_mi.py:53-82`: expansion test on > fraction·N
    inside, d = mean_n φ_n (R_old u_n) / R_new, α = min(R_old·ratio, max_step), clamp."""
    n = units.shape[1]
    grown = radius * p.expansion
    allowed = torch.isfinite(grown) & (grown <= (p.max_radius if p.max_radius is not None else math.inf))
    expanded = (inside.sum(dim=1) > p.expand_fraction * n) & allowed
    new_radius = torch.where(expanded, grown, radius)
    phi = inside.to(z.dtype) * 2 - 1
    if p.repulsion_only:
        phi = (phi - 1) / 2
    direction = (phi[..., None] * units).mean(dim=1) * (radius / new_radius)[:, None]  # R_old/R_new: no overflow
    alpha = torch.clamp(radius * p.step_ratio, max=p.max_step)
    candidate = (z + alpha[:, None] * direction).clamp(-p.z_clip, p.z_clip)
    return candidate, new_radius, expanded


def unit_directions(count: int, points: int, dim: int, rng: torch.Generator) -> Tensor:
    """`count × points` directions uniform on the unit sphere (`brep_mi.py:13-25`), float64."""
    g = torch.randn(count, points, dim, generator=rng, dtype=torch.float64)
    return g / g.norm(dim=2, keepdim=True)


class BREPMI(OnGMIPrior):
    """BREP-MI: label-only boundary repulsion in GMI's latent space, through a counted label oracle."""

    name = "brep-mi"
    capabilities = AttackCapabilities(access="label-only", prepares=True, seeded_prior=True)

    def __init__(self, params: BREPMIParams):
        self.params = params


    def labels(self, ctx: AttackContext, generator, z: Tensor) -> Tensor:
        """T's top-1 labels (CPU) of the images of latents `z`, through the label oracle."""
        device, dtype = torch.device(ctx.device), dtype_of(generator)
        with torch.no_grad():
            return torch.cat([ctx.oracle.labels(generator(part.to(device, dtype))).cpu()
                              for part in z.split(self.params.max_batch)])

    def initial_points(self, ctx: AttackContext, generator, classes: list[int], per_class: int
                       ) -> tuple[Tensor, Tensor, int]:
        """(latents [classes·per_class, D], found [same] bool, batches drawn): the first latents T
        labels each class (`brep_mi_utils.py:46-103`); a start never found keeps the first latent drawn."""
        p = self.params
        rng = seeds.generator(ctx.seed, "attack", self.name, "initial")
        found: dict[int, list[Tensor]] = {c: [] for c in classes}
        first = None
        batches = 0
        while batches < p.init_max_batches and any(len(v) < per_class for v in found.values()):
            z = torch.randn(p.init_batch, p.z_dim, generator=rng, dtype=torch.float64).clamp(-p.z_clip, p.z_clip)
            first = z[0] if first is None else first
            batches += 1
            for row, label in zip(z, self.labels(ctx, generator, z).tolist(), strict=True):
                if label in found and len(found[label]) < per_class:
                    found[label].append(row)
        rows, hit = [], []
        for c in classes:
            rows += found[c] + [first] * (per_class - len(found[c]))
            hit += [True] * len(found[c]) + [False] * (per_class - len(found[c]))
        return torch.stack(rows), torch.tensor(hit), batches

    def search(self, ctx: AttackContext, generator, start: Tensor, targets: Tensor, active: Tensor) -> Starts:
        """The boundary-repulsion loop of every start at once (`brep_mi.py:46-110`); stopped starts are
        masked out, so each start runs exactly as it would alone."""
        p = self.params
        s = Starts(z=start.clone(), radius=torch.full((len(start),), p.initial_radius, dtype=torch.float64),
                   counted=torch.zeros(len(start), dtype=torch.long), last_expansion=torch.zeros(len(start), dtype=torch.long),
                   iterations=torch.zeros(len(start), dtype=torch.long), recorded=start.clone(),
                   expansions=torch.zeros(len(start), dtype=torch.long), rejections=torch.zeros(len(start), dtype=torch.long))
        rng = seeds.generator(ctx.seed, "attack", self.name, "sphere")
        running = active.clone()
        step = 0
        while bool(running.any()):
            rows = running.nonzero().squeeze(1)
            z, radius, y = s.z[rows], s.radius[rows], targets[rows]
            units = unit_directions(len(rows), p.points, p.z_dim, rng)
            sphere = (z[:, None, :] + radius[:, None, None] * units).reshape(-1, p.z_dim)
            inside = (self.labels(ctx, generator, sphere).reshape(len(rows), p.points) == y[:, None])
            candidate, new_radius, expanded = sphere_step(z, radius, units, inside, p)
            accepted = self.labels(ctx, generator, candidate) == y
            s.radius[rows] = new_radius
            s.expansions[rows] += expanded.long()
            s.last_expansion[rows] = torch.where(expanded, s.counted[rows], s.last_expansion[rows])
            s.z[rows] = torch.where(accepted[:, None], candidate, z)
            record = accepted & expanded
            s.recorded[rows] = torch.where(record[:, None], candidate, s.recorded[rows])
            s.counted[rows] += (accepted & ~expanded).long()
            s.rejections[rows] += (~accepted).long()
            s.iterations[rows] += 1
            finished = ((s.counted[rows] - s.last_expansion[rows]) >= p.patience) | (s.iterations[rows] >= p.max_iterations)
            running[rows] = ~finished
            step += 1
            if step % 20 == 0 or not bool(running.any()):
                ctx.emit("progress", stage=f"attack:{self.name}", step=step, total=p.max_iterations,
                         loss=float(-inside.double().mean()), confidence=float(inside.double().mean()))
        return s

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes, generator, hit = self.oracle_start(ctx)
        per_class = p.restarts * p.samples_per_class
        start, found, batches = self.initial_points(ctx, generator, classes, per_class)
        targets = torch.tensor([c for c in classes for _ in range(per_class)])
        restarts = torch.tensor([r for _ in classes for r in range(p.restarts) for _ in range(p.samples_per_class)])
        initial_queries = ctx.oracle.queries
        s = self.search(ctx, generator, start, targets, found)
        latents = s.recorded if p.report == "last_expansion" else s.z
        with torch.no_grad():
            images = torch.cat([generator(part.to(ctx.device, dtype_of(generator))).cpu()
                                for part in latents.split(p.max_batch)]).float().clamp(0, 1)
        searched = found.nonzero().squeeze(1)
        if len(searched) < len(found):
            ctx.emit("log", level="warning", message=f"{self.name}: {int((~found).sum())} of {len(found)} starts "
                     f"had no initial point (T never labelled G's samples so in {batches} batches of {p.init_batch})")
        figures = {
            "gan_cached": float(hit),
            "initial_queries": float(initial_queries),
            "unattacked_starts": float((~found).sum()),
            "expanded_share": float((s.expansions[searched] > 0).double().mean()) if len(searched) else 0.0,
            "expansions": float(s.expansions[searched].double().mean()) if len(searched) else 0.0,
            "final_radius_median": float(s.radius[searched].median()) if len(searched) else 0.0,
            "iterations": float(s.iterations[searched].double().mean()) if len(searched) else 0.0,
            "capped_share": float((s.iterations[searched] >= p.max_iterations).double().mean()) if len(searched) else 0.0,
        }
        ctx.emit("log", level="info", message=f"{self.name}: {len(searched)} starts, {figures['expansions']:.1f} "
                 f"expansions and {figures['iterations']:.0f} iterations on average; {ctx.oracle.queries:,} label queries")
        return AttackResult(images=images, targets=targets, restarts=restarts, figures=figures)
