"""Damaged run directories: one bad line or entry never crashes a reader; a damaged variant is redone."""

from __future__ import annotations

import json
import sys

import pytest

from workbench.cli import main
from workbench.storage.runs import clean_results, list_runs, read_variant_results, summarize
from workbench.testing import TINY_RECIPE


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("WORKBENCH_PLUGINS_DIR", raising=False)  # --plugins-dir sets it; undone after the test
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


BAD_RESULTS = {"variants": [
    1,
    {"utility": []},
    {"name": 3, "attacks": [1]},
    {"name": "none", "utility": {"test_accuracy": "high"}, "attacks": {"gmi": 5, "kedmi": {"top1": 0.3}}, "ood": "x"},
    {"name": "bido-hsic", "utility": {"test_accuracy": 0.9}},
]}


@pytest.fixture
def damaged_runs(tmp_path):
    runs = tmp_path / "runs"
    for name, events, results in [
        ("wrong-types", '{"type":"run_started","t":"yesterday","recipe":5,"variants":7}\nnot json\n[1, 2]\n'
                        '{"type":"run_failed","t":null,"error":{"x":1}}\n', BAD_RESULTS),
        ("results-not-a-list", '{"type":"run_started","t":1.0,"recipe":"a.toml","variants":["a"]}\n',
         {"variants": {"a": 1}}),
        ("results-a-list", '{"type":"run_started","t":2.0,"recipe":"b.toml","variants":["b"]}\n', [1, 2]),
        ("half-a-line", '{"type":"run_started","t":3.0,"recipe":"c.toml","variants":["c"]}\n{"type": "ep', None),
    ]:
        (runs / name).mkdir(parents=True)
        (runs / name / "events.jsonl").write_text(events)
        if results is not None:
            (runs / name / "results.json").write_text(json.dumps(results))
    return runs


def test_runs_list_and_show_survive_bad_lines_and_entries(damaged_runs, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "runs", "list", "--runs-dir", str(damaged_runs))
    assert code == 0 and "Traceback" not in err
    for name in ("wrong-types", "results-not-a-list", "results-a-list", "half-a-line"):
        assert name in out
    assert "bido-hsic 0.900" in out
    code, out, err = _cli(monkeypatch, capsys, "runs", "list", "--runs-dir", str(damaged_runs), "--json")
    assert code == 0 and len(json.loads(out)) == 4
    for name in ("wrong-types", "results-not-a-list", "results-a-list", "half-a-line"):
        code, out, err = _cli(monkeypatch, capsys, "runs", "show", str(damaged_runs / name))
        assert code == 0 and "Traceback" not in err, name
    info = summarize(damaged_runs / "wrong-types")
    assert info.started is None and info.recipe == "" and info.variants == [] and info.status == "failed"
    assert [r.name for r in list_runs(damaged_runs)][:3] == ["half-a-line", "results-a-list", "results-not-a-list"]


def test_clean_results_keeps_good_entries_only():
    cleaned = clean_results(BAD_RESULTS)
    assert [v["name"] for v in cleaned["variants"]] == ["none", "bido-hsic"]
    assert cleaned["variants"][0]["attacks"] == {"kedmi": {"top1": 0.3}} and "ood" not in cleaned["variants"][0]
    assert clean_results([1]) is None and clean_results({"variants": "x"}) is None


def test_tui_results_reader_survives_bad_entries(damaged_runs, tmp_path):
    from workbench.tui.results import read_results

    assert [v["name"] for v in read_results(damaged_runs / "wrong-types")] == ["none", "bido-hsic"]
    assert read_results(damaged_runs / "results-a-list") == []
    running = tmp_path / "running"
    (running / "none").mkdir(parents=True)
    (running / "none" / "results.json").write_text('{"utility": {"test_accuracy": 0.5}, "attacks": 3}')
    (running / "mid").mkdir()
    (running / "mid" / "results.json").write_text('{"name": "mid", "util')  # being written
    assert read_results(running) == [{"name": "none", "utility": {"test_accuracy": 0.5}}]


