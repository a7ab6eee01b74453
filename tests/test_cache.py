"""The stage cache: keyed by what determines a stage, corrupt entries rebuilt, managed from the CLI."""

from __future__ import annotations

import sys

import pytest
import torch

from workbench.cli import main
from workbench.storage.cache import StageCache, code_fingerprint, stage_key
from workbench.storage.fingerprints import source_fingerprint

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
    import workbench.storage.cache as cache_module

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


# ------------------------------------------------------------------ integrity


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_bit_flipped_entry_is_named_in_one_line_removed_and_recomputed(tmp_path, caplog):
    cache = StageCache(tmp_path)
    for stage in ("evaluation-model", "target", "gmi-gan", "kedmi-gan", "attack"):
        path = cache.save_state(stage, KEY, {"w": torch.linspace(0, 1, 256)}, {"figures": {"top1": 0.5}})
        _flip_last_byte(path)
        caplog.clear()
        with caplog.at_level("WARNING", logger="workbench.storage.cache"):
            assert cache.load_state(stage, KEY) is None
        (message,) = [r.getMessage() for r in caplog.records]
        assert str(path) in message and "checksum mismatch" in message and "recomputing" in message
        assert "\n" not in message and not path.exists()
        cache.save_state(stage, KEY, {"w": torch.ones(2)})
        assert cache.load_state(stage, KEY)[0]["w"].tolist() == [1.0, 1.0]


