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

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

try:
    from hypothesis import HealthCheck, assume, given, seed, settings
    from hypothesis import strategies as st
except ImportError:  # the dev extra has it; without it the regressions still run
    st = None

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


# ------------------------------------------------------------------ what the fuzzer found


@pytest.mark.parametrize("key", ["\\u001e", "\\n", "a\\u2028b"])
def test_a_key_that_does_not_print_is_shown_escaped_in_one_line(tmp_path, monkeypatch, capsys, key):
    """Found by test_fuzz_every_shipped_recipe_validates_or_is_one_line_per_problem (seed 31): an OOD
    test set named "\\x1e" (a record separator, which splits lines as a newline does) was shown raw
    in the key path, so one problem read as two lines."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE + f'\n[ood.test_sets."{key}"]\nuse = 0\n')
    code, _, err = invoke(monkeypatch, capsys, "recipes", "validate", str(recipe))
    lines = err.strip().splitlines()
    assert code != 0 and lines and all(line.startswith(str(recipe)) for line in lines), err
    assert any("ood.test_sets.'" in line for line in lines), err  # the key quoted and escaped


@pytest.mark.parametrize("value", ["-1", '"variants.0.name=x"', "{a = 1}"])
def test_sweep_whose_overrides_is_not_a_list_is_one_line(tmp_path, monkeypatch, capsys, value):
    """Found by test_fuzz_every_shipped_sweep_loads_or_is_one_line (seed 31): `overrides = -1` in a
    sweep file ended in `TypeError: Value after * must be an iterable, not int`."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'recipe = "tiny.toml"\nseeds = "0-1"\noverrides = {value}\n')
    code, _, err = invoke(monkeypatch, capsys, "sweep", str(sweep), "--sweep-dir", str(tmp_path / "s"))
    assert code == 2
    assert "overrides" in one_line(err) and str(sweep) in one_line(err)
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ the fuzzer (slow lane)
#
# Values: type-aware (the same type, at its edges) and type-breaking (any other type), including
# huge, negative, NaN, empty, unicode and path-like values; the path-like ones point into an
# `outside` folder that must stay empty. Mutations: set any key (tables and list items too), delete
# one, add an unknown one, replace a table by a value. `--set` overrides get the same values.

FUZZ_SEED = int(os.environ.get("WORKBENCH_FUZZ_SEED", "31"))
FUZZ_EXAMPLES = int(os.environ.get("WORKBENCH_FUZZ_EXAMPLES", "0"))
"""0: each test's own budget (a few minutes in all on 2 cores); more to run it longer by hand."""
RUN_TIMEOUT = 240
"""Seconds a tiny-budget run may take before it counts as a hang (a loaded 2-core machine: ~15 s)."""

SWEEPS = sorted((Path(__file__).parent.parent / "recipes" / "sweeps").glob("*.toml"))

HOSTILE_INTS = [0, -1, 1, 2, 3, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 10**30, -(10**30)]
HOSTILE_FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324, 1e-30, 0.5, -0.5, 1.5, 1e9]


def hostile_strings(outside: Path) -> list[str]:
    return ["", " ", "x", "none", "mcnn", "digits", "accuracy", "adam", "auto", "cpu", "cuda",
            str(outside / "escape"), str(outside / "escape.safetensors"), "../outside/escape", "../../../../tmp",
            "~", "~/escape", "/", "/dev/zero", "/proc/self/mem", ".", "..", "runs", "events.jsonl",
            "nul\x00byte", "é" * 70, "a" * 5000, "日本語", "\u202eevil", "C:\\windows", "-rf", "*", "$(touch pwned)",
            "none; rm -rf /", "0-99999999999", "0-3", "1,2,,3", "nan", "inf", "true", "{}", "[]"]


def _settings(default: int, **extra: Any):
    """Fixed seed and example budget; no example database (nothing written into the repository)."""
    def wrap(test):
        test = settings(max_examples=FUZZ_EXAMPLES or default, deadline=None, database=None, print_blob=True,
                        suppress_health_check=list(HealthCheck), **extra)(test)
        return seed(FUZZ_SEED)(test)
    return wrap


