"""`workbench plugins new`: a ready plugin package, from an empty folder to `pip install -e`.

The package registers one small, working example component of the chosen kind through its hook,
has tests that check what the component does (with the `workbench.testing` fixtures; several run
it inside a tiny recipe), and a README; its entry point puts it in `workbench plugins list` as
soon as it is installed. The generated code imports only `workbench.api` from workbench (the tests
also `workbench.testing`), exactly as a third-party package should.

Templates are plain text with `__NAME__`, `__MODULE__`, `__DIST__`, `__KIND__` and `__KEY__`
placeholders (no str.format, so the code keeps its braces).
"""

from __future__ import annotations

import re
from pathlib import Path

from workbench.components.manager import DEFAULT_PLUGINS
from workbench.errors import WorkbenchError, did_you_mean

# One (component module, test module) per kind, in the registry's kind order
# (workbench.components.registry.KINDS; tests/test_scaffold.py checks they match).
_TEMPLATES: dict[str, tuple[str, str]] = {}

# ---------------------------------------------------------------- backbone

_TEMPLATES["backbone"] = (
    '''"""A one-hidden-layer MLP classifier.

A workbench backbone component, registered as `__NAME__` (package __DIST__).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn
from workbench.api import StrictModel, hookimpl


class ExampleParams(StrictModel):
    hidden: int = Field(64, ge=1)
    """Width of the hidden layer."""


class ExampleNetwork(nn.Module):
    """What `build` returns: logits, and the hidden representations BiDO constrains, in one pass."""

    def __init__(self, num_classes: int, in_features: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)
        self.feature_dim = hidden
        self.hidden_names = ["feature"]

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        feature = self.body(x)
        return self.head(feature), [feature]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_hidden(x)[0]


class ExampleBackbone:
    """A one-hidden-layer MLP."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return ExampleNetwork(num_classes, in_channels * image_size * image_size, self.params.hidden)


@hookimpl
def register_backbones(register):
    register("__NAME__", ExampleBackbone, params=ExampleParams,
             summary="Example backbone (an MLP).")
''',
    '''__TEST_HEADER__
import pytest
import torch

import __MODULE__

__REGISTERED__


RECIPE = """
seed = 0
device = "cpu"
data = { use = "digits", image_size = 16 }
target.backbone = { use = "__NAME__", hidden = 32 }
target.train = { epochs = 5, batch_size = 64 }

[[variants]]
name = "none"
defense = { use = "none" }
"""


def test_forward_hidden_matches_forward(make_registry):
    model = make_registry().create("backbone", "__NAME__", hidden=16).build(5, 1, 16)
    x = torch.rand(4, 1, 16, 16)
    logits, hiddens = model.forward_hidden(x)
    assert logits.shape == (4, 5)
    assert torch.allclose(logits, model(x)) and hiddens[-1].shape == (4, model.feature_dim)


def test_trains_in_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(RECIPE)
    assert results["variants"][0]["utility"]["test_accuracy"] > 0.5  # 5 classes: chance is 0.2
''',
)

# ---------------------------------------------------------------- dependency

_TEMPLATES["dependency"] = (
    '''"""Linear CKA between two batches.

A workbench dependency component, registered as `__NAME__` (package __DIST__).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor
from workbench.api import StrictModel, hookimpl


class ExampleParams(StrictModel):
    scale: float = Field(1.0, gt=0)
    """Multiplies the measure (a stand-in for your own params)."""


class ExampleMeasure:
    """Linear CKA: ||A^T B||_F^2 / (||A^T A||_F ||B^T B||_F) of the centred samples, in [0, 1]."""

    kernel_a = "linear"
    kernel_b = "linear"

    def __init__(self, params: ExampleParams):
        self.params = params

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        a = a.flatten(1).float() - a.flatten(1).float().mean(0)
        b = b.flatten(1).float() - b.flatten(1).float().mean(0)
        cross = (a.T @ b).pow(2).sum()
        norm = (a.T @ a).pow(2).sum().sqrt() * (b.T @ b).pow(2).sum().sqrt()
        return self.params.scale * cross / norm.clamp_min(1e-12)


@hookimpl
def register_dependency_measures(register):
    register("__NAME__", ExampleMeasure, params=ExampleParams,
             summary="Example dependency measure.")
''',
    '''__TEST_HEADER__
import pytest
import torch

import __MODULE__

__REGISTERED__


def test_measure_of_a_variable_with_itself_is_one(make_registry):
    measure = make_registry().create("dependency", "__NAME__")
    a = torch.randn(64, 8)
    assert float(measure(a, a)) == pytest.approx(1.0, rel=1e-4)
    assert float(measure(a, torch.randn(64, 8))) < 0.5


def test_measure_is_differentiable(make_registry):
    measure = make_registry().create("dependency", "__NAME__")
    a = torch.randn(32, 4, requires_grad=True)
    measure(a, a.detach() + 0.1 * torch.randn(32, 4)).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
''',
)