@pytest.mark.slow
def test_resume_redoes_a_variant_whose_results_are_truncated(run_tiny_recipe):
    recipe = TINY_RECIPE.replace("epochs = 5", "epochs = 2")
    run_dir, first = run_tiny_recipe(recipe)
    variant = run_dir / "none" / "results.json"
    variant.write_text(variant.read_text()[:40])
    assert read_variant_results(run_dir / "none") is None
    _, again = run_tiny_recipe(recipe, run_dir=run_dir, resume=True)
    assert again["variants"][0]["utility"] == first["variants"][0]["utility"]
    assert read_variant_results(run_dir / "none")["name"] == "none"
    events = (run_dir / "events.jsonl").read_text()
    assert "evaluating the variant again" in events


# ------------------------------------------------------------------ broken plugins, one line each


def test_a_plugin_calling_sys_exit_at_import_is_named_and_the_rest_keep_working(tmp_path, monkeypatch, capsys):
    from workbench.components.manager import get_plugin_manager

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "quitter.py").write_text("import sys\nsys.exit(3)\n")
    (folder / "fine.py").write_text(
        "from workbench.api import NoParams, hookimpl\n\n\nclass Tiny:\n    '''A fine metric.'''\n\n\n"
        "@hookimpl\ndef register_metrics(register):\n    register('fine-metric', Tiny)\n")
    manager = get_plugin_manager(entrypoints=False, plugins_dir=folder)
    (problem,) = manager.problems
    assert "quitter.py" in problem and "sys.exit(3)" in problem and "fine" in manager.info

    import workbench.components.manager

    class Quitter:
        name, value, dist = "quitter-ep", "quitter_pkg:plugin", None

        def load(self):
            raise SystemExit(1)

    monkeypatch.setattr(workbench.components.manager, "installed_entry_points", lambda: (Quitter(),))
    manager = get_plugin_manager()
    assert any("'quitter-ep'" in p and "sys.exit(1)" in p for p in manager.problems)
    code, out, err = _cli(monkeypatch, capsys, "--plugins-dir", str(folder), "plugins", "list")
    assert code == 0 and "fine-metric" in out and "quitter.py" in err and "Traceback" not in err


def test_a_plugin_registering_params_dict_is_left_out_with_one_line(register_plugin, make_registry):
    from workbench.api import hookimpl

    class Sloppy:
        @hookimpl
        def register_metrics(self, register):
            register("sloppy", lambda params: None, params=dict)
            register("fine", lambda params: None)

    register_plugin(Sloppy(), "sloppy-plugin")
    registry = make_registry()
    (problem,) = [p for p in registry.problems if "sloppy" in p]
    assert "params=dict" in problem and "pydantic model class" in problem
    assert "sloppy" not in registry.names("metric") and "fine" in registry.names("metric")


@pytest.mark.parametrize("returns", ["vector", "float"])
def test_a_measure_breaking_its_contract_is_one_line_naming_plugin_and_component(
        register_plugin, make_registry, returns):
    import torch

    from workbench.api import hookimpl
    from workbench.errors import WorkbenchError

    class Measure:
        """A third-party measure that returns the wrong thing."""

        def __init__(self, params):
            pass

        def __call__(self, a, b):
            per_sample = (a.sum(1) * b.sum(1))
            return per_sample if returns == "vector" else float(per_sample.mean())

    class Plugin:
        @hookimpl
        def register_dependency_measures(self, register):
            register("wrong-shape", Measure)

    register_plugin(Plugin(), "acme-measures")
    registry = make_registry()
    defense = registry.create("defense", "bido", measure={"use": "wrong-shape"})
    x, y = torch.rand(8, 1, 4, 4), torch.arange(8) % 2
    logits, hiddens = torch.randn(8, 2, requires_grad=True), [torch.randn(8, 5)]
    with pytest.raises(WorkbenchError) as info:
        defense.loss(x=x, y=y, logits=logits, hiddens=hiddens, model=None)
    message = str(info.value)
    assert "'wrong-shape'" in message and "'acme-measures'" in message and "0-d tensor" in message
    assert ("shape [8]" if returns == "vector" else "a float") in message and "\n" not in message