def values(outside: Path, like: Any = None):
    """A value for a key that held `like`: mostly type-aware (same type, at its edges), else anything."""
    ints = st.one_of(st.sampled_from(HOSTILE_INTS), st.integers(-3, 3))
    floats = st.one_of(st.sampled_from(HOSTILE_FLOATS), st.floats(-10, 10, allow_nan=False))
    strings = st.one_of(st.sampled_from(hostile_strings(outside)), st.text(max_size=12))
    scalars = st.one_of(ints, floats, strings, st.booleans())
    anything = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=6), scalars,
                                                                                   max_size=2))
    if isinstance(like, bool):
        aware = st.one_of(st.booleans(), st.sampled_from([0, 1, "true"]))
    elif isinstance(like, int):
        aware = ints
    elif isinstance(like, float):
        aware = floats
    elif isinstance(like, str):
        aware = strings
    elif isinstance(like, list):
        aware = st.lists(scalars, max_size=3)
    else:
        aware = anything
    return st.one_of(aware, aware, anything)


def key_paths(raw: Any, path: tuple = ()) -> list[tuple]:
    """Every key path of a TOML document: tables, list items and values."""
    found = [path] if path else []
    if isinstance(raw, dict):
        for key, value in raw.items():
            found += key_paths(value, (*path, key))
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            found += key_paths(value, (*path, i))
    return found


def _get(raw: Any, path: tuple) -> Any:
    for part in path:
        raw = raw[part]
    return raw


@st.composite if st else (lambda f: f)
def mutated(draw, raw: dict, outside: Path) -> dict:
    """`raw` with one to three mutations anywhere."""
    raw = json.loads(json.dumps(raw))  # a deep copy (TOML data is JSON data, dates aside)
    for _ in range(draw(st.integers(1, 3))):
        paths = key_paths(raw)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _get(raw, path[:-1]), path[-1]
        op = draw(st.sampled_from(["set", "set", "set", "delete", "unknown", "scalar-for-table"]))
        if op == "set":
            parent[last] = draw(values(outside, parent[last]))
        elif op == "delete" and isinstance(parent, dict):
            del parent[last]
        elif op == "unknown" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values(outside))
        elif op == "scalar-for-table" and isinstance(parent[last], (dict, list)):
            parent[last] = draw(values(outside))
    return raw


def toml_text(raw: dict) -> str | None:
    """`raw` as TOML, or None when TOML cannot hold it (a NUL in a key, a value tomlkit refuses)."""
    from workbench.recipe.write import to_toml

    try:
        text = to_toml(raw)
        tomllib.loads(text)
    except Exception:  # noqa: BLE001 (not the property under test: the writer of the test's input)
        return None
    return text


def overrides(outside: Path, raw: dict):
    """`--set key=value` items over the recipe's keys (and unknown ones), values as TOML or raw text."""
    keys = [".".join(str(p) for p in path) for path in key_paths(raw)] or ["title"]
    value_text = st.one_of(values(outside).map(_toml_literal), st.sampled_from(hostile_strings(outside)))
    item = st.builds(lambda k, v: f"{k}={v}", st.one_of(st.sampled_from(keys), st.text(max_size=10)), value_text)
    return st.lists(st.one_of(item, st.sampled_from(["", "=", "x", "=1", "..=1", "a..b=1", "variants.99.name=x"])),
                    max_size=3)


def _toml_literal(value: Any) -> str:
    try:
        return tomllib.loads("v = " + json.dumps(value)) and json.dumps(value)
    except (ValueError, TypeError):
        return str(value)