# ---------------------------------------------------------------- dataset

_TEMPLATES["dataset"] = (
    '''"""Oriented bars, generated from the seed.

A workbench dataset component, registered as `__NAME__` (package __DIST__).

Class k is a bright bar through the centre at angle k * 180 / (2N) degrees (a little jitter and
noise on each image). Angles 0..N-1 are private, N..2N-1 the attacker's public data. No files.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor
from torch.utils.data import TensorDataset
from workbench.api import DataSplits, StrictModel, hookimpl


class ExampleParams(StrictModel):
    image_size: int = Field(16, ge=8, le=128)
    """Side length of the square, single-channel images."""
    private_classes: int = Field(4, ge=2, le=16)
    """Angles 0..N-1 are private (the target learns them); N..2N-1 are public."""
    per_class: int = Field(100, ge=5)
    """Images per class; a fifth of each private class is the test split."""


def bars(angles: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Bars through the (jittered) centre at `angles` in radians: `[n, 1, size, size]` in [0, 1]."""
    n = len(angles)
    angles = angles + 0.05 * torch.randn(n, generator=generator)
    centre = 0.1 * torch.randn(n, 2, 1, 1, generator=generator)
    grid = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    distance = ((y - centre[:, 1]) * angles.cos()[:, None, None]
                - (x - centre[:, 0]) * angles.sin()[:, None, None]).abs()
    images = torch.exp(-((distance / 0.15) ** 2)) + 0.05 * torch.randn(n, size, size, generator=generator)
    return images.clamp(0, 1)[:, None]


class ExampleDataset:
    """Oriented bars: private angles and public angles, deterministic by seed."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def load(self, seed: int) -> DataSplits:
        p = self.params
        generator = torch.Generator().manual_seed(seed)
        classes = 2 * p.private_classes
        labels = torch.arange(classes).repeat_interleave(p.per_class)
        images = bars(labels * math.pi / classes, p.image_size, generator)
        private = labels < p.private_classes
        test = private & (torch.arange(len(labels)) % p.per_class < p.per_class // 5)

        def split(mask: Tensor) -> TensorDataset:
            return TensorDataset(images[mask], labels[mask])

        return DataSplits(
            train=split(private & ~test),
            test=split(test),
            public=split(~private),  # labels N..2N-1: never a private class
            num_classes=p.private_classes,
            in_channels=1,
            image_size=p.image_size,
            class_names=[f"{180 * k / classes:g} deg" for k in range(p.private_classes)],
        )


@hookimpl
def register_datasets(register):
    register("__NAME__", ExampleDataset, params=ExampleParams,
             summary="Example dataset: oriented bars.")
''',
    '''__TEST_HEADER__
import pytest
import torch

import __MODULE__

__REGISTERED__


RECIPE = """
seed = 0
device = "cpu"
data = { use = "__NAME__", image_size = 16 }
target.backbone = { use = "mcnn", width = 16 }
target.train = { epochs = 5, batch_size = 64 }

[[variants]]
name = "none"
defense = { use = "none" }
"""


def test_splits_are_shaped_and_labelled_as_workbench_expects(make_registry):
    data = make_registry().create("dataset", "__NAME__", private_classes=3, per_class=10).load(seed=0)
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 1, 16)
    x, y = data.train[0]
    assert x.shape == (1, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert (len(data.train), len(data.test), len(data.public)) == (24, 6, 30)
    assert set(data.test.tensors[1].tolist()) == {0, 1, 2}
    assert set(data.public.tensors[1].tolist()).isdisjoint(range(3))


def test_same_seed_same_images(make_registry):
    dataset = make_registry().create("dataset", "__NAME__", per_class=10)
    assert torch.equal(dataset.load(1).train.tensors[0], dataset.load(1).train.tensors[0])
    assert not torch.equal(dataset.load(1).train.tensors[0], dataset.load(2).train.tensors[0])


def test_a_target_learns_it_in_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(RECIPE)
    assert results["variants"][0]["utility"]["test_accuracy"] > 0.5  # 4 classes: chance is 0.25
''',
)

