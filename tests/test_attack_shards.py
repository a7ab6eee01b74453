"""Sharded attacks: shards of an attack's per-class search, run as separate jobs and merged, give
the unsharded results exactly (==, not approximately); a finished shard is not run again after an
interruption; an attack that cannot be split exactly is refused in one line."""

from __future__ import annotations

import json
import os

import pytest
import torch

from workbench.api import AttackContext, AttackShard, WorkbenchError
from workbench.attack_toolkit import (
    ClassDiscriminator,
    Critic,
    Generator,
    Group,
    make_groups,
    merge_shards,
    result,
    search,
)
from workbench.running import attack_shards
from workbench.running.runner import RunInterrupted
from workbench.storage.events import read_events
from workbench.testing import TINY_RECIPE
from workbench_attacks.gmi import GMIParams, GMISearch
from workbench_attacks.kedmi import KEDMI, KEDMIParams, KEDMISearch

CLASSES, Z = 5, 8


# ---------------------------------------------------------------- the split itself


@pytest.mark.parametrize("batches,count", [(5, 1), (5, 2), (5, 3), (7, 7), (10, 4), (3, 2)])
def test_a_shard_is_a_contiguous_run_and_the_shards_cover_every_batch_once(batches, count):
    parts = [AttackShard(k, count).part(batches) for k in range(count)]
    assert [b for part in parts for b in part] == list(range(batches))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # the first ones longer
    assert list(AttackShard(0, count, search=False).part(batches)) == []


# ---------------------------------------------------------------- search level: bit for bit


def context(target, shard=None) -> AttackContext:
    return AttackContext(target=target, data=None, evaluation_model=None, device=torch.device("cpu"), seed=3,
                         shard=shard)


def tiny_target() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, CLASSES)).eval()


def gmi_problem():
    torch.manual_seed(1)
    params = GMIParams(z_dim=Z, gan_width=4, samples_per_class=2, restarts=2, iterations=3)
    return GMISearch(params, Generator(Z, 1, 16, 4).eval(), Critic(1, 16, 4).eval(), tiny_target()), \
        [[g] for g in make_groups(range(CLASSES), 2)], params


def kedmi_problem():
    torch.manual_seed(2)
    params = KEDMIParams(z_dim=Z, gan_width=4, fits=2, samples_per_class=3, class_block=2, iterations=3,
                         mbd_kernels=4, mbd_kernel_dim=3)
    discriminator = ClassDiscriminator(1, 16, 4, CLASSES, mbd_kernels=4, mbd_kernel_dim=3).eval()
    units = KEDMI(params).units(list(range(CLASSES)))  # per fit: blocks {0, 1}, {2, 3}, {4}
    return KEDMISearch(params, Generator(Z, 1, 16, 4).eval(), discriminator, tiny_target()), units, params


@pytest.mark.parametrize("make", [gmi_problem, kedmi_problem], ids=["gmi", "kedmi"])
@pytest.mark.parametrize("count", [2, 3])
def test_shards_of_a_search_concatenate_to_the_whole_search_bit_for_bit(make, count):
    problem, units, params = make()
    max_batch = 4 if make is gmi_problem else 2  # gmi: 5 batches of 2 groups; kedmi: 6 batches (3 per fit)
    run = lambda shard: search(context(problem.target, shard), problem, units, attack="x",  # noqa: E731
                               iterations=params.iterations, max_batch=max_batch)
    whole = run(None)
    parts = [run(AttackShard(k, count)) for k in range(count)]
    for i, name in enumerate(("images", "targets", "restarts", "confidences")):
        assert torch.equal(torch.cat([part[i] for part in parts]), whole[i]), name
    assert all(len(part[0]) > 0 for part in parts)  # every shard searched something
    prepared = result(*run(AttackShard(0, count, search=False)), gan_cached=0.0)
    assert len(prepared.images) == 0  # the pass before the shards searches nothing
    merged = merge_shards(prepared, [result(*part, gan_cached=1.0) for part in parts])
    unsharded = result(*whole, gan_cached=0.0)
    assert merged.figures == unsharded.figures  # the mean confidence over the same tensor; gan_cached of the pass before
    assert list(merged.figures) == list(unsharded.figures)
    assert torch.equal(merged.images, unsharded.images) and torch.equal(merged.restarts, unsharded.restarts)


def test_more_shards_than_forward_batches_is_refused_in_one_line():
    problem, units, params = gmi_problem()
    with pytest.raises(WorkbenchError) as caught:
        search(context(problem.target, AttackShard(0, 3, search=False)), problem, units, attack="gmi",
               iterations=1, max_batch=256)
    message = str(caught.value)
    assert "\n" not in message
    assert "'gmi'" in message and "shards = 3" in message and "1 forward batch of max_batch = 256" in message
    assert "set max_batch = 9 or lower, or shards = 1" in message  # 20 latents in pairs: 8 + 8 + 4
    with pytest.raises(WorkbenchError, match="at most shards = 2"):  # two classes of one group each
        search(context(problem.target, AttackShard(0, 3)), problem, [[Group(0, 0)], [Group(1, 0)]],
               attack="gmi", iterations=1, max_batch=256)