def check_outcome(code: int, err: str, *, files: list[str] | None = None, many: bool = False) -> None:
    """The property: success, or a non-zero exit whose every stderr line names a problem; never a
    traceback. `files`: the recipe files the lines must name (`recipes validate` lists every problem);
    `many`: one line per problem, each `where: what` (`recipes validate` of several files)."""
    assert "Traceback" not in err, err
    assert "RecursionError" not in err and "MemoryError" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if code == 0:
        return
    assert lines, f"exit {code} without a word"
    if "Usage:" in err or "─ Error ─" in err:  # the command line itself is wrong: Click's usage/error box
        assert code == 2 and "Error" in err, err
        return
    if files:
        assert all(line.startswith("error:") or any(f in line for f in files) for line in lines), err
    elif many:
        assert all(": " in line for line in lines), err
    else:
        assert len(lines) == 1, err


@contextlib.contextmanager
def nothing_written_outside(*folders: Path, allowed: tuple[Path, ...] = ()):
    """Fails when any file or folder appears in `folders` other than under `allowed`."""
    before = {folder: {p for p in folder.rglob("*")} for folder in folders}
    yield
    for folder in folders:
        new = {p for p in folder.rglob("*")} - before[folder]
        stray = sorted(str(p) for p in new if not any(p == a or p.is_relative_to(a) for a in allowed))
        assert not stray, f"written outside the run and cache directories: {stray[:5]}"


