"""The command line: every user error is one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workbench.cli import main
from workbench.testing import TINY_RECIPE


def invoke(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_clear_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("seed = 0", "seed = "), "malformed TOML"),
        (lambda t: t + "\n[evalution]\n", "unknown key 'evalution' (did you mean \"evaluation\"?)"),
        (lambda t: t.replace("batch_size = 64", "batch_size = \"big\""), "target.train.batch_size"),
        (lambda t: t.replace('use = "mcnn"', 'use = "mcn"'), "did you mean \"mcnn\""),
        (lambda t: t.replace("epochs = 5", "epochs = 0"), "target.train.epochs: must be a number of epochs from 1"),
        (lambda t: t.replace("batch_size = 64", "batch_size = -1"), "target.train.batch_size"),
    ],
    ids=["malformed", "unknown-table", "wrong-type", "unknown-component", "zero-epochs", "negative-batch"],
)
def test_bad_recipes_fail_with_one_line(tmp_path, monkeypatch, capsys, edit, expected):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(edit(TINY_RECIPE))
    code, _, err = invoke(monkeypatch, capsys, "run", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert code == 2
    line = one_clear_line(err)
    assert str(recipe) in line and expected in line
    assert not (tmp_path / "run").exists()

    code, _, err = invoke(monkeypatch, capsys, "recipes", "validate", str(recipe))
    assert code == 2 and expected in err and "Traceback" not in err


def test_bad_set_override_is_one_line(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE)
    code, _, err = invoke(monkeypatch, capsys, "recipes", "show", str(recipe), "--set", "target.train.epochs=-3")
    assert code == 2 and "target.train.epochs" in one_clear_line(err)


def test_recipes_show_new_schema(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE)
    code, out, _ = invoke(monkeypatch, capsys, "recipes", "show", str(recipe), "--set", "target.train.epochs=5")
    assert code == 0 and "epochs = 5" in out and "[target.train.optimizer]" in out
    code, out, _ = invoke(monkeypatch, capsys, "recipes", "new")
    assert code == 0 and out.startswith("# A workbench recipe")
    starter = tmp_path / "starter.toml"
    code, _, _ = invoke(monkeypatch, capsys, "recipes", "new", "--output", str(starter))
    assert code == 0 and starter.exists()
    code, _, err = invoke(monkeypatch, capsys, "recipes", "new", "--output", str(starter))
    assert code == 2 and "already exists" in one_clear_line(err)
    code, out, _ = invoke(monkeypatch, capsys, "recipes", "validate", str(starter))
    assert code == 0 and "ok" in out
    code, out, _ = invoke(monkeypatch, capsys, "recipes", "schema")
    assert code == 0 and json.loads(out)["title"] == "Recipe"


def test_plugins_list_json_rows(monkeypatch, capsys):
    code, out, _ = invoke(monkeypatch, capsys, "plugins", "list", "--json")
    rows = json.loads(out)
    assert code == 0
    bido = next(r for r in rows if r["kind"] == "defense" and r["name"] == "bido")
    assert bido["plugin"] == "workbench_defenses" and bido["summary"]
    assert {p["name"] for p in bido["params"]} >= {"measure", "lambda_x", "lambda_y", "layers"}
    assert {"kind", "name", "plugin", "summary", "params"} <= set(rows[0])
    code, out, _ = invoke(monkeypatch, capsys, "plugins", "list")
    assert code == 0 and "bido" in out and "ood_score" in out
    code, _, err = invoke(monkeypatch, capsys, "plugins", "list", "--kind", "defence")
    assert code == 2 and 'did you mean "defense"' in one_clear_line(err)


LOCAL_PLUGIN = (
    "from workbench.api import hookimpl\n\n\nclass Local:\n    '''A local set.'''\n\n\n"
    "@hookimpl\ndef register_metrics(register):\n    register('local-metric', Local)\n\n\n"
    "@hookimpl\ndef register_datasets(register):\n    register('local-set', Local)\n"
)


def test_plugins_dir_reaches_every_command_group_without_leaking_into_the_environment(tmp_path, monkeypatch,
                                                                                     capsys):
    """--plugins-dir is handed to the commands (plugins, data) explicitly; the documented variable
    is read as its default, and the option is not left behind in os.environ for later code."""
    import os

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "local.py").write_text(LOCAL_PLUGIN)
    monkeypatch.delenv("WORKBENCH_PLUGINS_DIR", raising=False)

    code, out, _ = invoke(monkeypatch, capsys, "--plugins-dir", str(folder), "plugins", "list", "--json")
    assert code == 0 and {"local-metric", "local-set"} <= {r["name"] for r in json.loads(out)}
    assert "WORKBENCH_PLUGINS_DIR" not in os.environ
    code, out, _ = invoke(monkeypatch, capsys, "--plugins-dir", str(folder), "data", "list", "--json")
    assert code == 0 and "local-set" in {r["name"] for r in json.loads(out)}
    code, out, _ = invoke(monkeypatch, capsys, "plugins", "list", "--json")
    assert code == 0 and "local-metric" not in {r["name"] for r in json.loads(out)}

    monkeypatch.setenv("WORKBENCH_PLUGINS_DIR", str(folder))
    code, out, _ = invoke(monkeypatch, capsys, "plugins", "list", "--kind", "metric", "--json")
    assert code == 0 and "local-metric" in {r["name"] for r in json.loads(out)}


def test_nproc_hands_the_main_options_and_the_run_options_to_every_rank(tmp_path, monkeypatch, capsys):
    """`--nproc N` starts torchrun with `-m workbench` and this command's options, --plugins-dir
    among them: the ranks get it on their command line, not through the environment."""
    import torch.distributed.run

    started = []
    monkeypatch.setattr(torch.distributed.run, "run", started.append)
    monkeypatch.setenv("LOGLEVEL", "ERROR")  # the launcher defaults these for torchrun; restored after the test
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    recipe, run_dir, plugins = tmp_path / "r.toml", tmp_path / "run", tmp_path / "plugins"
    code, _, err = invoke(monkeypatch, capsys, "--plugins-dir", str(plugins), "run", str(recipe), "--nproc", "2",
                          "--run-dir", str(run_dir), "--set", "seed=3", "--quiet", "--sink", "tensorboard")
    assert code == 0, err
    (args,) = started
    assert args.nproc_per_node == "2" and args.module and args.training_script == "workbench"
    assert args.training_script_args == ["--plugins-dir", str(plugins), "run", str(recipe), "--run-dir", str(run_dir),
                                         "--set", "seed=3", "--quiet", "--sink", "tensorboard"]


@pytest.mark.slow
def test_run_then_runs_list_and_show(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE)
    runs = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    code, out, err = invoke(monkeypatch, capsys, "run", str(recipe), "--run-dir", str(runs / "first"))
    assert code == 0, err
    assert "test acc" in out and "none" in out
    assert "[train none] epoch 5/5" in err  # plain progress lines when not a terminal
    code, out, _ = invoke(monkeypatch, capsys, "runs", "list", "--runs-dir", str(runs), "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0]["name"] == "first" and rows[0]["status"] == "finished"
    code, out, _ = invoke(monkeypatch, capsys, "runs", "show", str(runs / "first"))
    assert code == 0 and "finished" in out and "none" in out
    code, _, err = invoke(monkeypatch, capsys, "run", str(recipe), "--run-dir", str(runs / "first"))
    assert code == 1 and "--resume" in one_clear_line(err)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    """A real process: SIGINT during training leaves a resumable run; --resume completes it."""
    import signal
    import time

    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE.replace("epochs = 5", "epochs = 20"))
    run_dir = tmp_path / "run"
    env = {**__import__("os").environ, "WORKBENCH_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "workbench", "run", str(recipe), "--run-dir", str(run_dir)]
    # A shell starts a background job with SIGINT ignored, and Python keeps an inherited SIG_IGN (no
    # KeyboardInterrupt): Ctrl-C as a terminal sends it needs the default disposition, whatever ran pytest.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = run_dir / "none" / "last.safetensors"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and "--resume" in err
    events = (run_dir / "events.jsonl").read_text()
    assert '"run_interrupted"' in events
    shorter = subprocess.run(
        [sys.executable, "-m", "workbench", "run", str(run_dir), "--resume"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    # The saved recipe says 20 epochs; resuming continues from the checkpoint, not from zero.
    assert shorter.returncode == 0, shorter.stderr
    assert "(resumed)" in shorter.stderr
    assert json.loads((run_dir / "results.json").read_text())["variants"][0]["name"] == "none"


def test_terminal_progress_has_bars_for_epochs_and_for_steps_inside_stages():
    import io

    from rich.console import Console

    from workbench.cli.progress import ConsoleReporter

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with ConsoleReporter(console) as reporter:
        reporter({"type": "stage_started", "stage": "train", "variant": "none", "total": 5})
        reporter({"type": "epoch", "stage": "train", "variant": "none", "epoch": 2, "epochs": 5,
                  "metrics": {"loss": 0.5}})
        # A GAN prior reports steps under its own stage name, with no stage_started of that name.
        reporter({"type": "progress", "stage": "attack:gmi:gan", "variant": None, "step": 30, "total": 100})
        reporter({"type": "progress", "stage": "attack:kedmi", "variant": "none", "step": 7, "total": 300})
        bars = {task.description: (task.completed, task.total) for task in reporter.progress.tasks}
    assert bars == {"train none": (2, 5), "attack:gmi:gan": (30, 100), "attack:kedmi none": (7, 300)}