def test_an_attack_that_declares_no_shards_capability_is_refused_in_one_line():
    class Params:
        shards = 2

    class Plain:
        params = Params()

        def run(self, ctx):
            raise AssertionError("never run")

    with pytest.raises(WorkbenchError) as caught:
        attack_shards.sharded(None, None, "none", "plain", Plain())
    assert str(caught.value) == ("attack 'plain' (Plain) cannot be sharded exactly: it declares no `shards` "
                                 "capability; set [attacks.plain] shards = 1")
    # A method alone is not a declaration: the core never probes for `merge_shards`.
    Plain.merge_shards = lambda self, prepared, parts: prepared
    with pytest.raises(WorkbenchError, match="declares no `shards` capability"):
        attack_shards.sharded(None, None, "none", "plain", Plain())
    Params.shards = 1
    assert attack_shards.sharded(None, None, "none", "plain", Plain()) is None


# ---------------------------------------------------------------- end to end on the embedded digits

ATTACKS = """
[[metrics]]
use = "attack-accuracy"

[[metrics]]
use = "knn-dist"

[[metrics]]
use = "fid"

[evaluation.backbone]
use = "scnn"
width = 8

[evaluation.train]
epochs = 1
"""

GMI_TABLE = """
[attacks.gmi]
use = "gmi"
gan_steps = 2
critic_iters = 1
iterations = 3
restarts = 2
samples_per_class = 2
max_batch = 4
"""

KEDMI_TABLE = """
[attacks.kedmi]
use = "kedmi"
gan_steps = 2
critic_iters = 1
iterations = 3
fits = 3
samples_per_class = 2
max_batch = 5
"""


def recipe(*attacks: str, shards: int = 1) -> str:
    text = TINY_RECIPE.replace("epochs = 5", "epochs = 1") + ATTACKS
    for table in attacks:
        text += table + (f"shards = {shards}\n" if shards > 1 else "")
    return text


def attack_figures(run_dir) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {v["name"]: v["attacks"] for v in results["variants"]}


def shard_stages(run_dir) -> list[dict]:
    return [e for e in read_events(run_dir) if e["type"] == "stage_started" and ":shard-" in e["stage"]]


def test_two_shards_give_the_unsharded_results_json_figures_exactly(run_tiny_recipe):
    """The fast lane's end-to-end check: GMI on the digits, the stage cache shared (E, the prior and
    the target train once), the shards run inline as two jobs."""
    whole_dir, _ = run_tiny_recipe(recipe(GMI_TABLE), workers=1)
    sharded_dir, _ = run_tiny_recipe(recipe(GMI_TABLE, shards=2), workers=1)
    whole, sharded = attack_figures(whole_dir), attack_figures(sharded_dir)
    assert sharded == whole
    assert {"top1", "knn_dist", "fid", "target_confidence"} <= set(sharded["none"]["gmi"])
    stages = shard_stages(sharded_dir)
    assert [(e["stage"], e["shard"], e["shards"]) for e in stages] == [
        ("attack:gmi:shard-1-of-2", 0, 2), ("attack:gmi:shard-2-of-2", 1, 2)]
    assert not shard_stages(whole_dir)
    messages = [e["message"] for e in read_events(sharded_dir) if e["type"] == "log"]
    assert "none: gmi in 2 shard jobs (this process, one after another)" in messages
    # The merged reconstructions replace the shard files.
    assert sorted(p.name for p in (sharded_dir / "none" / "reconstructions").iterdir()) == ["gmi.nearest.png", "gmi.png", "gmi.safetensors"]