@pytest.fixture
def fuzz_dirs(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(work folder, the `outside` folder that must stay empty); the cache and HOME are in the work folder."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "home").mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(work / "cache"))
    monkeypatch.setenv("HOME", str(work / "home"))
    return work, outside


@pytest.mark.slow
@pytest.mark.skipif(st is None, reason="hypothesis is in the dev extra")
def test_fuzz_every_shipped_recipe_validates_or_is_one_line_per_problem(fuzz_dirs, monkeypatch, capsys):
    """Every shipped recipe, mutated anywhere and overridden with `--set`: `recipes validate` and
    `recipes show` succeed or name each problem, with no traceback and nothing written."""
    work, outside = fuzz_dirs
    bases = [tomllib.loads(path.read_text()) for path in RECIPES]

    @_settings(400)
    @given(data=st.data())
    def check(data):
        base = data.draw(st.sampled_from(bases))
        raw = data.draw(mutated(base, outside))
        text = toml_text(raw)
        assume(text is not None)
        recipe = work / "fuzzed.toml"
        recipe.write_text(text)
        with nothing_written_outside(work, outside, allowed=(recipe,)):
            code, _, err = invoke(monkeypatch, capsys, "recipes", "validate", str(recipe))
            check_outcome(code, err, files=[str(recipe)])
            sets = data.draw(overrides(outside, base))
            code, _, err = invoke(monkeypatch, capsys, "recipes", "show", str(recipe),
                                  *[arg for item in sets for arg in ("--set", item)])
            check_outcome(code, err)

    check()


@pytest.mark.slow
@pytest.mark.skipif(st is None, reason="hypothesis is in the dev extra")
def test_fuzz_every_shipped_sweep_loads_or_is_one_line(fuzz_dirs, monkeypatch):
    """Every shipped sweep file, mutated (its recipe path kept absolute): loading it succeeds or is a
    WorkbenchError (one line), never another exception."""
    from workbench import load_registry
    from workbench.errors import WorkbenchError
    from workbench.sweeps.spec import load_sweep

    work, outside = fuzz_dirs
    registry = load_registry()
    bases = []
    for path in SWEEPS:
        raw = tomllib.loads(path.read_text())
        if isinstance(raw.get("recipe"), str):
            raw["recipe"] = str((path.parent / raw["recipe"]).resolve())
        bases.append(raw)

    @_settings(150)
    @given(data=st.data())
    def check(data):
        raw = data.draw(mutated(data.draw(st.sampled_from(bases)), outside))
        text = toml_text(raw)
        assume(text is not None)
        sweep = work / "fuzzed-sweep.toml"
        sweep.write_text(text)
        with nothing_written_outside(work, outside, allowed=(sweep,)):
            try:
                load_sweep(sweep, registry=registry)
            except WorkbenchError as exc:
                assert str(exc).strip() and "Traceback" not in str(exc)

    check()


CLI_COMMANDS = [
    ["recipes", "validate"], ["recipes", "show"], ["recipes", "new"], ["recipes", "schema"],
    ["plugins", "list"], ["runs", "list"], ["runs", "show"], ["cache", "list"], ["data", "list"], ["data", "show"],
    ["export"], ["run"], ["sweep"],
]
CLI_OPTIONS = ["--set", "--run-dir", "--runs-dir", "--cache-dir", "--sink", "--to", "--kind", "--json", "--seeds",
               "--nproc", "--workers", "--executor", "--resume", "--force", "--output", "-o", "--stage", "--help",
               "--quiet", "--sweep-dir", "--plugins-dir", "--version", "--bogus"]


@pytest.mark.slow
@pytest.mark.skipif(st is None, reason="hypothesis is in the dev extra")
def test_fuzz_command_line_arguments_are_one_line(fuzz_dirs, monkeypatch, capsys):
    """Any command with any arguments, options and values (`run` and `sweep` only on inputs that are
    refused before anything trains: a missing or broken recipe, a bad option value): success, Click's
    usage error, or one line; no traceback, nothing written outside the work folder's run and cache."""
    work, outside = fuzz_dirs
    (work / "broken.toml").write_text("title = \n")
    (work / "tiny.toml").write_text(TINY_RECIPE)
    (work / "somefile").write_text("not a run")
    (work / "afolder").mkdir()
    arguments = st.one_of(st.sampled_from(hostile_strings(outside)), st.text(max_size=10),
                          st.sampled_from(["broken.toml", "tiny.toml", "somefile", "afolder", "nope.toml", "-1",
                                           "999999999999999999999", "digits", "mcnn", "attack", "backbone"]))

    @_settings(250)
    @given(command=st.sampled_from(CLI_COMMANDS), rest=st.lists(st.one_of(st.sampled_from(CLI_OPTIONS), arguments),
                                                                 max_size=5))
    def check(command, rest):
        if command[0] in ("run", "sweep"):
            # Only inputs refused up front: anything that would start training is left to the run test.
            rest = ["broken.toml" if command[0] == "run" else "nope.toml", *rest]
        with nothing_written_outside(work, outside, allowed=(work / "runs", work / "cache", work / "home")):
            code, _, err = invoke(monkeypatch, capsys, *command, *rest)
        check_outcome(code, err, many=command == ["recipes", "validate"])

    check()


TINY_KEYS = ["title", "seed", "device", "data.use", "data.image_size", "target.backbone.use", "target.backbone.width",
             "target.backbone.padding", "target.backbone.dropout", "target.train.epochs", "target.train.batch_size",
             "target.train.optimizer.lr", "target.train.optimizer.name", "target.train.optimizer.momentum",
             "target.train.schedule.milestones", "target.train.grad_clip", "variants.0.name", "variants.0.defense.use",
             "metrics.0.use", "data.private_classes"]


@pytest.mark.slow
@pytest.mark.skipif(st is None, reason="hypothesis is in the dev extra")
def test_fuzz_tiny_budget_runs_finish_or_fail_in_one_line(fuzz_dirs, tmp_path):
    """The tiny recipe (one epoch), one or two keys set to hostile values, run in a subprocess: it
    finishes, or exits non-zero with one line; never a traceback, never past RUN_TIMEOUT (a hang),
    never a file outside the run and cache directories. Large but valid budgets are not drawn (they
    are slow, not wrong): the values are the hostile ones, which the bounds refuse."""
    work, outside = fuzz_dirs
    base = TINY_RECIPE.replace("epochs = 5", "epochs = 1")
    counter = iter(range(10**6))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WORKBENCH_CACHE_DIR": str(work / "cache"),
           "HOME": str(work / "home"), "MPLCONFIGDIR": str(work / "home" / "mpl")}

    @_settings(8)
    @given(data=st.data())
    def check(data):
        keys = data.draw(st.lists(st.sampled_from(TINY_KEYS), min_size=1, max_size=2, unique=True))
        sets = [f"{key}={_toml_literal(data.draw(values(outside, _get_key(base, key))))}" for key in keys]
        run_dir = work / "runs" / f"r{next(counter)}"
        (work / "tiny.toml").write_text(base)
        with nothing_written_outside(work, outside, allowed=(work / "runs", work / "cache", work / "home")):
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "workbench", "run", "tiny.toml", "--run-dir", str(run_dir), "--quiet",
                     "--workers", "1", *[arg for item in sets for arg in ("--set", item)]],
                    cwd=work, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a run with {sets} did not end within {RUN_TIMEOUT} s (a hang)")
        check_outcome(done.returncode, done.stderr)
        if done.returncode == 0:
            assert (run_dir / "results.json").is_file(), sets

    check()