# ---------------------------------------------------------------- ood_dataset

_TEMPLATES["ood_dataset"] = (
    '''"""Rings, generated from the seed.

A workbench ood_dataset component, registered as `__NAME__` (package __DIST__).

Rings of random centre, radius and thickness: shapes a digit classifier never saw, shaped like
the in-distribution images. Use as an OOD test set (`[ood.test_sets]`) or as BiDO+'s auxiliary
data (`[variants.ood_training] dataset`), but not as both in one recipe.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch.utils.data import TensorDataset
from workbench.api import StrictModel, hookimpl

OOD_LABEL = -1
"""The label every OOD image carries (workbench never trains on it)."""


class ExampleParams(StrictModel):
    size: int = Field(500, ge=1)
    """Number of images."""


class ExampleOODDataset:
    """Rings on a dark background."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def load(self, image_size: int, in_channels: int, seed: int) -> TensorDataset:
        n = self.params.size
        generator = torch.Generator().manual_seed(seed)
        centre = 0.3 * (torch.rand(n, 2, 1, 1, generator=generator) - 0.5)
        radius = 0.3 + 0.4 * torch.rand(n, 1, 1, generator=generator)
        width = 0.05 + 0.1 * torch.rand(n, 1, 1, generator=generator)
        grid = torch.linspace(-1, 1, image_size)
        y, x = torch.meshgrid(grid, grid, indexing="ij")
        distance = ((x - centre[:, 0]) ** 2 + (y - centre[:, 1]) ** 2).sqrt()
        images = torch.exp(-(((distance - radius) / width) ** 2)).clamp(0, 1)
        images = images[:, None].expand(n, in_channels, image_size, image_size).contiguous()
        return TensorDataset(images, torch.full((n,), OOD_LABEL))


@hookimpl
def register_ood_datasets(register):
    register("__NAME__", ExampleOODDataset, params=ExampleParams,
             summary="Example OOD set: rings.")
''',
    '''__TEST_HEADER__
import pytest
import torch
from workbench.testing import TINY_RECIPE

import __MODULE__

__REGISTERED__


def test_images_are_shaped_like_the_in_distribution_data(make_registry):
    ood = make_registry().create("ood_dataset", "__NAME__", size=20)
    images, labels = ood.load(image_size=32, in_channels=3, seed=0).tensors
    assert images.shape == (20, 3, 32, 32) and labels.shape == (20,)
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_same_seed_same_images(make_registry):
    ood = make_registry().create("ood_dataset", "__NAME__", size=8)
    assert torch.equal(ood.load(16, 1, seed=3).tensors[0], ood.load(16, 1, seed=3).tensors[0])
    assert not torch.equal(ood.load(16, 1, seed=3).tensors[0], ood.load(16, 1, seed=4).tensors[0])


def test_measured_as_an_ood_test_set_in_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(TINY_RECIPE + \'\'\'
[ood]
score = { use = "msp" }
test_sets = { rings = { use = "__NAME__", size = 200 } }
\'\'\', overrides=["target.train.epochs=2"])  # two epochs are enough to check this
    figures = results["variants"][0]["ood"]["sets"]["rings"]
    assert 0.0 <= figures["auroc"] <= 1.0 and 0.0 <= figures["fpr95"] <= 1.0
''',
)

# ---------------------------------------------------------------- defense

