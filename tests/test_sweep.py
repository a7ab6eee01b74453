"""Sweeps: the sweep file and its validation, expansion, statistics checked against scipy, the
report and Pareto plot, and tiny sweeps end to end (resume, kill and rerun, failures)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from workbench.errors import RecipeError
from workbench.storage.events import read_events
from workbench.sweeps import SweepOptions, load_sweep, parse_seeds, run_sweep
from workbench.sweeps.aggregate import aggregate, pareto_front, pareto_plot, render_report, verdict
from workbench.sweeps.spec import expand_points, point_labels
from workbench.sweeps.stats import paired, summarize, t_quantile
from workbench.testing import TINY_RECIPE

FAST = TINY_RECIPE.replace("epochs = 5", "epochs = 1")


def write(tmp_path: Path, sweep: str, recipe: str = FAST) -> Path:
    (tmp_path / "recipe.toml").write_text(recipe)
    path = tmp_path / "sweep.toml"
    path.write_text(sweep)
    return path


# ------------------------------------------------------------------ statistics


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 30, 200])
def test_t_quantile_matches_scipy(df):
    from scipy import stats

    for p in (0.975, 0.9, 0.6, 0.025):
        assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-9)


def test_summary_matches_numpy_and_scipy_student_t():
    from scipy import stats

    values = [0.61, 0.52, 0.74, 0.58, 0.49]
    s = summarize(values)
    mean, std = np.mean(values), np.std(values, ddof=1)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=std / math.sqrt(len(values)))
    assert s["n"] == 5 and s["mean"] == pytest.approx(mean) and s["std"] == pytest.approx(std)
    assert s["ci95"] == pytest.approx([lo, hi])
    # Worked by hand: t(0.975, 4) = 2.776445; half width = 2.776445 * std / sqrt(5).
    assert s["ci95"][1] - mean == pytest.approx(2.776445105 * std / math.sqrt(5), rel=1e-8)


def test_summary_edge_cases():
    one = summarize([0.3])
    assert one["n"] == 1 and one["mean"] == 0.3 and one["std"] is None and one["ci95"] == [None, None]
    gaps = summarize([0.2, None, float("nan"), 0.4])
    assert gaps["n"] == 2 and gaps["mean"] == pytest.approx(0.3) and gaps["values"] == [0.2, None, None, 0.4]
    assert summarize([])["mean"] is None


def test_paired_differences_use_only_seeds_with_both_values():
    from scipy import stats

    defended, baseline = [0.35, 0.30, None, 0.41], [0.60, 0.52, 0.70, 0.66]
    d = paired(defended, baseline)
    diffs = np.array([0.35 - 0.60, 0.30 - 0.52, 0.41 - 0.66])
    lo, hi = stats.t.interval(0.95, 2, loc=diffs.mean(), scale=diffs.std(ddof=1) / math.sqrt(3))
    assert d["n"] == 3 and d["mean"] == pytest.approx(diffs.mean()) and d["ci95"] == pytest.approx([lo, hi])
    assert verdict(d).startswith("lowers by 0.240 [")
    assert verdict(summarize([0.1, -0.1, 0.05])).startswith("no difference")
    assert verdict(summarize([0.1, 0.12, 0.11])).startswith("raises by 0.110")


# ------------------------------------------------------------------ the sweep file


def test_seed_ranges():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert parse_seeds("3") == [3]
    with pytest.raises(ValueError):
        parse_seeds("4-0")


def test_points_have_short_stable_names():
    assert point_labels(["variants.a.defense.lambda_x", "variants.b.defense.lambda_x", "seedless.lr"]) == {
        "variants.a.defense.lambda_x": "a.defense.lambda_x",
        "variants.b.defense.lambda_x": "b.defense.lambda_x", "seedless.lr": "lr"}
    points = expand_points({"variants.x.defense.lambda_x": [0.05, 0.5], "target.train.epochs": [1, 2]})
    assert [p.id for p in points] == ["lambda_x=0.05_epochs=1", "lambda_x=0.05_epochs=2",
                                      "lambda_x=0.5_epochs=1", "lambda_x=0.5_epochs=2"]
    assert points[1].overrides == ["variants.x.defense.lambda_x=0.05", "target.train.epochs=2"]
    assert [p.id for p in expand_points({})] == ["base"]


def test_sweep_expands_points_times_seeds(tmp_path):
    path = write(tmp_path, 'recipe = "recipe.toml"\nseeds = "0-2"\n[grid]\n"target.train.optimizer.lr" = [0.001, 0.01]\n')
    sweep = load_sweep(path)
    assert [r.id for r in sweep.runs] == ["lr=0.001-s0", "lr=0.001-s1", "lr=0.001-s2",
                                          "lr=0.01-s0", "lr=0.01-s1", "lr=0.01-s2"]
    assert sweep.runs[4].recipe.seed == 1 and sweep.runs[4].recipe.target.train.optimizer.lr == 0.01
    assert len({r.digest for r in sweep.runs}) == 6
    # --set reaches the sweep file (seeds, grid, executor) or, for any other path, every run's recipe.
    again = load_sweep(path, ["seeds=0-1", "executor.workers=3", "target.train.epochs=2"])
    assert [r.seed for r in again.runs] == [0, 1, 0, 1]
    assert again.spec.executor.params == {"workers": 3}
    assert all(r.recipe.target.train.epochs == 2 for r in again.runs)
    assert load_sweep(path, executor="inline").spec.executor.use == "inline"


def test_every_problem_is_reported_at_once_with_did_you_mean(tmp_path):
    path = write(tmp_path, '''recipe = "recipe.toml"
seedz = [1]
[grid]
"variants.nonee.defense.lambda_x" = [0.1]
"target.train.optimizer.lrr" = [0.1]
[executor]
use = "procesess"
''')
    with pytest.raises(RecipeError) as info:
        load_sweep(path)
    problems = info.value.problems
    assert problems == [
        "unknown key 'seedz' (did you mean \"seeds\"?)",
        "executor.use: unknown executor 'procesess' (did you mean \"processes\"?)",
        "grid 'variants.nonee.defense.lambda_x': no variant named 'nonee' (did you mean \"none\"?)",
        "grid 'target.train.optimizer.lrr': no key 'lrr' in target.train.optimizer (did you mean \"lr\"?)",
    ]


def test_every_expanded_point_is_validated_before_anything_runs(tmp_path):
    path = write(tmp_path, 'recipe = "recipe.toml"\nseeds = [0, 1]\n[grid]\n"target.train.epochs" = [1, 0, -1]\n')
    with pytest.raises(RecipeError) as info:
        load_sweep(path)
    assert len(info.value.problems) == 2
    assert info.value.problems[0].startswith("point epochs=0: target.train.epochs:")
    assert not (tmp_path / "runs").exists()


def test_missing_recipe_and_bad_grid_values(tmp_path):
    path = write(tmp_path, 'recipe = "nowhere.toml"\n')
    with pytest.raises(RecipeError, match="file not found"):
        load_sweep(path)
    path = write(tmp_path, 'recipe = "recipe.toml"\nseeds = [1, 1]\n[grid]\n"seed" = [1]\n"a.b" = []\n')
    with pytest.raises(RecipeError) as info:
        load_sweep(path)
    text = " | ".join(info.value.problems)
    assert "seeds repeat: 1" in text and "seeds go in `seeds`" in text and "'a.b': no values" in text


# ------------------------------------------------------------------ aggregate, report, plot


def fake_results(acc: float, top1: float, defended_top1: float) -> dict:
    return {"variants": [
        {"name": "none", "utility": {"test_accuracy": acc}, "attacks": {"gmi": {"top1": top1, "top5": 1.0}},
         "ood": {"score": "msp", "mean": {"fpr95": 0.3}}},
        {"name": "bido-coco", "utility": {"test_accuracy": acc - 0.01},
         "attacks": {"gmi": {"top1": defended_top1, "top5": 0.9}}, "ood": {"score": "msp", "mean": {"fpr95": 0.6}}},
    ]}


def test_aggregate_over_seeds_with_paired_differences():
    results = {0: fake_results(0.99, 0.60, 0.35), 1: fake_results(0.98, 0.52, 0.30),
               2: fake_results(0.97, 0.70, 0.41), 3: None}
    data = aggregate([{"id": "base", "values": {}, "seeds": [0, 1, 2, 3], "results": results}])
    point = data["points"][0]
    assert point["seeds"] == [0, 1, 2] and point["missing"] == [3]
    none, coco = point["variants"]
    assert set(none["figures"]) == {"utility.test_accuracy", "attacks.gmi.top1", "attacks.gmi.top5", "ood.mean.fpr95"}
    top1 = none["figures"]["attacks.gmi.top1"]
    assert top1["values"] == [0.60, 0.52, 0.70] and top1["mean"] == pytest.approx(0.60666, abs=1e-4)
    assert top1["std"] == pytest.approx(np.std([0.60, 0.52, 0.70], ddof=1))
    diff = coco["paired"]["figures"]["attacks.gmi.top1"]
    assert diff["values"] == pytest.approx([-0.25, -0.22, -0.29]) and diff["ci95"][1] < 0
    report = render_report(data, {"recipe": "r.toml", "seeds": [0, 1, 2, 3], "grid": {}, "executor": "inline",
                                  "finished": 3, "total": 4}, {"base-s3": "RunError: boom"})
    # Rounded to fit the std: 0.010 keeps two significant digits (leading 1), 0.090 one.
    assert "| none | 0.980 ± 0.010 (3) | 0.61 ± 0.09 (3) |" in report
    assert "lowers by 0.253 [" in report and "`base-s3`: RunError: boom" in report
    assert "Missing seeds (not finished): 3" in report


def test_pareto_front_and_plot():
    assert pareto_front([(0.9, 0.5), (0.95, 0.6), (0.8, 0.6), (0.85, 0.3)]) == [3, 0, 1]
    results = {s: fake_results(0.99 - s / 100, 0.6 + s / 50, 0.3 + s / 40) for s in range(3)}
    data = aggregate([{"id": "lambda_x=0.1", "values": {"x": 0.1}, "seeds": [0, 1, 2], "results": results}])
    image = pareto_plot(data)
    assert image.size == (640, 400)
    # The defended model is less accurate but much less exposed: both are on the front.
    assert image.info["front"] == ["bido-coco lambda_x=0.1", "none lambda_x=0.1"]
    empty = pareto_plot({"points": []})
    assert empty.size == (640, 400)


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_tiny_sweep_end_to_end_then_resume_skips_everything(tmp_path, isolated_cache):
    path = write(tmp_path, 'recipe = "recipe.toml"\nseeds = [0, 1]\n[executor]\nuse = "inline"\n')
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(SweepOptions(sweep=path, sweep_dir=sweep_dir, cache_dir=isolated_cache,
                                    overrides=["target.train.batch_size=32"]))
    assert result.finished == ["base-s0", "base-s1"] and not result.failed
    assert "batch_size = 32" in (sweep_dir / "runs" / "base-s1" / "recipe.toml").read_text()
    for name in ("sweep.toml", "sweep.json", "events.jsonl", "aggregate.json", "report.md", "report.html", "pareto.png"):
        assert (sweep_dir / name).exists(), name
    for run in ("base-s0", "base-s1"):
        assert json.loads((sweep_dir / "runs" / run / "results.json").read_text())["seed"] == int(run[-1])
    figures = result.aggregate["points"][0]["variants"][0]["figures"]["utility.test_accuracy"]
    single = [json.loads((sweep_dir / "runs" / r / "results.json").read_text())["variants"][0]["utility"]
              ["test_accuracy"] for r in ("base-s0", "base-s1")]
    assert figures["values"] == single and figures["n"] == 2
    types = [e["type"] for e in read_events(sweep_dir)]
    assert types[0] == "sweep_started" and types[-1] == "sweep_finished"
    assert types.count("sweep_run_queued") == 2 and types.count("sweep_run_finished") == 2
    before = (sweep_dir / "aggregate.json").read_text()
    # Again without --resume: refused; with it: nothing to do, same aggregate.
    with pytest.raises(Exception, match="--resume"):
        run_sweep(SweepOptions(sweep=path, sweep_dir=sweep_dir, cache_dir=isolated_cache,
                               overrides=["target.train.batch_size=32"]))
    again = run_sweep(SweepOptions(sweep=sweep_dir, resume=True, cache_dir=isolated_cache))
    assert again.skipped == ["base-s0", "base-s1"] and (sweep_dir / "aggregate.json").read_text() == before
    # A different sweep in the same directory is refused unless --force moves the old one aside.
    with pytest.raises(Exception, match="different sweep"):
        run_sweep(SweepOptions(sweep=path, sweep_dir=sweep_dir, overrides=["seeds=0-2"], resume=True,
                               cache_dir=isolated_cache))


@pytest.mark.slow
def test_a_failed_run_does_not_stop_the_others_and_is_retried(tmp_path, isolated_cache, monkeypatch):
    """Seed 0's run fails at its end (inline executor: in this process); seed 1 still finishes; the
    rerun resumes seed 0 from its checkpoints and completes it."""
    from workbench.running import stages

    path = write(tmp_path, 'recipe = "recipe.toml"\nseeds = [0, 1]\n[executor]\nuse = "inline"\n')
    sweep_dir = tmp_path / "sweep"
    original = stages.collect_results

    def failing(ctx, shared):
        if ctx.run_dir.name == "base-s0":
            raise RuntimeError("boom")
        return original(ctx, shared)

    monkeypatch.setattr(stages, "collect_results", failing)
    result = run_sweep(SweepOptions(sweep=path, sweep_dir=sweep_dir, cache_dir=isolated_cache))
    assert result.finished == ["base-s1"] and result.failed == {"base-s0": "RuntimeError: boom"}
    events = list(read_events(sweep_dir))
    assert [e["run"] for e in events if e["type"] == "sweep_run_failed"] == ["base-s0"]
    assert "`base-s0`: RuntimeError: boom" in (sweep_dir / "report.md").read_text()
    assert result.aggregate["points"][0]["missing"] == [0]
    monkeypatch.setattr(stages, "collect_results", original)
    again = run_sweep(SweepOptions(sweep=sweep_dir, resume=True, cache_dir=isolated_cache))
    assert again.skipped == ["base-s1"] and again.finished == ["base-s0", "base-s1"] and not again.failed
    queued = [e for e in read_events(sweep_dir) if e["type"] == "sweep_run_queued"][-1]
    assert queued["run"] == "base-s0" and queued["resume"] is True and queued["previous"] == "failed"


@pytest.mark.slow
def test_run_seeds_shorthand(tmp_path, isolated_cache):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(FAST)
    env = {**os.environ, "WORKBENCH_CACHE_DIR": str(isolated_cache)}
    proc = subprocess.run([sys.executable, "-m", "workbench", "run", str(recipe), "--seeds", "0-1",
                           "--run-dir", str(tmp_path / "seeds"), "--quiet", "--set", "target.train.batch_size=32"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "seeds" / "runs").iterdir()) == ["base-s0", "base-s1"]
    assert "batch_size = 32" in (tmp_path / "seeds" / "runs" / "base-s1" / "recipe.toml").read_text()
    assert "mean ± std (n) over seeds" in proc.stdout


@pytest.mark.slow
def test_killed_sweep_rerun_gives_the_same_aggregate_as_an_uninterrupted_one(tmp_path):
    """kill -9 the sweep mid-way (its workers die with it); --resume finishes; aggregate.json is the
    same byte for byte as a sweep that ran straight through (in its own cache)."""
    recipe = FAST.replace("epochs = 1", "epochs = 3")
    path = write(tmp_path, 'recipe = "recipe.toml"\nseeds = "0-2"\n[executor]\nuse = "processes"\nworkers = 1\n'
                 '[grid]\n"target.train.optimizer.lr" = [0.002]\n', recipe)

    def sweep(sweep_dir: Path, cache: str, *extra: str) -> subprocess.Popen:
        env = {**os.environ, "WORKBENCH_CACHE_DIR": str(tmp_path / cache)}
        return subprocess.Popen([sys.executable, "-m", "workbench", "sweep", str(path), "--sweep-dir",
                                 str(sweep_dir), "--quiet", *extra], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)

    straight = sweep(tmp_path / "straight", "cache-a")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()
    killed_dir = tmp_path / "killed"
    proc = sweep(killed_dir, "cache-b")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill once a run has finished and the next is training
        types = [e["type"] for e in read_events(killed_dir)]
        if types.count("sweep_run_finished") >= 1 and (killed_dir / "runs" / "lr=0.002-s1" / "events.jsonl").exists():
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed_dir / "aggregate.json").exists()
    resumed = sweep(killed_dir, "cache-b", "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    events = list(read_events(killed_dir))
    assert sum(e["type"] == "sweep_run_skipped" for e in events) >= 1
    assert (killed_dir / "aggregate.json").read_text() == (tmp_path / "straight" / "aggregate.json").read_text()


def test_shipped_sweeps_validate():
    root = Path(__file__).parents[1] / "recipes" / "sweeps"
    seeds = load_sweep(root / "bido_plus_seeds.toml")
    assert [r.id for r in seeds.runs] == [f"base-s{s}" for s in range(5)]
    # The stages no defense or seed changes are keyed on the recipe's seed: shared by all runs.
    assert {"evaluation.seed=0", "attacks.gmi.prior_seed=0"} <= set(seeds.runs[3].overrides)
    curve = load_sweep(root / "bido_hsic_lambda.toml")
    assert len(curve.points) == 4 and len(curve.runs) == 12
    assert [v.name for v in curve.runs[0].recipe.variants] == ["none", "bido-hsic"]


def test_a_variant_the_grid_does_not_touch_is_one_marker():
    def results(lam):
        return {s: {"variants": [
            {"name": "none", "utility": {"test_accuracy": 0.99 - s / 200}, "attacks": {"gmi": {"top1": 0.6 + s / 30}}},
            {"name": "bido-hsic", "utility": {"test_accuracy": 0.99 - lam / 10 - s / 150},
             "attacks": {"gmi": {"top1": 0.6 - lam * 0.6 + s / 25}}}]} for s in range(3)}

    data = aggregate([{"id": f"lambda_x={lam}", "values": {"x": lam}, "seeds": [0, 1, 2], "results": results(lam)}
                      for lam in (0.1, 0.5)])
    assert pareto_plot(data).info["front"] == ["bido-hsic lambda_x=0.5", "bido-hsic lambda_x=0.1", "none"]


def test_cli_lists_every_problem_one_line_each(tmp_path, monkeypatch, capsys):
    from workbench.cli import main

    path = write(tmp_path, 'recipe = "recipe.toml"\nseedz = [1]\n[executor]\nuse = "procesess"\n')
    monkeypatch.setattr(sys, "argv", ["workbench", "sweep", str(path)])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning")]
    assert len(lines) == 2 and "did you mean \"seeds\"" in lines[0] and "did you mean \"processes\"" in lines[1]
    monkeypatch.setattr(sys, "argv", ["workbench", "run", str(tmp_path / "recipe.toml"), "--seeds", "4-0"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2 and "runs backwards" in capsys.readouterr().err
