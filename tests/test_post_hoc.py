"""Post-hoc defenses (Gaussian noise, Purifier) declare `DefenseCapabilities(post_hoc=True)`, and every
place a variant's figures are read says so: results.json, report.md, report.html, the TUI's results,
the terminal and sweep tables; a trained defense's variant carries no such mark."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from workbench.api import DefenseCapabilities
from workbench.components.capabilities import capabilities_of
from workbench.reporting.columns import variant_label
from workbench.sweeps.aggregate import aggregate, render_report

TRAINED = ("none", "bido", "mid", "negls", "tl-dmi", "random-erasing", "trap-mid", "dp-sgd", "rolss", "sca", "at-at")


def test_the_post_hoc_defenses_declare_it_and_the_trained_ones_do_not(make_registry):
    registry = make_registry()
    for name in ("gaussian-noise", "purifier"):
        assert registry.get("defense", name).capabilities() == DefenseCapabilities(post_hoc=True)
    for name in TRAINED:
        assert registry.get("defense", name).capabilities() == DefenseCapabilities(), name
    # Random erasing takes the declaration of the defense it holds: around Gaussian noise it is post-hoc.
    around_noise = registry.create("defense", "random-erasing", defense={"use": "gaussian-noise"})
    assert capabilities_of(around_noise, "defense").post_hoc
    assert not capabilities_of(registry.create("defense", "random-erasing"), "defense").post_hoc


def test_plugins_list_shows_the_declaration(monkeypatch, capsys):
    from test_cli import invoke

    code, out, _ = invoke(monkeypatch, capsys, "plugins", "list", "--json", "--kind", "defense")
    rows = {r["name"]: r["capabilities"] for r in json.loads(out)}
    assert code == 0 and rows["gaussian-noise"] == {"post_hoc": True} and rows["none"] == {"post_hoc": False}
    code, out, _ = invoke(monkeypatch, capsys, "plugins", "list", "--kind", "defense")
    assert code == 0 and not out.lstrip().startswith("[")  # the table, not the --json rows
    assert out.count("[post_hoc]") == 2  # gaussian-noise and purifier, shown as text (not eaten as markup)


POST_HOC_VARIANTS = """
[[variants]]
name = "noise"
defense = { use = "gaussian-noise" }

[[variants]]
name = "negls"
defense = { use = "negls" }
"""


@pytest.mark.slow
def test_a_post_hoc_variant_is_marked_in_results_and_reports(run_tiny_recipe, shared_trained_stages):
    from workbench.testing import TINY_RECIPE
    from workbench.tui.results import results_rows

    run_dir, results = run_tiny_recipe(TINY_RECIPE + POST_HOC_VARIANTS, workers=1)
    by_name = {v["name"]: v for v in results["variants"]}
    assert by_name["noise"]["defense"] == {"use": "gaussian-noise", "post_hoc": True}
    assert "defense" not in by_name["none"] and "defense" not in by_name["negls"]
    saved = json.loads((run_dir / "results.json").read_text())
    assert [v.get("defense", {}).get("post_hoc", False) for v in saved["variants"]] == [False, True, False]
    own = json.loads((run_dir / "noise" / "results.json").read_text())  # the variant's own record too
    assert own["defense"]["post_hoc"] is True

    report = (run_dir / "report.md").read_text()
    assert "- post-hoc: `noise` (gaussian-noise): the classifier trained without the defense (as `none`)" in report
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert any(row.startswith("| noise (post-hoc) |") for row in rows)  # headline and details tables
    assert sum(row.startswith("| noise (post-hoc) |") for row in rows) == 2
    assert not any(row.startswith(("| none (post-hoc)", "| negls (post-hoc)")) for row in rows)
    assert any(row.startswith("| negls |") for row in rows)
    page = (run_dir / "report.html").read_text()
    assert page.count("noise (post-hoc)") == 2 and "negls (post-hoc)" not in page

    _, tui_rows, _ = results_rows([run_dir])
    assert [row[1] for row in tui_rows] == ["none", "noise (post-hoc)", "negls"]


def _seed_results(top1: float) -> dict:
    return {"variants": [
        {"name": "none", "utility": {"test_accuracy": 0.99}, "attacks": {"gmi": {"top1": top1}}},
        {"name": "purifier", "utility": {"test_accuracy": 0.98}, "attacks": {"gmi": {"top1": top1 - 0.2}},
         "defense": {"use": "purifier", "post_hoc": True}},
        {"name": "bido", "utility": {"test_accuracy": 0.97}, "attacks": {"gmi": {"top1": top1 - 0.1}}},
    ]}


def test_the_sweep_tables_mark_a_post_hoc_variant(tmp_path):
    from workbench.cli.tables import aggregate_table
    from workbench.sweeps.aggregate import render_html

    results = {s: _seed_results(0.6 + s / 20) for s in range(3)}
    data = aggregate([{"id": "base", "values": {}, "seeds": [0, 1, 2], "results": results}])
    variants = {v["name"]: v for v in data["points"][0]["variants"]}
    assert variants["purifier"]["defense"] == {"use": "purifier", "post_hoc": True}
    assert "defense" not in variants["bido"] and "defense.post_hoc" not in variants["purifier"]["figures"]
    assert [variant_label(v) for v in data["points"][0]["variants"]] == ["none", "purifier (post-hoc)", "bido"]
    header = {"recipe": "r.toml", "seeds": [0, 1, 2], "grid": {}, "executor": "inline", "finished": 3, "total": 3}
    report = render_report(data, header, {})
    # The mean ± std table and the paired one against `none`.
    assert report.count("| purifier (post-hoc) |") == 2 and "| bido (post-hoc)" not in report
    assert render_html(tmp_path, data, header, {}).count("purifier (post-hoc)") >= 3  # + the per-seed rows
    console = Console(width=200, record=True)
    console.print(aggregate_table(data))
    assert "purifier (post-hoc)" in console.export_text() and "bido (post-hoc)" not in console.export_text()