_TEMPLATES["defense"] = (
    '''"""Cross-entropy with label smoothing.

A workbench defense component, registered as `__NAME__` (package __DIST__).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from workbench.api import Defense, LossOutput, StrictModel, hookimpl


class ExampleParams(StrictModel):
    smoothing: float = Field(0.1, ge=0, lt=1)
    """Label smoothing of the cross-entropy (a stand-in for your own params)."""


class ExampleDefense(Defense):
    """Cross-entropy with label smoothing, through the shared trainer."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.params.smoothing)
        return LossOutput(loss, {"ce": float(loss.detach())})


@hookimpl
def register_defenses(register):
    register("__NAME__", ExampleDefense, params=ExampleParams,
             summary="Example defense.")
''',
    '''__TEST_HEADER__
import pytest
import torch
import torch.nn.functional as F
from workbench.testing import TINY_RECIPE

import __MODULE__

__REGISTERED__


def test_loss_is_smoothed_cross_entropy(make_registry):
    defense = make_registry().create("defense", "__NAME__", smoothing=0.0)
    logits, y = torch.randn(8, 5), torch.arange(8) % 5
    out = defense.loss(x=None, y=y, logits=logits, hiddens=[], model=None)
    assert torch.allclose(out.loss, F.cross_entropy(logits, y))


def test_trains_a_variant_in_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(TINY_RECIPE.replace(\'use = "none"\', \'use = "__NAME__", smoothing = 0.2\'))
    assert results["variants"][0]["utility"]["test_accuracy"] > 0.5  # 5 classes: chance is 0.2
''',
)

# ---------------------------------------------------------------- attack

_TEMPLATES["attack"] = (
    '''"""Gradient descent on the pixels.

A workbench attack component, registered as `__NAME__` (package __DIST__).

Like MI-Face without priors: each image starts as seeded noise and moves, by Adam steps, toward
a higher target probability of its class, clamped to [0, 1]. An attack with a target-independent
prior (a GAN on the public data) would also have `prepare(ctx)`, called once per run with
`ctx.target = None`, and keep the prior in `ctx.cache`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from workbench.api import AttackContext, AttackResult, StrictModel, hookimpl


class ExampleParams(StrictModel):
    steps: int = Field(100, ge=1)
    """Adam steps per image."""
    lr: float = Field(0.05, gt=0)
    """Adam step size, in pixel units."""
    per_class: int = Field(4, ge=1)
    """Reconstructions per private class."""


class ExampleAttack:
    """Reconstructions of every private class, `per_class` each."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def run(self, ctx: AttackContext) -> AttackResult:
        p, data = self.params, ctx.data
        targets = torch.arange(data.num_classes).repeat_interleave(p.per_class)
        generator = torch.Generator().manual_seed(ctx.seed)
        shape = (len(targets), data.in_channels, data.image_size, data.image_size)
        x = torch.rand(shape, generator=generator).to(ctx.device).requires_grad_(True)
        y = targets.to(ctx.device)
        optimizer = torch.optim.Adam([x], lr=p.lr)
        for step in range(1, p.steps + 1):
            loss = F.cross_entropy(ctx.target(x).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            if step % 25 == 0 or step == p.steps:
                ctx.emit("progress", stage="attack:__NAME__", step=step, total=p.steps,
                         loss=float(loss.detach()))
        with torch.no_grad():
            confidence = ctx.target(x).float().softmax(1).gather(1, y[:, None]).mean()
        figures = {"confidence": float(confidence)}  # mean target probability of the reconstructions
        return AttackResult(images=x.detach().cpu(), targets=targets, figures=figures)


@hookimpl
def register_attacks(register):
    register("__NAME__", ExampleAttack, params=ExampleParams,
             summary="Example attack: gradient descent on pixels.")
''',
    '''__TEST_HEADER__
import pytest
import torch
import torch.nn.functional as F
from workbench.api import AttackContext

import __MODULE__

__REGISTERED__


def trained_target(registry, data):
    """A small CNN trained on the private digits for a few epochs (seconds on a CPU)."""
    torch.manual_seed(0)
    backbone = registry.create("backbone", "mcnn", width=16)
    model = backbone.build(data.num_classes, data.in_channels, data.image_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data.train.tensors
    for _ in range(3):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # as the runner hands the target to an attack
    return model.eval()


def test_reconstructions_raise_the_targets_confidence(make_registry):
    registry = make_registry()
    data = registry.create("dataset", "digits", image_size=16).load(seed=0)
    target = trained_target(registry, data)
    attack = registry.create("attack", "__NAME__", steps=50, per_class=3)
    events = []
    ctx = AttackContext(target=target, data=data, evaluation_model=None, device=torch.device("cpu"), seed=0,
                        emit=lambda kind, **fields: events.append(kind))
    result = attack.run(ctx)

    assert result.images.shape == (5 * 3, 1, 16, 16)  # 3 per private digit, shaped like the data
    assert torch.equal(result.targets, torch.arange(5).repeat_interleave(3))
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
    with torch.no_grad():
        def confidence(images):
            return float(target(images).softmax(1).gather(1, result.targets[:, None]).mean())

        assert confidence(result.images) > max(0.8, confidence(torch.rand_like(result.images)) + 0.3)
    assert "progress" in events
''',
)