@pytest.mark.slow
def test_gmi_and_kedmi_in_two_parallel_and_three_uneven_shards_equal_the_unsharded_run(run_tiny_recipe, tmp_path):
    """Separate caches, so every run trains its own priors (KED-MI's per-target GAN in the pass
    before the shards) and even `gan_cached` must agree."""
    whole_dir, _ = run_tiny_recipe(recipe(GMI_TABLE, KEDMI_TABLE), workers=1, cache_dir=tmp_path / "cache-whole")
    whole = attack_figures(whole_dir)
    assert whole["none"]["kedmi"]["gan_cached"] == 0.0
    two_dir, _ = run_tiny_recipe(recipe(GMI_TABLE, KEDMI_TABLE, shards=2), workers=2, cache_dir=tmp_path / "cache-2")
    three_dir, _ = run_tiny_recipe(recipe(GMI_TABLE, KEDMI_TABLE, shards=3), workers=1, cache_dir=tmp_path / "cache-3")
    assert attack_figures(two_dir) == whole
    assert attack_figures(three_dir) == whole
    # Two shards on the `processes` executor: separate worker processes, not this one.
    two = shard_stages(two_dir)
    assert sorted(e["stage"] for e in two) == ["attack:gmi:shard-1-of-2", "attack:gmi:shard-2-of-2",
                                               "attack:kedmi:shard-1-of-2", "attack:kedmi:shard-2-of-2"]
    assert all(e["pid"] != os.getpid() for e in two)
    # Three uneven shards (GMI: 5 batches as 2 + 2 + 1; KED-MI: 3 fits as 1 + 1 + 1), inline.
    three = shard_stages(three_dir)
    assert [e["stage"] for e in three] == [f"attack:{a}:shard-{k}-of-3" for a in ("gmi", "kedmi") for k in (1, 2, 3)]
    assert all(e["pid"] == os.getpid() for e in three)
    # KED-MI's per-target GAN trained once, before the shards; every shard loaded it.
    logs = [e["message"] for e in read_events(three_dir) if e["type"] == "log"]
    assert sum(m.startswith("kedmi: trained kedmi-gan") for m in logs) == 1
    assert sum(m == "kedmi: loaded kedmi-gan from the stage cache" for m in logs) == 3


@pytest.mark.slow
def test_variants_in_worker_processes_run_their_shards_there_with_the_same_results(run_tiny_recipe, tmp_path):
    """Two variants on two workers: each variant's worker runs its own shards inline, in turn."""
    two_variants = '\n[[variants]]\nname = "mid"\ndefense = { use = "mid", beta = 0.01 }\n'
    whole_dir, _ = run_tiny_recipe(recipe(GMI_TABLE) + two_variants, workers=1, cache_dir=tmp_path / "cache-1")
    run_dir, _ = run_tiny_recipe(recipe(GMI_TABLE, shards=2) + two_variants, workers=2, cache_dir=tmp_path / "cache-2")
    assert attack_figures(run_dir) == attack_figures(whole_dir)
    assert set(attack_figures(run_dir)) == {"none", "mid"}
    stages = shard_stages(run_dir)
    pids = {v: {e["pid"] for e in stages if e["variant"] == v} for v in ("none", "mid")}
    assert sorted((e["variant"], e["shard"]) for e in stages) == [("mid", 0), ("mid", 1), ("none", 0), ("none", 1)]
    assert all(len(p) == 1 and os.getpid() not in p for p in pids.values()) and pids["none"] != pids["mid"]


@pytest.mark.slow
def test_a_finished_shard_is_not_run_again_after_an_interruption(run_tiny_recipe, tmp_path, monkeypatch):
    whole_dir, _ = run_tiny_recipe(recipe(GMI_TABLE), workers=1)
    real_run_shard = attack_shards.run_shard
    calls: list[int] = []

    def interrupted_at_the_second(ctx, target, evaluation, variant, name, index, count):
        calls.append(index)
        if index == 1 and calls.count(1) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the second shard runs
        return real_run_shard(ctx, target, evaluation, variant, name, index, count)

    monkeypatch.setattr(attack_shards, "run_shard", interrupted_at_the_second)
    run_dir = tmp_path / "interrupted"
    with pytest.raises(RunInterrupted):
        run_tiny_recipe(recipe(GMI_TABLE, shards=2), workers=1, run_dir=run_dir)
    assert (run_dir / "none" / "reconstructions" / "gmi.shard-1-of-2.safetensors").exists()
    assert not (run_dir / "results.json").exists()
    before = len(shard_stages(run_dir))
    run_tiny_recipe(recipe(GMI_TABLE, shards=2), workers=1, run_dir=run_dir, resume=True)
    assert calls == [0, 1, 1]  # the first shard ran once
    resumed = shard_stages(run_dir)[before:]
    assert [e["stage"] for e in resumed] == ["attack:gmi:shard-2-of-2"]
    messages = [e["message"] for e in read_events(run_dir) if e["type"] == "log"]
    assert "gmi: 1 of 2 shards already done; running 1" in messages
    assert attack_figures(run_dir) == attack_figures(whole_dir)


def test_a_shard_file_from_another_target_is_not_merged(tmp_path):
    path = tmp_path / "none" / "reconstructions" / "gmi.shard-1-of-2.safetensors"
    from workbench.storage.checkpoint import save_checkpoint

    tensors = {"images": torch.zeros(2, 1, 4, 4), "targets": torch.zeros(2, dtype=torch.long),
               "restarts": torch.zeros(2, dtype=torch.long), "confidences": torch.zeros(2)}
    save_checkpoint(path, tensors, {"key": "another", "figures": {}})
    assert attack_shards.load_shard(path, "another") is not None
    assert attack_shards.load_shard(path, "this-target") is None
    path.write_bytes(path.read_bytes()[:40])  # half-written
    assert attack_shards.load_shard(path, "another") is None