def _get_key(text: str, dotted: str) -> Any:
    node: Any = tomllib.loads(text)
    with contextlib.suppress(KeyError, IndexError, TypeError):
        for part in dotted.split("."):
            node = node[int(part)] if part.isdigit() else node[part]
        return node
    return None


# ------------------------------------------------------------------ the attacks' own int params

BOUNDED_ATTACK_MODULES = ("brepmi", "deepinversion", "evaluators_metrics", "gmi", "ifgmi", "kedmi", "lomma", "miface",
                          "mirror", "plgmi", "ppa", "vmi")
"""The attack plugin modules whose int params carry a range of their own (the newest attacks, LOKT,
RL-BMI and C2FMI, and the shared toolkit's budgets keep the ±2³¹−1 safety net for now)."""


def _own_int_fields(model: type) -> dict[str, dict]:
    """The int params a class of `workbench_attacks.<BOUNDED_ATTACK_MODULES>` declares itself, with
    their JSON Schema."""
    schema = model.model_json_schema()["properties"]
    own = {}
    for cls in model.__mro__:
        module = getattr(cls, "__module__", "")
        if module.split(".")[0] != "workbench_attacks" or module.split(".")[-1] not in BOUNDED_ATTACK_MODULES:
            continue
        for name in getattr(cls, "__annotations__", {}):
            if "seed" in name:  # a label, not a quantity a run loops over or allocates
                continue
            field = schema.get(name, {})
            types = [field, *field.get("anyOf", [])]
            if any(t.get("type") == "integer" for t in types):
                own.setdefault(name, next(t for t in types if t.get("type") == "integer"))
    return own


def test_attack_int_params_carry_a_range_a_run_can_honour():
    """Every iteration, restart, step, width and batch-size param of these attacks is bounded well below
    the ±2³¹−1 safety net (the range shows in the JSON Schema and `plugins list`)."""
    from workbench import load_registry

    registry = load_registry()
    checked = {}
    for name in registry.names("attack") + registry.names("metric"):
        kind = "attack" if name in registry.names("attack") else "metric"
        for field, schema in _own_int_fields(registry.get(kind, name).params).items():
            checked[f"{name}.{field}"] = schema
    assert len(checked) > 60, sorted(checked)  # the modules above declare that many
    unbounded = {k: s for k, s in checked.items() if s.get("maximum", 2**31) > 10_000_000 or "minimum" not in s}
    assert not unbounded, unbounded


@pytest.mark.parametrize(("key", "message"), [
    ("iterations=100000000", "iterations: must be a number of steps from 1 to 10,000,000"),
    ("restarts=0", "restarts: must be an integer from 1 to 1,000,000"),
    ("samples_per_class=2000000", "samples_per_class: must be an integer from 1 to 1,000,000"),
    ("loss_batch=100000", "loss_batch: must be a batch size from 1 to 65,536"),
    ("gan_width=3", "gan_width: must be a width from 4 to 65,536"),
])
def test_huge_attack_params_name_key_and_range(tiny, monkeypatch, capsys, key, message):
    tiny.write_text(TINY_RECIPE + '\n[attacks.plg]\nuse = "plg-mi"\n[attacks.g]\nuse = "gmi"\n')
    attack = "plg" if key.startswith("gan_width") else "g"
    code, _, err = invoke(monkeypatch, capsys, "recipes", "show", str(tiny), "--set", f"attacks.{attack}.{key}")
    assert code == 2
    assert f"attacks.{attack}.{message}" in one_line(err)