# ---------------------------------------------------------------- metric

_TEMPLATES["metric"] = (
    '''"""Mean confidence on the private test split.

A workbench metric component, registered as `__NAME__` (package __DIST__).
"""

from __future__ import annotations

import torch
from workbench.api import EvalContext, Metric, hookimpl, iterate_batches


class ExampleMetric(Metric):
    """Mean max-softmax confidence on the private test split."""

    section = "utility"

    def __init__(self, params):
        self.params = params

    @torch.no_grad()
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        total, count = 0.0, 0
        for x, _ in iterate_batches(ctx.data.test, ctx.batch_size, shuffle=False):
            probs = ctx.model(x.to(ctx.device)).float().softmax(1)
            total += float(probs.max(1).values.sum())
            count += len(x)
        return {"__KEY__": total / max(count, 1)}


@hookimpl
def register_metrics(register):
    register("__NAME__", ExampleMetric,
             summary="Example metric: mean confidence on the test split.")
''',
    '''__TEST_HEADER__
import pytest
from workbench.testing import TINY_RECIPE

import __MODULE__

__REGISTERED__


def test_metric_runs_in_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(TINY_RECIPE + \'\'\'
[[metrics]]
use = "accuracy"

[[metrics]]
use = "__NAME__"
\'\'\', overrides=["target.train.epochs=2"])  # two epochs are enough to check this
    value = results["variants"][0]["utility"]["__KEY__"]
    assert 0.2 <= value <= 1.0  # 5 classes: a confidence is at least 1/5
''',
)

# ---------------------------------------------------------------- ood_score

_TEMPLATES["ood_score"] = (
    '''"""The margin between the two top logits.

A workbench ood_score component, registered as `__NAME__` (package __DIST__).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from workbench.api import NoParams, hookimpl


class ExampleScore:
    """Top-1 logit minus top-2 logit: large when the model is sure of one class (higher = more ID)."""

    def __init__(self, params: NoParams):
        self.params = params

    @torch.no_grad()
    def __call__(self, model: nn.Module, x: Tensor) -> Tensor:
        top = model(x).float().topk(2, dim=1).values
        return top[:, 0] - top[:, 1]


@hookimpl
def register_ood_scores(register):
    register("__NAME__", ExampleScore,
             summary="Example OOD score: top-1 minus top-2 logit.")
''',
    '''__TEST_HEADER__
import pytest
import torch
from torch import nn
from workbench.testing import TINY_RECIPE

import __MODULE__

__REGISTERED__


def test_a_confident_prediction_scores_higher(make_registry):
    score = make_registry().create("ood_score", "__NAME__")
    model = nn.Identity()  # the "images" are the logits themselves
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.9, 0.0]])
    assert torch.allclose(score(model, logits), torch.tensor([5.0, 0.1]))


def test_scores_the_ood_sets_of_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(TINY_RECIPE + \'\'\'
[ood]
score = { use = "__NAME__" }
test_sets = { noise = { use = "noise", size = 200 } }
\'\'\', overrides=["target.train.epochs=2"])  # two epochs are enough to check this
    ood = results["variants"][0]["ood"]
    assert ood["score"] == "__NAME__" and 0.0 <= ood["sets"]["noise"]["auroc"] <= 1.0
''',
)

