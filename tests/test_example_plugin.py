"""Plugin authoring as documented: the example package, the --plugins-dir sample in docs/plugins.md,
the plugin-selection variables, and inline plugins taking part in `run_tiny_recipe`."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.components.hookspecs import hookimpl
from workbench.components.manager import get_plugin_manager
from workbench.components.registry import Registry, load_registry
from workbench.recipe.load import load_recipe

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "workbench-dcor"
PLUGINS_DOC = ROOT / "docs" / "plugins.md"


@pytest.fixture
def dcor_registry(monkeypatch, register_plugin, make_registry):
    """The built-ins plus the example package, imported from its source tree (no install needed)."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    import workbench_dcor

    register_plugin(workbench_dcor, "dcor-example")
    return make_registry()


def test_example_recipe_validates_with_the_example_plugin(dcor_registry):
    recipe = load_recipe(EXAMPLE / "recipes" / "dcor_digits.toml", registry=dcor_registry)
    assert recipe.target.backbone.use == "lenet5"
    measures = [v.defense.params.get("measure", {}).get("use") for v in recipe.variants]
    assert "dcor" in measures


def test_example_recipe_names_components_that_only_the_plugin_provides(plugin_manager):
    """Without the plugin the recipe is refused, so the test above really exercises it."""
    from workbench.errors import RecipeError

    with pytest.raises(RecipeError, match="lenet5"):
        load_recipe(EXAMPLE / "recipes" / "dcor_digits.toml", registry=Registry(plugin_manager))


def linear_cka_reference(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))


def test_plugins_dir_sample_from_the_guide_works(tmp_path):
    """The local-plugin file shown in docs/plugins.md, copied out of the doc, loads and is right."""
    sample = re.search(r"```python\n# research/(\w+\.py)\n(.*?)```", PLUGINS_DOC.read_text(), re.DOTALL)
    assert sample, "docs/plugins.md lost its --plugins-dir sample"
    (tmp_path / sample.group(1)).write_text(sample.group(2))
    registry = load_registry(plugins_dir=str(tmp_path))
    assert not [p for p in registry.problems if "linear_cka" in p]
    component = registry.get("dependency", "linear-cka")
    assert component.plugin == "linear_cka" and registry.manager.info["linear_cka"].source == "local"
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 6)), rng.normal(size=(30, 2))
    b[:, 0] += a[:, 0]
    measure = registry.create("dependency", "linear-cka")
    got = float(measure(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)))
    assert got == pytest.approx(linear_cka_reference(a, b), rel=1e-4)


def fake_installed_plugins(site: Path, names: list[str]) -> None:
    """What `pip install` leaves behind for discovery: a module and a dist-info with the entry point."""
    for name in names:
        (site / f"{name}_mod.py").write_text(
            textwrap.dedent(f"""
            from workbench.components.hookspecs import hookimpl
            from workbench.components.params import NoParams

            @hookimpl
            def register_metrics(register):
                register("{name}-metric", lambda params: object(), params=NoParams, summary="{name}")
        """)
        )
        dist_info = site / f"{name}-1.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (dist_info / "entry_points.txt").write_text(f"[workbench]\n{name} = {name}_mod\n")


def test_load_and_disable_variables_select_installed_plugins(tmp_path, monkeypatch):
    fake_installed_plugins(tmp_path, ["alpha", "beta"])
    monkeypatch.syspath_prepend(str(tmp_path))

    def metric_names() -> set[str]:
        return {n for n in Registry(get_plugin_manager()).names("metric") if n.endswith("-metric")}

    assert metric_names() == {"alpha-metric", "beta-metric"}
    info = get_plugin_manager().info["alpha"]
    assert (info.source, info.distribution, info.version) == ("entrypoint", "alpha", "1.0")
    monkeypatch.setenv("WORKBENCH_LOAD_PLUGINS", "beta")
    assert metric_names() == {"beta-metric"}
    monkeypatch.setenv("WORKBENCH_DISABLE_PLUGINS", "beta")
    assert metric_names() == set()
    monkeypatch.delenv("WORKBENCH_LOAD_PLUGINS")
    assert metric_names() == {"alpha-metric"}


def test_a_package_installed_after_the_first_manager_is_found_by_the_next(tmp_path, monkeypatch):
    """The entry points are read once while sys.path is unchanged (installed_entry_points): installing a
    distribution into a folder already on the path changes the folder, so the next manager finds it, and
    removing it is seen too."""
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "gamma" not in get_plugin_manager().info
    fake_installed_plugins(tmp_path, ["gamma"])
    assert get_plugin_manager().info["gamma"].distribution == "gamma"
    import shutil

    shutil.rmtree(tmp_path / "gamma-1.0.dist-info")
    assert "gamma" not in get_plugin_manager().info


def test_missing_plugins_dir_is_reported_by_path(tmp_path):
    manager = get_plugin_manager(entrypoints=False, plugins_dir=tmp_path / "nope")
    assert any(str(tmp_path / "nope") in p and "not a directory" in p for p in manager.problems)


class MeanConfidence:
    """An inline metric plugin, the way a plugin's own tests register one."""

    class Metric:
        section = "utility"

        def __init__(self, params):
            self.params = params

        @torch.no_grad()
        def evaluate(self, ctx) -> dict[str, float]:
            x = torch.stack([ctx.data.test[i][0] for i in range(len(ctx.data.test))]).to(ctx.device)
            return {"mean_confidence": float(ctx.model(x).softmax(1).max(1).values.mean())}

    @hookimpl
    def register_metrics(self, register):
        register("mean-confidence", self.Metric)


@pytest.mark.slow
def test_run_tiny_recipe_sees_inline_plugins(register_plugin, run_tiny_recipe):
    from workbench.testing import TINY_RECIPE

    register_plugin(MeanConfidence(), "mean-confidence")
    recipe = TINY_RECIPE + '\n[[metrics]]\nuse = "accuracy"\n\n[[metrics]]\nuse = "mean-confidence"\n'
    _, results = run_tiny_recipe(recipe)
    utility = results["variants"][0]["utility"]
    # Mean top-1 confidence is at least 1/5 on 5 classes and at most 1.
    assert 0.2 <= utility["mean_confidence"] <= 1.0 and utility["test_accuracy"] > 0.5
