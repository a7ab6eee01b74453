"""Recipes: strict structure, component params checked by their own models, every problem at once."""

from __future__ import annotations

import json

import pytest
import tomllib

from workbench import load_registry
from workbench.errors import RecipeError
from workbench.recipe.load import apply_overrides, load_recipe, recipe_hash, resolve
from workbench.recipe.template import STARTER_RECIPE
from workbench.recipe.write import json_schema, to_toml, update_toml_text

BASE = """\
seed = 1
[data]
use = "digits"
[target.backbone]
use = "mcnn"
[target.train]
epochs = 3
batch_size = 32
[[variants]]
name = "none"
defense = { use = "none" }
[[variants]]
name = "bido-hsic"
defense = { use = "bido", lambda_x = 0.05, lambda_y = 0.5, measure = { use = "hsic" } }
"""


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(tmp_path, text, registry, overrides=None):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text), overrides, registry)
    return info.value.problems


def test_valid_recipe_loads_with_defaults(tmp_path, registry):
    recipe = load_recipe(write(tmp_path, BASE), registry=registry)
    assert recipe.seed == 1
    assert recipe.target.train.epochs == 3
    assert recipe.target.train.optimizer.name == "adam"  # default
    assert [v.name for v in recipe.variants] == ["none", "bido-hsic"]


def test_shipped_and_starter_recipes_validate(tmp_path, registry):
    load_recipe(write(tmp_path, STARTER_RECIPE), registry=registry)
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].glob("recipes/*.toml")):
        load_recipe(path, registry=registry)


def test_malformed_toml_names_file_and_line(tmp_path, registry):
    problems = problems_of(tmp_path, "seed = \n[data", registry)
    assert len(problems) == 1 and "malformed TOML" in problems[0] and "line 1" in problems[0]


def test_missing_file(tmp_path, registry):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "nope.toml", registry=registry)


def test_unknown_table_and_key_suggest_nearest(tmp_path, registry):
    text = BASE.replace("[target.train]\nepochs = 3", "[target.train]\nepohcs = 3") + "\n[atacks]\n"
    problems = problems_of(tmp_path, text, registry)
    assert "unknown key 'target.train.epohcs' (did you mean \"epochs\"?)" in problems
    assert "unknown key 'atacks' (did you mean \"attacks\"?)" in problems


def test_wrong_type_and_nonpositive_counts_all_reported_at_once(tmp_path, registry):
    text = BASE.replace("epochs = 3", "epochs = 0").replace("batch_size = 32", "batch_size = -4")
    text = text.replace("seed = 1", 'seed = "one"')
    problems = problems_of(tmp_path, text, registry)
    joined = "\n".join(problems)
    assert "target.train.epochs: must be a number of epochs from 1 to 100,000 (got 0)" in joined
    assert "target.train.batch_size: must be a batch size from 1 to 65,536 (got -4)" in joined
    assert "seed:" in joined
    assert len(problems) == 3


def test_unknown_component_and_bad_component_params(tmp_path, registry):
    text = BASE.replace('use = "mcnn"', 'use = "mcn"').replace("lambda_x = 0.05", "lambda_x = -1, lamda_y = 2")
    text = text.replace('measure = { use = "hsic" }', 'measure = { use = "hsic", kernel_a = "rbf" }')
    problems = problems_of(tmp_path, text, registry)
    joined = "\n".join(problems)
    assert 'target.backbone.use: unknown backbone \'mcn\' (did you mean "mcnn"?)' in joined
    assert "variants[1].defense.lambda_x" in joined
    assert "unknown key 'variants[1].defense.lamda_y'" in joined


def test_nested_component_params_are_checked(tmp_path, registry):
    text = BASE.replace('measure = { use = "hsic" }', 'measure = { use = "hsic", sigma = -5 }')
    problems = problems_of(tmp_path, text, registry)
    assert any(p.startswith("variants[1].defense.measure.sigma") for p in problems)
    text = BASE.replace('measure = { use = "hsic" }', 'measure = { use = "hsc" }')
    problems = problems_of(tmp_path, text, registry)
    assert any("variants[1].defense.measure.use: unknown dependency 'hsc'" in p for p in problems)


def test_duplicate_variant_names_rejected(tmp_path, registry):
    text = BASE.replace('name = "bido-hsic"', 'name = "none"')
    assert any("repeated: none" in p for p in problems_of(tmp_path, text, registry))