# ---------------------------------------------------------------- ood_loss

_TEMPLATES["ood_loss"] = (
    '''"""Flatten the prediction on OOD images.

A workbench ood_loss component, registered as `__NAME__` (package __DIST__).

Added to the defense's loss once auxiliary OOD data joins (BiDO+'s second phase): the mean top
softmax probability on the OOD batch, times `weight`; it is smallest (weight / K) when the model
is equally unsure of all K classes there. A loss that needs statistics of the warmed-up model
would also offer `prepare(model, id_data, ood_data, device) -> dict` and `restore(state)`.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor
from workbench.api import StrictModel, hookimpl


class ExampleParams(StrictModel):
    weight: float = Field(0.5, ge=0)
    """Weight of the term against the defense's loss."""


class ExampleOODLoss:
    """weight * mean over the OOD batch of max softmax(ood_logits)."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def __call__(self, id_logits: Tensor, ood_logits: Tensor) -> Tensor:
        return self.params.weight * ood_logits.softmax(dim=1).amax(dim=1).mean()


@hookimpl
def register_ood_losses(register):
    register("__NAME__", ExampleOODLoss, params=ExampleParams,
             summary="Example OOD loss: mean OOD max-softmax.")
''',
    '''__TEST_HEADER__
import json

import pytest
import torch
from workbench.testing import TINY_RECIPE

import __MODULE__

__REGISTERED__


def test_smallest_when_the_ood_prediction_is_flat(make_registry):
    loss = make_registry().create("ood_loss", "__NAME__", weight=2.0)
    id_logits = torch.randn(8, 4)
    assert float(loss(id_logits, torch.zeros(6, 4))) == pytest.approx(2.0 / 4)
    confident = torch.tensor([[9.0, 0.0, 0.0, 0.0]]).repeat(6, 1).requires_grad_(True)
    value = loss(id_logits, confident)
    assert float(value.detach()) > 1.9
    value.backward()
    assert confident.grad[:, 0].gt(0).all()  # descending the loss lowers the confident logit


def test_joins_training_after_the_warm_up_in_a_tiny_recipe(run_tiny_recipe):
    run_dir, _ = run_tiny_recipe(TINY_RECIPE + \'\'\'
[variants.ood_training]
dataset = { use = "shapes", role = "auxiliary", size = 200 }
loss = { use = "__NAME__", weight = 0.5 }
warmup_epochs = 1
\'\'\', overrides=["target.train.epochs=2"])
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["type"] == "epoch" and e.get("variant") == "none"]
    assert ["ood_loss" in e["metrics"] for e in epochs] == [False, True]
''',
)

# ---------------------------------------------------------------- executor

