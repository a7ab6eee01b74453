"""The runner end to end on the embedded data: run directory contents, resume, bad input."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from workbench.errors import RunError
from workbench.running.runner import RunInterrupted, RunOptions, execute, run_recipe, start_run
from workbench.storage.checkpoint import load_checkpoint, tensors_with_prefix
from workbench.storage.events import read_events
from workbench.testing import TINY_RECIPE

SIX_EPOCHS = TINY_RECIPE.replace("epochs = 5", "epochs = 6")


def test_run_writes_the_run_directory(run_tiny_recipe):
    run_dir, results = run_tiny_recipe()
    for name in ("recipe.toml", "events.jsonl", "results.json", "report.md", "run.json"):
        assert (run_dir / name).exists(), name
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["variants"][0]["name"] == "none"
    accuracy = saved["variants"][0]["utility"]["test_accuracy"]
    assert 0.8 < accuracy <= 1.0  # five epochs on 5 digit classes: far above chance (0.2)
    tensors = load_file(str(run_dir / "none" / "target.safetensors"))
    assert any(k.startswith("model.") for k in tensors)
    _, meta = load_checkpoint(run_dir / "none" / "target.safetensors")  # metadata inside, checksum verified
    assert meta["kind"] == "target" and meta["recipe_hash"] == saved["recipe_hash"]
    assert "torch" in meta["versions"]
    types = [e["type"] for e in read_events(run_dir)]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert types.count("epoch") == 5 and "checkpoint" in types and "result" in types
    assert "| none |" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_same_recipe_twice_gives_the_same_figures(run_tiny_recipe, tmp_path):
    _, first = run_tiny_recipe(cache_dir=tmp_path / "cache-a")
    _, second = run_tiny_recipe(cache_dir=tmp_path / "cache-b")  # trained again from scratch
    assert first["variants"][0]["utility"] == second["variants"][0]["utility"]


@pytest.mark.slow
def test_second_identical_run_takes_the_target_from_the_stage_cache(run_tiny_recipe):
    _, first = run_tiny_recipe()
    run_dir, second = run_tiny_recipe()
    assert second["variants"] == first["variants"]
    epochs = [e for e in read_events(run_dir) if e["type"] == "epoch"]
    assert len(epochs) == 5 and all(e.get("cached") for e in epochs)  # history replayed, not retrained
    assert not (run_dir / "none" / "last.safetensors").exists()


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_figures_and_weights(run_tiny_recipe, tmp_path, isolated_cache):
    full_dir, full = run_tiny_recipe(SIX_EPOCHS)

    recipe = tmp_path / "interrupted.toml"
    recipe.write_text(SIX_EPOCHS)
    run_dir = tmp_path / "interrupted"

    def stop_in_epoch_two(event):
        if event["type"] == "epoch" and event["epoch"] == 2:
            raise KeyboardInterrupt  # like Ctrl-C after epoch 2, before its checkpoint

    own_cache = tmp_path / "own-cache"  # so the target is trained, not taken from the first run's cache
    run = start_run(RunOptions(recipe=recipe, run_dir=run_dir, cache_dir=own_cache), listeners=[stop_in_epoch_two])
    with pytest.raises(RunInterrupted, match="--resume"):
        execute(run)
    _, meta = load_checkpoint(run_dir / "none" / "last.safetensors")
    assert meta["epoch"] == 1
    assert not (run_dir / "results.json").exists()

    _, resumed = run_recipe(RunOptions(recipe=run_dir, resume=True, cache_dir=own_cache))
    assert resumed["variants"] == full["variants"]
    a = tensors_with_prefix(load_file(str(full_dir / "none" / "target.safetensors")), "model")
    b = tensors_with_prefix(load_file(str(run_dir / "none" / "target.safetensors")), "model")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    types = [e["type"] for e in read_events(run_dir)]
    assert "run_interrupted" in types and types[-1] == "run_finished"


def test_corrupt_checkpoint_on_resume_is_named_and_kept(run_tiny_recipe, tmp_path, isolated_cache):
    recipe = tmp_path / "r.toml"
    recipe.write_text(SIX_EPOCHS)
    run_dir = tmp_path / "run"

    def stop(event):
        if event["type"] == "checkpoint" and event["epoch"] == 1:
            raise KeyboardInterrupt

    run = start_run(RunOptions(recipe=recipe, run_dir=run_dir, cache_dir=isolated_cache), [stop])
    with pytest.raises(RunInterrupted):
        execute(run)
    checkpoint = run_dir / "none" / "last.safetensors"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="last.safetensors: truncated or corrupt"):
        run_recipe(RunOptions(recipe=run_dir, resume=True, cache_dir=isolated_cache))
    assert checkpoint.stat().st_size == len(data) // 2  # nothing deleted


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, isolated_cache):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "nan_defense.py").write_text(textwrap.dedent('''
        import torch
        from workbench.components.protocols import Defense, LossOutput
        from workbench.components.hookspecs import hookimpl
        from workbench.api import cross_entropy

        class NaNAfterOneEpoch(Defense):
            """Cross-entropy, then NaN from the second epoch on."""
            def __init__(self, params):
                self.steps = 0
            def loss(self, *, x, y, logits, hiddens, model):
                self.steps += 1
                ce = cross_entropy(logits, y)
                return LossOutput(ce * float("nan") if self.steps > 6 else ce)  # 6 steps per epoch

        @hookimpl
        def register_defenses(register):
            register("nan-later", NaNAfterOneEpoch)
    '''))
    recipe = tmp_path / "r.toml"
    recipe.write_text(SIX_EPOCHS.replace('defense = { use = "none" }', 'defense = { use = "nan-later" }')
                      .replace("batch_size = 64", "batch_size = 128"))
    run_dir = tmp_path / "run"
    with pytest.raises(RunError, match=r"loss became nan at epoch 2.*last good checkpoint"):
        run_recipe(RunOptions(recipe=recipe, run_dir=run_dir, cache_dir=isolated_cache, plugins_dir=plugins))
    _, meta = load_checkpoint(run_dir / "none" / "last.safetensors")
    assert meta["epoch"] == 1
    assert [e for e in read_events(run_dir) if e["type"] == "run_failed"]


@pytest.mark.slow
def test_parallel_workers_give_the_same_results_as_one_process(run_tiny_recipe, tmp_path):
    two_variants = TINY_RECIPE + '\n[[variants]]\nname = "mid"\ndefense = { use = "mid", beta = 0.01 }\n'
    _, sequential = run_tiny_recipe(two_variants, workers=1, cache_dir=tmp_path / "cache-1")
    run_dir, parallel = run_tiny_recipe(two_variants, workers=2, cache_dir=tmp_path / "cache-2")
    assert parallel["variants"] == sequential["variants"]
    types = [e["type"] for e in read_events(run_dir)]
    assert types.count("epoch") == 10 and types[-1] == "run_finished"


TINY_ATTACKS = """
[[metrics]]
use = "attack-accuracy"

