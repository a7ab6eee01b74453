"""The stage cache: keyed by what determines a stage, corrupt entries rebuilt, managed from the CLI."""

from __future__ import annotations

import sys

import torch

from workbench.cache import StageCache, code_fingerprint, source_fingerprint, stage_key
from workbench.cli import main

KEY = {"backbone": {"use": "scnn", "width": 16}, "seed": 0, "data": {"use": "digits"}}


def test_entry_round_trips_and_key_order_does_not_matter(tmp_path):
    cache = StageCache(tmp_path)
    weights = {"model.w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    path = cache.save_state("evaluation-model", KEY, weights, {"test_accuracy": 0.9})
    reordered = {"data": {"use": "digits"}, "seed": 0, "backbone": {"width": 16, "use": "scnn"}}
    tensors, meta = cache.load_state("evaluation-model", reordered)
    assert torch.equal(tensors["model.w"], weights["model.w"])
    assert meta["test_accuracy"] == 0.9 and meta["stage"] == "evaluation-model"
    assert cache.path("evaluation-model", reordered) == path
    # Anything that determines the stage changes the entry: config, seed, stage name.
    assert cache.load_state("evaluation-model", {**KEY, "seed": 1}) is None
    assert cache.load_state("gmi-gan", KEY) is None


def test_corrupt_entry_is_removed_and_rebuilt_not_trusted(tmp_path):
    cache = StageCache(tmp_path)
    path = cache.save_state("gmi-gan", KEY, {"g.w": torch.ones(64, 64)})
    path.write_bytes(path.read_bytes()[:100])  # truncated, as a killed copy would leave it
    assert cache.load_state("gmi-gan", KEY) is None
    assert not path.exists()
    cache.save_state("gmi-gan", KEY, {"g.w": torch.full((2,), 3.0)})
    tensors, _ = cache.load_state("gmi-gan", KEY)
    assert tensors["g.w"].tolist() == [3.0, 3.0]


def test_disabled_cache_misses_and_stores_nothing(tmp_path):
    cache = StageCache(None)
    assert cache.save_state("gmi-gan", KEY, {"w": torch.ones(1)}) is None
    assert cache.load_state("gmi-gan", KEY) is None


def test_source_fingerprint_follows_code_edits_but_not_presentation(tmp_path):
    package = tmp_path / "workbench"
    (package / "tui").mkdir(parents=True)
    (package / "trainer.py").write_text("LR = 1e-3\n")
    (package / "tui" / "app.py").write_text("TITLE = 'a'\n")
    before = source_fingerprint([package])
    assert source_fingerprint([package]) == before
    (package / "tui" / "app.py").write_text("TITLE = 'b'\n")
    assert source_fingerprint([package]) == before  # the TUI does not change what a stage computes
    (package / "trainer.py").write_text("LR = 1e-2\n")
    assert source_fingerprint([package]) != before
    (package / "trainer.py").write_text("LR = 1e-3\n")
    (package / "defense.py").write_text("\n")
    assert source_fingerprint([package]) != before  # a new module counts too


def test_stage_key_includes_the_code_fingerprint(monkeypatch):
    import workbench.cache as cache_module

    assert len(code_fingerprint()) == 16
    now = stage_key("gmi-gan", KEY)
    monkeypatch.setattr(cache_module, "code_fingerprint", lambda: "edited-source")
    assert stage_key("gmi-gan", KEY) != now


def test_cache_list_and_clear_from_the_command_line(tmp_path, monkeypatch, capsys):
    cache = StageCache(tmp_path)
    cache.save_state("gmi-gan", KEY, {"w": torch.ones(3)})
    cache.save_state("evaluation-model", KEY, {"w": torch.ones(3)})

    def run(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["workbench", *args])
        monkeypatch.setenv("COLUMNS", "200")
        try:
            main()
        except SystemExit as exc:
            assert not exc.code
        return capsys.readouterr().out

    listing = run("cache", "list", "--cache-dir", str(tmp_path))
    assert "gmi-gan" in listing and "evaluation-model" in listing
    assert "removed 1 cache entry" in run("cache", "clear", "--cache-dir", str(tmp_path), "--stage", "gmi-gan")
    assert cache.load_state("gmi-gan", KEY) is None and cache.load_state("evaluation-model", KEY) is not None
    assert "removed 1 cache entry" in run("cache", "clear", "--cache-dir", str(tmp_path))
    assert "gmi-gan" not in run("cache", "list", "--cache-dir", str(tmp_path))