PLAIN_DEFENSE = '''
from workbench.api import Defense, LossOutput, cross_entropy, hookimpl

LABEL_SMOOTHING = {smoothing}


class Plain(Defense):
    """A third-party defense: cross-entropy."""

    def __init__(self, params):
        pass

    def loss(self, *, x, y, logits, hiddens, model):
        ce = cross_entropy(logits, y)
        return LossOutput(ce, {{"ce": float(ce.detach())}})


@hookimpl
def register_defenses(register):
    register("acme-plain", Plain)
'''


@pytest.mark.slow
def test_a_third_party_defense_edited_is_retrained_not_reloaded(tmp_path, register_plugin, run_tiny_recipe):
    """End to end: the same recipe twice reloads the target from the stage cache; after the
    plugin's source changes (version not bumped), the target is trained again."""
    import importlib.util

    source = tmp_path / "acme_defense.py"
    source.write_text(PLAIN_DEFENSE.format(smoothing=0.0))
    spec = importlib.util.spec_from_file_location("acme_defense", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    register_plugin(module, "acme-defense")
    recipe = TINY_RECIPE.replace("epochs = 5", "epochs = 1").replace('{ use = "none" }', '{ use = "acme-plain" }')

    def trained_again(run_dir) -> bool:
        events = (run_dir / "events.jsonl").read_text()
        return "target loaded from the stage cache" not in events

    first, _ = run_tiny_recipe(recipe)
    assert trained_again(first)
    second, _ = run_tiny_recipe(recipe)
    assert not trained_again(second)
    source.write_text(PLAIN_DEFENSE.format(smoothing=0.1))  # the plugin edited
    third, _ = run_tiny_recipe(recipe)
    assert trained_again(third)


# ------------------------------------------------------------------ the TUI's cancel


def _sleeper(*argv: str):
    import subprocess

    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv], start_new_session=True)


def test_cancel_never_signals_a_process_that_is_not_the_run(tmp_path):
    """run.json's pid now held by another process: refused by start time when run.json has one,
    by command line when it has none; the process is not signalled either way."""
    from workbench.errors import WorkbenchError
    from workbench.storage.runs import process_start
    from workbench.tui.demo import write_run
    from workbench.tui.launch import cancel_run

    stranger = _sleeper()  # e.g. the user's editor, which got the pid after the run died
    try:
        run_dir = write_run(tmp_path / "old", status="running", pid=stranger.pid)  # no start time recorded
        with pytest.raises(WorkbenchError, match="not a workbench process.*not signalled"):
            cancel_run(run_dir)
        info = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**info, "pid_started": "1"}))  # the run started earlier
        with pytest.raises(WorkbenchError, match="not running|another time"):
            cancel_run(run_dir)
        assert stranger.poll() is None  # still alive: never signalled
        # The same process with its start time recorded is the run, whatever its command line.
        (run_dir / "run.json").write_text(json.dumps({**info, "pid_started": process_start(stranger.pid)}))
        assert cancel_run(run_dir) == stranger.pid
        assert stranger.wait(timeout=20) == -15
    finally:
        if stranger.poll() is None:
            stranger.kill()
            stranger.wait()


# ------------------------------------------------------------------ plain output, one line per message


def test_plain_output_never_hard_wraps_at_80_columns(tmp_path, monkeypatch, capsys):
    import io

    from rich.console import Console

    from workbench.cli.progress import ConsoleReporter

    buffer = io.StringIO()
    reporter = ConsoleReporter(Console(file=buffer))  # not a terminal: 80 columns
    long_message = "the evaluation model was loaded from " + "/a/rather/long/cache/path" * 8
    with reporter:
        reporter({"type": "log", "level": "warning", "message": long_message})
        reporter({"type": "epoch", "stage": "train", "variant": "bido-coco+-with-a-long-name", "epoch": 3,
                  "epochs": 20, "metrics": {"loss": 1.0, "ce": 0.5, "train_accuracy": 0.9, "test_accuracy": 0.8,
                                            "ood_loss": 0.1, "dep_x/0": 0.2, "dep_y/0": 0.3}})
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2 and lines[0] == f"warning: {long_message}" and len(lines[1]) > 80

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "broken_plugin_with_a_long_name.py").write_text("raise ImportError('" + "x" * 120 + "')\n")
    code, out, err = _cli(monkeypatch, capsys, "--plugins-dir", str(folder), "plugins", "list")
    warning = [line for line in err.splitlines() if "broken_plugin_with_a_long_name" in line]
    assert code == 0 and len(warning) == 1 and "x" * 120 in warning[0]


