"""Damaged run directories: one bad line or entry never crashes a reader; a damaged variant is redone."""

from __future__ import annotations

import json
import sys

import pytest

from workbench.cli import main
from workbench.runs import clean_results, list_runs, read_variant_results, summarize
from workbench.testing import TINY_RECIPE


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    monkeypatch.setenv("COLUMNS", "200")
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
    from workbench.tui.runs import read_results

    assert [v["name"] for v in read_results(damaged_runs / "wrong-types")] == ["none", "bido-hsic"]
    assert read_results(damaged_runs / "results-a-list") == []
    running = tmp_path / "running"
    (running / "none").mkdir(parents=True)
    (running / "none" / "results.json").write_text('{"utility": {"test_accuracy": 0.5}, "attacks": 3}')
    (running / "mid").mkdir()
    (running / "mid" / "results.json").write_text('{"name": "mid", "util')  # being written
    assert read_results(running) == [{"name": "none", "utility": {"test_accuracy": 0.5}}]


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
