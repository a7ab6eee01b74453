"""`workbench plugins new`: a ready plugin package, from an empty folder to `pip install -e`.

The package registers one example component of the chosen kind through the public hooks, has a
passing test that uses `workbench.testing`, and a README; its entry point puts it in
`workbench plugins list` as soon as it is installed.
"""

from __future__ import annotations

import re
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.plugins import DEFAULT_PLUGINS

KINDS_WITH_TEMPLATES = ("dependency", "defense", "metric", "backbone")

_COMPONENTS = {
    "dependency": (
        '''
class ExampleParams(StrictModel):
    scale: float = Field(1.0, gt=0)
    """Multiplies the measure (a stand-in for your own params)."""


class ExampleMeasure:
    """Linear CKA-style dependence: ||A^T B||_F^2 of centred samples, normalised."""

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
    register("{name}", ExampleMeasure, params=ExampleParams, summary="Example dependency measure.")
''',
        """
def test_measure_of_a_variable_with_itself_is_one(make_registry):
    measure = make_registry().create("dependency", "{name}")
    a = torch.randn(64, 8)
    assert float(measure(a, a)) == pytest.approx(1.0, rel=1e-4)
    assert float(measure(a, torch.randn(64, 8))) < 0.5
""",
    ),
    "defense": (
        '''
class ExampleParams(StrictModel):
    smoothing: float = Field(0.1, ge=0, lt=1)
    """Label smoothing of the cross-entropy (a stand-in for your own params)."""


class ExampleDefense(Defense):
    """Cross-entropy with label smoothing, through the shared trainer."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.params.smoothing)
        return LossOutput(loss, {{"ce": float(loss.detach())}})


@hookimpl
def register_defenses(register):
    register("{name}", ExampleDefense, params=ExampleParams, summary="Example defense.")
''',
        """
def test_loss_is_smoothed_cross_entropy(make_registry):
    defense = make_registry().create("defense", "{name}", smoothing=0.0)
    logits, y = torch.randn(8, 5), torch.arange(8) % 5
    out = defense.loss(x=None, y=y, logits=logits, hiddens=[], model=None)
    assert torch.allclose(out.loss, F.cross_entropy(logits, y))
""",
    ),
    "metric": (
        '''
class ExampleMetric(Metric):
    """Mean max-softmax confidence on the private test split."""

    section = "utility"

    def __init__(self, params):
        self.params = params

    @torch.no_grad()
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        total, count = 0.0, 0
        for x, _ in iterate_batches(ctx.data.test, 256, shuffle=False):
            probs = ctx.model(x.to(ctx.device)).softmax(1)
            total += float(probs.max(1).values.sum())
            count += len(x)
        return {{"{key}": total / max(count, 1)}}


@hookimpl
def register_metrics(register):
    register("{name}", ExampleMetric, summary="Example metric: mean confidence on the test split.")
''',
        """
def test_metric_runs_in_a_tiny_recipe(make_registry, run_tiny_recipe):
    # make_registry registered this package as an inline plugin; run_tiny_recipe sees it.
    from workbench.testing import TINY_RECIPE

    _, results = run_tiny_recipe(TINY_RECIPE + '\\n[[metrics]]\\nuse = "accuracy"\\n\\n[[metrics]]\\nuse = "{name}"\\n')
    value = results["variants"][0]["utility"]["{key}"]
    assert 0.2 <= value <= 1.0
""",
    ),
    "backbone": (
        '''
class ExampleParams(StrictModel):
    hidden: int = Field(64, ge=1)
    """Width of the hidden layer."""


class ExampleNetwork(nn.Module):
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
    register("{name}", ExampleBackbone, params=ExampleParams, summary="Example backbone (an MLP).")
''',
        """
def test_forward_hidden_matches_forward(make_registry):
    model = make_registry().create("backbone", "{name}", hidden=16).build(5, 1, 16)
    x = torch.rand(4, 1, 16, 16)
    logits, hiddens = model.forward_hidden(x)
    assert torch.allclose(logits, model(x)) and hiddens[-1].shape == (4, model.feature_dim)
""",
    ),
}

_MODULE_HEADER = '''"""{dist}: a workbench plugin ({kind} `{name}`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from workbench.api import Defense, EvalContext, LossOutput, Metric, StrictModel, hookimpl, iterate_batches

__all__ = ["hookimpl"]
'''

_TEST_HEADER = '''"""Tests of the {name} component, with workbench's pytest fixtures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import {module}


@pytest.fixture
def make_registry(plugin_manager, register_plugin):
    from workbench.registry import Registry

    if not plugin_manager.pm.has_plugin("{name}"):
        register_plugin({module}, "{name}")
    return lambda: Registry(plugin_manager)
'''

_PYPROJECT = """[build-system]
requires = ["hatchling>=1.21"]
build-backend = "hatchling.build"

[project]
name = "{dist}"
version = "0.1.0"
description = "A workbench plugin: {kind} `{name}`."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["workbench-mi"]

[project.entry-points.workbench]
{name} = "{module}"

[tool.hatch.build.targets.wheel]
packages = ["src/{module}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["src"]
"""

_README = """# {dist}

A [workbench](https://pypi.org/project/workbench-mi/) plugin that registers the {kind} `{name}`.

```bash
pip install -e .
workbench plugins list --kind {kind}     # `{name}` appears, from {dist} 0.1.0
pytest
```

Use it in a recipe as a table with `use = "{name}"`; edit `src/{module}/__init__.py` to make it
yours. The hooks and what each component kind must provide: workbench's docs/hooks.md and
docs/plugins.md.
"""


def write_plugin_package(name: str, output_dir: Path, kind: str = "dependency") -> Path:
    """Write a plugin package registering one `kind` component called `name`; returns its folder."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise WorkbenchError(
            f"plugin name {name!r}: use lowercase letters, digits and '-', starting with a letter"
        )
    if kind not in KINDS_WITH_TEMPLATES:
        raise WorkbenchError(f"--kind {kind!r}: templates exist for {', '.join(KINDS_WITH_TEMPLATES)}")
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
    component, test = _COMPONENTS[kind]
    fields = {"name": name, "module": module, "dist": dist, "kind": kind, "key": name.replace("-", "_")}
    (folder / "src" / module).mkdir(parents=True, exist_ok=True)
    (folder / "tests").mkdir(exist_ok=True)
    (folder / "pyproject.toml").write_text(_PYPROJECT.format(**fields))
    (folder / "README.md").write_text(_README.format(**fields))
    (folder / "src" / module / "__init__.py").write_text(
        _MODULE_HEADER.format(**fields) + component.format(**fields)
    )
    (folder / "tests" / "conftest.py").write_text('pytest_plugins = ["workbench.testing"]\n')
    (folder / "tests" / f"test_{module}.py").write_text(_TEST_HEADER.format(**fields) + test.format(**fields))
    return folder