def test_recipes_new_into_a_missing_folder_is_one_clear_line(tmp_path, monkeypatch, capsys):
    for target in (tmp_path / "nonexistent" / "x.toml", tmp_path / "afile" / "x.toml"):
        (tmp_path / "afile").write_text("")
        code, out, err = _cli(monkeypatch, capsys, "recipes", "new", "-o", str(target))
        assert code and "does not exist or is not a folder" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_a_recipe_that_is_not_a_file_never_hangs(tmp_path, monkeypatch, capsys, kind):
    import os

    path = {"device": "/dev/zero", "fifo": str(tmp_path / "fifo"), "folder": str(tmp_path)}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    code, out, err = _cli(monkeypatch, capsys, "recipes", "validate", path)
    assert code and "not a recipe file" in (out + err) and "Traceback" not in err
    if kind != "folder":  # a folder is how `run` resumes a run directory
        code, out, err = _cli(monkeypatch, capsys, "run", path)
        assert code and "not a recipe file" in err and len(err.strip().splitlines()) == 1


def test_run_dir_or_cache_dir_that_is_a_file_is_one_clear_line(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    code, out, err = _cli(monkeypatch, capsys, "run", str(recipe), "--run-dir", str(blocker))
    assert code and "is a file" in err and len(err.strip().splitlines()) == 1
    code, out, err = _cli(monkeypatch, capsys, "run", str(recipe), "--run-dir", str(tmp_path / "run"),
                          "--cache-dir", str(blocker))
    assert code and "is a file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_non_dict_run_json_on_resume_is_one_clear_line(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.toml").write_text(TINY_RECIPE)
    (run_dir / "events.jsonl").write_text('{"type": "run_started", "t": 1.0}\n')
    (run_dir / "run.json").write_text("[1, 2, 3]")
    code, out, err = _cli(monkeypatch, capsys, "run", str(run_dir), "--resume")
    assert code and "run.json" in err and "--force" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ bit flips, end to end


def _flip(path, offset=-3):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_bit_flips_in_cache_entries_and_run_checkpoints_end_to_end(run_tiny_recipe, isolated_cache, tmp_path):
    """A flipped cache entry is named in the run's events and recomputed (same figures); a
    flipped training checkpoint in a run directory is refused with the way forward."""
    from workbench.errors import WorkbenchError

    recipe = TINY_RECIPE.replace("epochs = 5", "epochs = 2")
    first, results = run_tiny_recipe(recipe)
    (entry,) = (isolated_cache / "target").glob("*.safetensors")
    _flip(entry)
    second, again = run_tiny_recipe(recipe)
    events = (second / "events.jsonl").read_text()
    assert f"stage cache entry {entry}: corrupt checkpoint (checksum mismatch); removed, recomputing it" in events
    assert again["variants"][0]["utility"] == results["variants"][0]["utility"]

    # The run directory: an unfinished variant whose training state was damaged.
    for name in ("results.json", "target.safetensors"):
        (second / "none" / name).unlink()
    (second / "results.json").unlink()
    last = second / "none" / "last.safetensors"
    _flip(last)
    with pytest.raises(WorkbenchError) as info:
        run_tiny_recipe(recipe, run_dir=second, resume=True, cache_dir=tmp_path / "empty-cache")
    message = str(info.value)
    assert str(last) in message and "checksum mismatch" in message and "--resume" in message
    assert "--force" in message and "\n" not in message
    last.unlink()  # the way forward: the variant trains again from scratch
    _, resumed = run_tiny_recipe(recipe, run_dir=second, resume=True, cache_dir=tmp_path / "empty-cache")
    assert resumed["variants"][0]["utility"] == results["variants"][0]["utility"]


# ------------------------------------------------------------------ GAN priors: whole or not at all