def test_overrides_by_path_index_and_variant_name(tmp_path, registry):
    path = write(tmp_path, BASE)
    recipe = load_recipe(path, ["target.train.epochs=7", "variants.bido-hsic.defense.lambda_y=2.5",
                                "variants.0.name=\"plain\"", "title=hello world"], registry)
    assert recipe.target.train.epochs == 7
    assert recipe.variants[1].defense.params["lambda_y"] == 2.5
    assert recipe.variants[0].name == "plain"
    assert recipe.title == "hello world"  # not TOML: taken as a string
    problems = problems_of(tmp_path, BASE, registry, ["target.train.epochs=-1"])
    assert any("target.train.epochs" in p for p in problems)
    with pytest.raises(RecipeError, match="no item 'nope'"):
        apply_overrides(tomllib.loads(BASE), ["variants.nope.name=x"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        apply_overrides({}, ["novalue"])


def test_resolve_fills_component_defaults_and_round_trips(tmp_path, registry):
    recipe = load_recipe(write(tmp_path, BASE), registry=registry)
    resolved = resolve(recipe, registry)
    bido = resolved["variants"][1]["defense"]
    assert bido["use"] == "bido" and bido["measure"]["use"] == "hsic"
    assert bido["measure"]["sigma"] == 5.0  # the measure's default, filled in
    again = resolve(load_recipe(write(tmp_path, to_toml(resolved, "resolved"), "again.toml"), registry=registry),
                    registry)
    assert again == resolved
    assert recipe_hash(again) == recipe_hash(resolved)


def test_update_toml_text_keeps_comments_and_order(registry):
    text = "# my experiment\nseed = 1  # lucky\n\n[data]\n# the embedded set\nuse = \"digits\"\n"
    updated = update_toml_text(text, {"seed": 2, "data": {"use": "digits", "image_size": 32}})
    assert "# my experiment" in updated and "# lucky" in updated and "# the embedded set" in updated
    assert tomllib.loads(updated) == {"seed": 2, "data": {"use": "digits", "image_size": 32}}
    assert updated.index("seed") < updated.index("[data]")


def test_json_schema_lists_registered_components(registry):
    schema = json_schema(registry)
    json.dumps(schema)
    defense = schema["$defs"]["DefenseComponent"]
    names = {option["properties"]["use"]["const"] for option in defense["oneOf"]}
    assert {"none", "bido", "mid"} <= names
    bido = next(o for o in defense["oneOf"] if o["title"] == "bido")
    assert "λx" in bido["properties"]["lambda_x"]["description"]
    # The nested measure table is narrowed to registered dependency measures too.
    assert bido["properties"]["measure"]["$ref"] == "#/$defs/DependencyComponent"
    measures = {o["title"] for o in schema["$defs"]["DependencyComponent"]["oneOf"]}
    assert {"hsic", "hsic-biased", "coco"} <= measures


# ------------------------------------------------------------------ validated once, every problem at once


def _problems(tmp_path, text: str) -> list[str]:
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry=load_registry())
    return info.value.problems


def test_a_top_level_typo_does_not_hide_a_component_param_problem(tmp_path):
    problems = _problems(tmp_path, BASE.replace("seed = 1", "sed = 1").replace("lambda_x = 0.05", "lambda_z = 0.05"))
    assert "unknown key 'sed' (did you mean \"seed\"?)" in problems
    assert any(p.startswith("unknown key 'variants[1].defense.lambda_z' (did you mean") for p in problems)


def test_component_params_get_did_you_mean_like_recipe_keys(tmp_path):
    problems = _problems(tmp_path, BASE.replace('measure = { use = "hsic" }', 'measure = { use = "hsic", sigmma = 2 }'))
    assert problems == ["unknown key 'variants[1].defense.measure.sigmma' (did you mean \"sigma\"?)"]


@pytest.mark.parametrize("name", ["a.b", "../x", "recipe.toml", "figures", "x" * 65, ".hidden", "a/b"])
def test_names_that_become_paths_follow_one_rule(tmp_path, name):
    variant = _problems(tmp_path, BASE.replace('name = "none"', f'name = "{name}"'))
    assert len(variant) == 1 and variant[0].startswith("variants[0].name")
    ood = _problems(tmp_path, BASE + f'[ood.test_sets."{name}"]\nuse = "noise"\n')
    assert len(ood) == 1 and ood[0].startswith(f"ood.test_sets.{name}")


@pytest.mark.parametrize("setting, key", [
    ("seed = -1", "seed"), ("seed = 9223372036854775808", "seed"),
    ("seed = 1\n[target.train.optimizer]\nbetas = [1.5, 2]", "target.train.optimizer.betas"),
    ("seed = 1\n[target.train.optimizer]\nlr = inf", "target.train.optimizer.lr"),
])
def test_out_of_range_numbers_are_one_line_naming_the_key(tmp_path, setting, key):
    text = BASE.replace("seed = 1", setting).replace("[target.train]\n", "[target.train]\n", 1)
    if "[target.train.optimizer]" in setting:  # the optimizer table after target.train's keys
        text = BASE + setting.split("\n", 1)[1] + "\n"
    problems = _problems(tmp_path, text)
    assert problems and all(p.startswith(key) for p in problems)


def test_component_params_reject_infinite_weights(tmp_path):
    problems = _problems(tmp_path, BASE.replace("lambda_x = 0.05", "lambda_x = inf"))
    assert problems == ["variants[1].defense.lambda_x: Input should be a finite number (got inf)"]


def test_params_are_validated_once_and_kept_typed_on_the_table(tmp_path, monkeypatch):
    path = tmp_path / "r.toml"
    path.write_text(BASE)
    registry = load_registry()
    recipe = load_recipe(path, registry=registry)
    component = registry.get("defense", "bido")
    calls = []
    original = component.params.model_validate
    monkeypatch.setattr(component.params, "model_validate", lambda *a, **k: calls.append(1) or original(*a, **k))
    table = recipe.variants[1].defense
    assert table.config.lambda_x == 0.05 and table.config.measure.config.sigma == 5.0
    resolve(recipe, registry)
    defense = registry.create_from("defense", table)
    assert calls == [] and defense.params is table.config


def test_a_component_that_breaks_its_kinds_contract_is_named_with_its_plugin(register_plugin, make_registry):
    from workbench.api import hookimpl
    from workbench.errors import WorkbenchError

    class NotAnAttack:
        def __init__(self, params):
            self.params = params

    class Plugin:
        @hookimpl
        def register_attacks(self, register):
            register("broken", NotAnAttack)

    register_plugin(Plugin(), "broken-plugin")
    with pytest.raises(WorkbenchError, match=r"attack 'broken' \(plugin 'broken-plugin'\).*has no run"):
        make_registry().create("attack", "broken")