_TEMPLATES["executor"] = (
    '''"""Jobs on a concurrent.futures process pool.

A workbench executor component, registered as `__NAME__` (package __DIST__).

An executor only has to call `execute_outcome(job)` somewhere (a worker process here; a Slurm
task, a Ray worker, a Kubernetes pod elsewhere) and hand back the outcomes in the jobs' order.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Sequence

from pydantic import Field
from workbench.api import Job, Outcome, StrictModel, die_with_parent, execute_outcome, hookimpl


class ExampleParams(StrictModel):
    workers: int = Field(2, ge=1)
    """Worker processes."""
    poll_seconds: float = Field(0.2, gt=0)
    """How often `poll()` is called while jobs run (the runner relays worker events then)."""


class ExampleExecutor:
    """A pool of spawned worker processes, made on first use and kept until `close`."""

    def __init__(self, params: ExampleParams):
        self.params = params
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def run(self, jobs: Sequence[Job], poll: Callable[[], None]) -> list[Outcome]:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.params.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=die_with_parent, initargs=(os.getpid(),),  # no orphans if this process dies
            )
        futures = [self._pool.submit(execute_outcome, job) for job in jobs]
        while concurrent.futures.wait(futures, timeout=self.params.poll_seconds).not_done:
            poll()
        poll()
        # execute_outcome never raises; a worker that died (killed, out of memory) is one failed job.
        return [Outcome(ok=False, error=f"worker died: {f.exception()}") if f.exception() else f.result()
                for f in futures]

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None


@hookimpl
def register_executors(register):
    register("__NAME__", ExampleExecutor, params=ExampleParams,
             summary="Example executor: a process pool.")
''',
    '''__TEST_HEADER__
import json

import pytest
from workbench.api import Job
from workbench.testing import TINY_RECIPE

import __MODULE__

__REGISTERED__


def test_runs_the_jobs_and_returns_their_outcomes_in_order(make_registry, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)

    def run_job(name, recipe_path, seed):
        """A job that runs a whole (one-epoch) recipe into the run directory `name`."""
        options = {"recipe": str(recipe_path), "overrides": [f"seed={seed}", "target.train.epochs=1"]}
        return Job(kind="run", run_dir=str(tmp_path / name), cache_dir=str(tmp_path / "cache"),
                   options=options)

    broken = run_job("broken", tmp_path / "missing.toml", 0)
    jobs = [run_job("seed0", recipe, 0), broken, run_job("seed1", recipe, 1)]
    executor = make_registry().create("executor", "__NAME__", workers=2)
    polls = []
    try:
        outcomes = executor.run(jobs, poll=lambda: polls.append(1))
    finally:
        executor.close()

    assert [o.ok for o in outcomes] == [True, False, True]  # a failed job does not stop the others
    assert "missing.toml" in outcomes[1].error and polls
    for outcome, seed in ((outcomes[0], 0), (outcomes[2], 1)):
        results = json.loads((tmp_path / f"seed{seed}" / "results.json").read_text())
        assert outcome.value == str(tmp_path / f"seed{seed}") and results["seed"] == seed
''',
)

# ---------------------------------------------------------------- event_sink

_TEMPLATES["event_sink"] = (
    '''"""Every figure of a run as a CSV row.

A workbench event_sink component, registered as `__NAME__` (package __DIST__).

The runner hands a sink every event it writes to `events.jsonl`, in order, on the sink's own
thread. This one keeps the figures: each `epoch` event's metrics and each `result` event's
figures become rows of `<run dir>/<file>` (variant, stage, epoch, name, value).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from workbench.api import StrictModel, hookimpl

COLUMNS = ["variant", "stage", "epoch", "name", "value"]


class ExampleParams(StrictModel):
    file: str = "figures.csv"
    """File name of the CSV, in the run directory."""


def numbers(figures: dict[str, Any], prefix: str = ""):
    """(name, value) of every number in `figures`; nested tables (OOD sets) as `set/auroc`."""
    for name, value in figures.items():
        if isinstance(value, dict):
            yield from numbers(value, f"{prefix}{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield prefix + name, value


class ExampleSink:
    """Figures to a CSV file, one row each, as the events arrive."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def open(self, run_dir: Path, recipe: dict[str, Any]) -> None:
        path = Path(run_dir) / self.params.file
        new = not path.exists()  # a resumed run appends
        self.stream = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.stream)
        if new:
            self.writer.writerow(COLUMNS)

    def write(self, event: dict[str, Any]) -> None:
        if event["type"] == "epoch":
            figures, where = event["metrics"], (event.get("variant"), event["stage"], event["epoch"])
        elif event["type"] == "result":
            figures, where = event["figures"], (event["variant"], event["section"], "")
        else:
            return
        self.writer.writerows((*where, name, value) for name, value in numbers(figures))
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


@hookimpl
def register_event_sinks(register):
    register("__NAME__", ExampleSink, params=ExampleParams,
             summary="Example event sink: figures to a CSV file.")
''',
    '''__TEST_HEADER__
import csv
import json

import pytest
from workbench.testing import TINY_RECIPE

import __MODULE__

__REGISTERED__


def test_gets_the_figures_of_a_tiny_run_in_order(run_tiny_recipe):
    run_dir, _ = run_tiny_recipe(TINY_RECIPE + \'\'\'
[[sinks]]
use = "__NAME__"
file = "figures.csv"
\'\'\', overrides=["target.train.epochs=2"])  # two epochs are enough to check this
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    expected = []
    for e in events:
        if e["type"] == "epoch":
            where, figures = [e["variant"], e["stage"], str(e["epoch"])], e["metrics"]
        elif e["type"] == "result":
            where, figures = [e["variant"], e["section"], ""], e["figures"]
        else:
            continue
        expected += [[*where, name, str(value)] for name, value in figures.items()]
    with (run_dir / "figures.csv").open(newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == __MODULE__.COLUMNS
    assert rows[1:] == expected and len(expected) > 5
''',
)