def test_a_prior_entry_holding_only_some_keys_is_retrained_from_fresh_weights(tmp_path):
    """An entry with the generator but not the critic used to load the generator, fail on the
    critic, and train the 'new' prior from the half-loaded weights."""
    import torch

    from workbench.api import AttackContext
    from workbench.attack_toolkit import load_or_train
    from workbench.storage.cache import StageCache

    cache = StageCache(tmp_path)
    key = {"gan": {"z_dim": 4}, "public": "abc", "seed": 0}
    # A partial entry (no critic) under the key load_or_train looks up (it adds the thread count).
    cache.save_state("gmi-gan", {**key, "threads": torch.get_num_threads()},
                     {"generator.weight": torch.full((3, 4), 7.0), "generator.bias": torch.ones(3)})

    torch.manual_seed(0)
    generator, critic = torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)
    fresh = {k: v.clone() for k, v in generator.state_dict().items()}
    seen = {}

    def train():
        seen.update({k: v.clone() for k, v in generator.state_dict().items()})
        return {"steps": 1.0}

    ctx = AttackContext(target=None, data=None, evaluation_model=None, device=torch.device("cpu"), seed=0, cache=cache)
    hit = load_or_train(ctx, "gmi", "gmi-gan", key, {"generator": generator, "critic": critic}, train)
    assert not hit and seen and all(torch.equal(seen[k], fresh[k]) for k in fresh)
    # The retrained prior replaced the partial entry and now loads whole.
    torch.manual_seed(1)
    again = {"generator": torch.nn.Linear(4, 3), "critic": torch.nn.Linear(3, 1)}
    assert load_or_train(ctx, "gmi", "gmi-gan", key, again, lambda: pytest.fail("retrained a whole entry"))
    assert torch.equal(again["generator"].weight, generator.weight)


def test_a_damaged_reconstructions_file_is_named_and_recomputed(tmp_path):
    import torch

    from workbench import load_registry
    from workbench.api import AttackResult
    from workbench.running.evaluation import run_attack
    from workbench.storage.cache import StageCache

    class CountingAttack:
        runs = 0

        def run(self, ctx):
            CountingAttack.runs += 1
            g = torch.Generator().manual_seed(0)
            return AttackResult(images=torch.rand(4, 1, 16, 16, generator=g), targets=torch.arange(4),
                                figures={"top1": 0.25})

    data = load_registry().create("dataset", "digits").load(0)
    target = torch.nn.Linear(3, 2)
    events = []

    def attack(cache_dir):
        return run_attack("fake", CountingAttack(), target, data, None, torch.device("cpu"), 0,
                          StageCache(cache_dir), tmp_path / "none", lambda type, **f: events.append((type, f)))

    first = attack(None)
    saved = tmp_path / "none" / "reconstructions" / "fake.safetensors"
    assert CountingAttack.runs == 1 and attack(None).figures == first.figures and CountingAttack.runs == 1
    _flip(saved)
    again = attack(None)
    assert CountingAttack.runs == 2 and torch.equal(again.images, first.images)
    (warning,) = [f["message"] for t, f in events if t == "log" and f.get("level") == "warning"]
    assert str(saved) in warning and "checksum mismatch" in warning and "again" in warning


@pytest.mark.asyncio
async def test_tui_runs_and_results_screens_survive_damaged_runs(damaged_runs, tmp_path):
    """The runs screen lists every damaged run; the results screen shows the good entries only."""
    from textual.widgets import DataTable

    from test_tui import make_app, registry, wait_for  # noqa: F401
    from workbench.components.manager import get_plugin_manager
    from workbench.components.registry import Registry
    from workbench.tui.results import ResultsScreen

    app = make_app(damaged_runs, Registry(get_plugin_manager(entrypoints=False)), tmp_path)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("2")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 4)
        await app.push_screen(ResultsScreen([damaged_runs / name for name in
                                             ("wrong-types", "results-not-a-list", "results-a-list")]))
        await pilot.pause(0.2)
        results = app.screen.query_one(DataTable)
        assert [results.get_row_at(i)[1] for i in range(results.row_count)] == ["none", "bido-hsic"]
        await pilot.press("q")