[evaluation.backbone]
use = "scnn"
width = 8

[evaluation.train]
epochs = 2

[attacks.gmi]
use = "gmi"
gan_steps = 3
critic_iters = 1
iterations = 5
samples_per_class = 2

[attacks.kedmi]
use = "kedmi"
gan_steps = 3
critic_iters = 1
iterations = 5
samples_per_class = 2
"""


@pytest.mark.slow
def test_shared_stages_train_once_in_parallel_workers_with_the_same_results(run_tiny_recipe, tmp_path):
    two_variants = (TINY_RECIPE.replace("epochs = 5", "epochs = 2")
                    + '\n[[variants]]\nname = "mid"\ndefense = { use = "mid", beta = 0.01 }\n' + TINY_ATTACKS)
    _, sequential = run_tiny_recipe(two_variants, workers=1, cache_dir=tmp_path / "cache-1")
    run_dir, parallel = run_tiny_recipe(two_variants, workers=2, cache_dir=tmp_path / "cache-2")
    assert parallel["variants"] == sequential["variants"]
    assert parallel["evaluation_model"] == sequential["evaluation_model"]
    assert parallel["evaluation_model"]["cached"] is False  # trained by this run, in a worker
    events = list(read_events(run_dir))
    trained = [e["stage"] for e in events if e["type"] == "stage_finished" and e["variant"] is None]
    # E and GMI's prior are trained once each (in the workers), not again by every variant.
    assert trained.count("evaluation-model") == 1 and trained.count("prior:gmi") == 1
    assert sum(e["type"] == "result" and e.get("section") == "evaluation_model" for e in events) == 1
    messages = [e["message"] for e in events if e["type"] == "log"]
    assert "training 2 shared stages in 2 worker processes" in messages
    # A second run finds both in the cache: no shared stage trains, the workers only load.
    _, again = run_tiny_recipe(two_variants, workers=2, cache_dir=tmp_path / "cache-2")
    assert again["evaluation_model"]["cached"] is True and again["variants"] == parallel["variants"]


def test_a_failure_whose_events_cannot_be_written_keeps_its_own_error():
    """A full disk that fails a run also fails `run_failed`: the run's error (the file that failed)
    is what the user sees, not the event log's."""
    from types import SimpleNamespace

    from workbench.running.runner import announce_failure, announce_interrupt
    from workbench.storage.files import StorageError

    class FullDisk:
        def emit(self, type, **fields):
            raise StorageError("run/events.jsonl: cannot write (disk full)")

        def close(self):
            raise OSError(28, "No space left on device")

    events = FullDisk()
    ctx = SimpleNamespace(events=events, emit=events.emit)
    assert announce_failure(ctx, "run/none/results.json: cannot write") == "run/none/results.json: cannot write"
    announce_interrupt(ctx)  # no exception either