def test_an_entry_with_a_renamed_tensor_key_does_not_block_later_runs(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cache = StageCache(tmp_path)
    model = torch.nn.Linear(3, 2)
    path = cache.save_state("target", KEY, {f"model.{k}": v for k, v in model.state_dict().items()})
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    tensors = load_file(str(path))
    tensors["model.renamed"] = tensors.pop("model.weight")
    save_file(tensors, str(path), metadata=header)
    assert cache.load_modules("target", KEY, {"model": model}) is None and not path.exists()
    # An intact entry whose tensors do not fit the model (another layout) is dropped too, and
    # the model is left untouched: no key is copied from an entry that does not fit whole.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cache.save_state("target", KEY, {"model.weight": torch.ones(2, 3)})  # fits, but bias is missing
    assert cache.load_modules("target", KEY, {"model": model}) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    cache.save_state("target", KEY, {"model.weight": torch.ones(5, 5), "model.bias": torch.ones(2)})
    assert cache.load_modules("target", KEY, {"model": model}) is None
    cache.save_state("target", KEY, {f"model.{k}": torch.zeros_like(v) for k, v in model.state_dict().items()},
                     {"history": [1]})
    environment = {"device": "cpu", "threads": torch.get_num_threads()}
    assert cache.load_modules("target", KEY, {"model": model}) == {"stage": "target", "key": KEY,
                                                                   "environment": environment, "history": [1]}
    assert torch.all(model.weight == 0)


# ------------------------------------------------------------------ third-party plugins in the key


PLUGIN_SOURCE = '''
from workbench.api import hookimpl

SCALE = {scale}


class Shrink:
    """A third-party defense."""


@hookimpl
def register_defenses(register):
    register("tp-shrink", Shrink)


@hookimpl
def register_attacks(register):
    register("tp-attack", Shrink)
'''


def _third_party_registry(tmp_path, scale: float, version: str):
    import importlib.util

    from workbench.components.manager import PluginInfo, get_plugin_manager
    from workbench.components.registry import Registry

    source = tmp_path / "tp_defense_plugin.py"
    source.write_text(PLUGIN_SOURCE.format(scale=scale))
    spec = importlib.util.spec_from_file_location("tp_defense_plugin", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    manager = get_plugin_manager(entrypoints=False)
    manager.register(module, "tp-defense", PluginInfo("tp-defense", "entrypoint", "tp-defense", version))
    return Registry(manager)


def test_a_third_party_plugin_edited_or_upgraded_gets_new_entries(tmp_path):
    """The key of a stage covers the version and source of every plugin whose component took
    part: an edited third-party defense trains its targets again (built-ins were always covered)."""
    key = {"variant": {"defense": {"use": "tp-shrink"}}, "target": {"backbone": {"use": "mcnn"}}}
    plain = {"variant": {"defense": {"use": "none"}}, "target": {"backbone": {"use": "mcnn"}}}
    attack_key = {"attack": "Shrink", "params": {}, "target": "abc"}

    def entry_paths(scale, version):
        cache = StageCache(tmp_path / "cache", registry=_third_party_registry(tmp_path, scale, version))
        return (cache.path("target", key), cache.path("target", plain),
                cache.for_components(("attack", "tp-attack")).path("attack", attack_key),
                cache.path("attack", attack_key))

    first = entry_paths(1.0, "1.0")
    assert entry_paths(1.0, "1.0") == first  # stable
    edited = entry_paths(2.0, "1.0")  # source edited, version not bumped
    assert edited[0] != first[0] and edited[2] != first[2]
    assert edited[1] == first[1] and edited[3] == first[3]  # stages it took no part in keep their entries
    bumped = entry_paths(2.0, "1.1")
    assert bumped[0] != edited[0] and bumped[2] != edited[2] and bumped[1] == first[1]

    cache = StageCache(tmp_path / "cache", registry=_third_party_registry(tmp_path, 1.0, "1.0"))
    cache.save_state("target", key, {"w": torch.ones(1)})
    assert cache.load_state("target", key) is not None
    retrained = StageCache(tmp_path / "cache", registry=_third_party_registry(tmp_path, 3.0, "1.0"))
    assert retrained.load_state("target", key) is None  # a miss: the stage runs again


# ------------------------------------------------------------------ clearing only what is ours


def test_clear_deletes_only_entries_the_tool_made(tmp_path):
    from workbench.storage.cache import CacheError

    root = tmp_path / "cache"
    cache = StageCache(root)
    entry = cache.save_state("gmi-gan", KEY, {"w": torch.ones(2)})
    (root / "gmi-gan" / "notes.txt").write_text("mine")
    (root / "gmi-gan" / "0123456789abcdef.safetensors").write_bytes(b"not ours")
    (root / "photos").mkdir()
    (root / "photos" / "cat.png").write_bytes(b"png")
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "thesis.tex").write_text("keep")
    for bad in ("../x", "..", "/tmp", ".hidden", "a/b"):
        with pytest.raises(CacheError, match="not a stage name"):
            cache.clear(bad)
    assert (outside / "thesis.tex").exists()
    assert cache.clear() == 1 and not entry.exists()
    assert (root / "gmi-gan" / "notes.txt").read_text() == "mine"
    assert (root / "gmi-gan" / "0123456789abcdef.safetensors").exists()
    assert (root / "photos" / "cat.png").exists() and root.exists()


def test_clear_on_a_folder_that_is_not_a_cache_deletes_nothing(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    (home / "src").mkdir(parents=True)
    (home / "src" / "main.py").write_text("print()")
    (home / "notes.md").write_text("x")
    monkeypatch.setattr(sys, "argv", ["workbench", "cache", "clear", "--cache-dir", str(home)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert not exc.value.code and "removed 0 cache entries" in capsys.readouterr().out
    assert (home / "src" / "main.py").exists() and (home / "notes.md").exists()
    monkeypatch.setattr(sys, "argv", ["workbench", "cache", "clear", "--cache-dir", str(home), "--stage", "../x"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code and "not a stage name" in err and "Traceback" not in err


def test_a_cache_dir_that_is_a_file_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from workbench.storage.cache import CacheError

    blocker = tmp_path / "cache"
    blocker.write_text("")
    with pytest.raises(CacheError, match="is a file"):
        StageCache(blocker)
    monkeypatch.setattr(sys, "argv", ["workbench", "cache", "list", "--cache-dir", str(blocker)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code and "is a file" in err and len(err.strip().splitlines()) == 1


def test_entries_of_the_older_two_file_layout_are_listed_cleared_and_never_loaded(tmp_path):
    import json

    from safetensors.torch import save_file

    cache = StageCache(tmp_path)
    folder = tmp_path / "gmi-gan"
    folder.mkdir()
    old = folder / "0123456789abcdef.safetensors"
    save_file({"g.w": torch.ones(2)}, str(old))
    (folder / "0123456789abcdef.json").write_text(json.dumps({"stage": "gmi-gan", "summary": "old GAN"}))
    (folder / ".0123456789abcdef.safetensors.x1y2.tmp").write_bytes(b"half")  # an interrupted write
    assert [e["meta"].get("summary") for e in cache.entries()] == ["old GAN"]
    assert cache.clear("gmi-gan") == 1 and not folder.exists()


def test_an_entry_with_nan_weights_is_never_loaded_into_a_model(tmp_path):
    cache = StageCache(tmp_path)
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = cache.save_state("gmi-gan", KEY, {"model.weight": torch.full((2, 3), float("nan")),
                                             "model.bias": torch.zeros(2)})
    assert cache.load_modules("gmi-gan", KEY, {"model": model}) is None and not path.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "NaN or infinite" in cache.problems[-1]


def test_every_key_carries_the_device_thread_count_and_world_size_from_the_cache(monkeypatch, tmp_path):
    """No stage adds them by hand: the cache puts its environment into every key, so an entry made on
    another device, at another thread count or by N ranks is another entry."""
    from workbench.running import distributed

    cache = StageCache(tmp_path)
    base = cache.key_of("target", KEY)
    assert cache.key_of("target", KEY) == base
    cache.device_type = "cuda"
    assert cache.key_of("target", KEY) != base
    assert cache.for_components(("attack", "gmi")).device_type == "cuda"  # a scoped cache keeps it
    cache.device_type = "cpu"
    previous = torch.get_num_threads()
    torch.set_num_threads(1 if previous != 1 else 2)
    try:
        assert cache.key_of("target", KEY) != base
    finally:
        torch.set_num_threads(previous)
    assert cache.key_of("target", KEY) == base
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert cache.environment() == {"device": "cpu", "threads": previous, "world_size": 2}
    assert cache.key_of("target", KEY) != base