KINDS: tuple[str, ...] = tuple(_TEMPLATES)
"""Every component kind; `plugins new --kind` has a template for each."""

_TEST_HEADER = '''"""Tests of the __KIND__ `__NAME__`, with workbench's pytest fixtures (`workbench.testing`)."""

from __future__ import annotations
'''

_REGISTERED = '''
@pytest.fixture(autouse=True)
def registered(register_plugin):
    """This package registered inline, as its entry point registers it once installed: `make_registry()`
    and `run_tiny_recipe` see it without `pip install`."""
    register_plugin(__MODULE__, "__NAME__")'''

_PYPROJECT = """[build-system]
requires = ["hatchling>=1.21"]
build-backend = "hatchling.build"

[project]
name = "__DIST__"
version = "0.1.0"
description = "A workbench plugin: __KIND__ `__NAME__`."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["workbench-mi"]

[project.entry-points.workbench]
__NAME__ = "__MODULE__"

[tool.hatch.build.targets.wheel]
packages = ["src/__MODULE__"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["src"]
"""

_README = """# __DIST__

A [workbench](https://pypi.org/project/workbench-mi/) plugin that registers the __KIND__ `__NAME__`.

```bash
pytest                                   # passes before you change anything (no install needed)
pip install -e .
workbench plugins list --kind __KIND__   # `__NAME__` appears, from __DIST__ 0.1.0
```

Use it in a recipe as a table with `use = "__NAME__"`; edit `src/__MODULE__/__init__.py` to make it
yours (import from workbench only `workbench.api`). The hooks and what each component kind must
provide: workbench's docs/hooks.md and docs/plugins.md.
"""


def _fill(template: str, fields: dict[str, str]) -> str:
    for key, value in fields.items():
        template = template.replace(f"__{key.upper()}__", value)
    return template


def write_plugin_package(name: str, output_dir: Path, kind: str = "dependency") -> Path:
    """Write a plugin package registering one `kind` component called `name`; returns its folder."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise WorkbenchError(
            f"plugin name {name!r}: use lowercase letters, digits and '-', starting with a letter"
        )
    if kind not in _TEMPLATES:
        raise WorkbenchError(f"--kind {kind!r} is not a component kind{did_you_mean(kind, KINDS)}; "
                             f"kinds: {', '.join(KINDS)}")
    if name == "workbench" or name.startswith("workbench-"):
        raise WorkbenchError(f"plugin name {name!r}: leave out 'workbench-'; the package is workbench-NAME")
    dist = f"workbench-{name}"
    module = "workbench_" + name.replace("-", "_")
    if module in DEFAULT_PLUGINS:
        # The package's module would shadow (or be shadowed by) a built-in plugin of the same name.
        raise WorkbenchError(f"plugin name {name!r}: {module} is a built-in plugin; choose another name")
    folder = Path(output_dir) / dist
    if folder.exists() and any(folder.iterdir()):
        raise WorkbenchError(f"{folder}: exists and is not empty; choose another --output or name")
    component, test = _TEMPLATES[kind]
    test = test.replace("__TEST_HEADER__", _TEST_HEADER).replace("__REGISTERED__", _REGISTERED)
    fields = {"name": name, "module": module, "dist": dist, "kind": kind, "key": name.replace("-", "_")}
    (folder / "src" / module).mkdir(parents=True, exist_ok=True)
    (folder / "tests").mkdir(exist_ok=True)
    (folder / "pyproject.toml").write_text(_fill(_PYPROJECT, fields))
    (folder / "README.md").write_text(_fill(_README, fields))
    (folder / "src" / module / "__init__.py").write_text(_fill(component, fields))
    (folder / "tests" / "conftest.py").write_text('pytest_plugins = ["workbench.testing"]\n')
    (folder / "tests" / f"test_{module}.py").write_text(_fill(test, fields))
    return folder
