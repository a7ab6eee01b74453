"""Data-parallel training (torchrun / DDP) on the CPU with gloo: N ranks with b/N images each
must train exactly the model one process trains with the global batch b.

The gradient checks run one SGD step (lr 1, no momentum, so the step *is* the gradient) of
the real trainer in float64 on a BatchNorm-free network, once in this process on the global
batch and once in two spawned gloo ranks, and compare the steps to 1e-10.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from workbench import load_registry
from workbench.recipe.schema import OODTrainingConfig, TrainConfig
from workbench.running.trainer import OODFeed, train_classifier

WORLD = 2
CLASSES = 4
GLOBAL_BATCH = 8


class TinyNet(nn.Module):
    """Conv -> pool -> tanh feature -> head: two hidden blocks for BiDO, no BatchNorm."""

    feature_dim = 5

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 3 * 3, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, CLASSES)

    def forward_hidden(self, x):
        h1 = torch.relu(nn.functional.max_pool2d(self.conv(x), 2))
        h2 = torch.tanh(self.fc(h1.flatten(1)))
        return self.head(h2), [h1, h2]

    def forward(self, x):
        return self.forward_hidden(x)[0]


CASES = {
    "bido-hsic": ({"use": "bido", "lambda_x": 2.0, "lambda_y": 4.0, "measure": {"use": "hsic"}}, None, False),
    "bido-coco": ({"use": "bido", "lambda_x": 5.0, "lambda_y": 25.0, "measure": {"use": "coco"}}, None, False),
    "bido-hsic+": ({"use": "bido", "lambda_x": 2.0, "lambda_y": 4.0, "measure": {"use": "hsic"}},
                   {"use": "entropy", "gamma": 0.05}, False),
    "bido-hsic-balanced": ({"use": "bido", "lambda_x": 2.0, "lambda_y": 4.0, "measure": {"use": "hsic"}}, None, True),
    "bido-coco+energy": ({"use": "bido", "lambda_x": 5.0, "lambda_y": 25.0, "measure": {"use": "coco"}},
                         {"use": "energy", "weight": 0.5}, False),
}
# 11 images in global batches of 8: the second step's batch of 3 splits 2 + 1 over the ranks.
UNEVEN = {"bido-hsic+uneven": ({"use": "bido", "lambda_x": 2.0, "lambda_y": 4.0, "measure": {"use": "hsic"}},
                               {"use": "entropy", "gamma": 0.05}, False)}
CASES.update(UNEVEN)
# MID samples its code with each rank's own noise: the ranks agree with each other (DDP), not
# with one process's draws.
RANKS_ONLY = {"mid": ({"use": "mid", "beta": 0.1, "bottleneck_dim": 3}, None, False)}
CASES.update(RANKS_ONLY)


def _data(n: int = GLOBAL_BATCH):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(n, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.arange(n) % CLASSES
    x_ood = torch.rand(GLOBAL_BATCH // 2, 1, 6, 6, generator=g, dtype=torch.float64) * 0.5
    return TensorDataset(x, y), TensorDataset(x_ood, torch.zeros(len(x_ood), dtype=torch.long))


def _model():
    torch.manual_seed(3)
    return TinyNet().double()


def one_step(case: str, data_parallel: bool) -> dict[str, torch.Tensor]:
    """The parameter change of one SGD step (lr 1): minus the gradient."""
    defense_table, ood_loss, balanced = CASES[case]
    registry = load_registry()
    defense = registry.create_from("defense", defense_table)
    model = defense.prepare_model(_model(), CLASSES).double()  # MID adds its bottleneck, as in a run
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, aux = _data(11 if case in UNEVEN else GLOBAL_BATCH)
    config = TrainConfig(epochs=1, batch_size=GLOBAL_BATCH, optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0},
                         balanced_batches={"classes": CLASSES, "per_class": GLOBAL_BATCH // CLASSES} if balanced else None)
    ood = None
    if ood_loss is not None:
        ood = OODFeed(aux, OODTrainingConfig(dataset={"use": "letters"}, loss=ood_loss, warmup_epochs=0),
                      registry.create_from("ood_loss", ood_loss))
    train_classifier(model, defense, train, config, device=torch.device("cpu"), seed=0, ood=ood,
                     data_parallel=data_parallel)
    return {k: before[k] - v for k, v in model.state_dict().items()}


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for case in CASES:
            torch.save(one_step(case, data_parallel=True), Path(out_dir) / f"{case}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def steps_in_ranks(tmp_path_factory) -> Path:
    """Every case's step in two gloo ranks (one spawn for all cases: starting ranks is the slow part)."""
    out = tmp_path_factory.mktemp("ranks")
    init_file = tempfile.mktemp(dir=out, prefix="init")
    mp.spawn(_rank_main, args=(WORLD, init_file, str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c not in RANKS_ONLY])
def test_ranks_step_exactly_as_one_process_on_the_global_batch(case, steps_in_ranks):
    torch.set_num_threads(1)
    reference = one_step(case, data_parallel=False)
    for rank in range(WORLD):
        step = torch.load(steps_in_ranks / f"{case}-rank{rank}.pt")
        for name, expected in reference.items():
            assert torch.allclose(step[name], expected, rtol=0, atol=1e-10), (
                f"rank {rank}, {name}: max difference {(step[name] - expected).abs().max():.3g}")
        assert any(v.abs().max() > 1e-3 for v in step.values())  # a real step


@pytest.mark.slow
def test_mid_ranks_take_one_step_together(steps_in_ranks):
    first, second = (torch.load(steps_in_ranks / f"mid-rank{r}.pt") for r in range(WORLD))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(v.abs().max() > 1e-3 for v in first.values())


def test_per_rank_kernels_would_train_a_different_model():
    """What the gathers are for: BiDO's terms computed on each rank's half of the batch (naive
    DDP) give a gradient far from the global batch's, so the check above can tell them apart."""
    registry = load_registry()
    defense = registry.create_from("defense", CASES["bido-hsic"][0])
    train, _ = _data()
    x, y = train.tensors

    def grads(parts):
        model = _model()
        model.zero_grad()
        for idx in parts:  # DDP averages the ranks' gradients
            logits, hiddens = model.forward_hidden(x[idx])
            (defense.loss(x=x[idx], y=y[idx], logits=logits, hiddens=hiddens, model=model).loss / len(parts)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    whole, halves = grads([torch.arange(8)]), grads([torch.arange(4), torch.arange(4, 8)])
    assert (whole - halves).abs().max() > 1e-3


# ------------------------------------------------------------------ helpers in one process


def test_helpers_are_the_identity_without_a_process_group():
    from workbench.running import distributed

    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    assert distributed.gather_with_grad(t) is t
    assert torch.equal(distributed.shard(torch.arange(5)), torch.arange(5))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


def test_shuffled_index_batches_are_the_batches_iterate_batches_draws():
    from workbench.running import seeds
    from workbench.running.batches import iterate_batches, shuffled_index_batches

    x = torch.arange(23).float()[:, None]
    data = TensorDataset(x, torch.zeros(23, dtype=torch.long))
    for drop_last in (False, True):
        sliced = [b[0][:, 0].long() for b in iterate_batches(data, 5, shuffle=True, drop_last=drop_last,
                                                              generator=seeds.generator(0, "t"))]
        indexed = list(shuffled_index_batches(23, 5, seeds.generator(0, "t"), drop_last=drop_last))
        assert [s.tolist() for s in sliced] == [i.tolist() for i in indexed]


def test_sync_batchnorm_conversion_round_trips_the_state():
    from workbench.running import distributed

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.BatchNorm1d(4)))
    model[1].running_mean += 1.5
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert distributed.convert_sync_batchnorm(model)
    assert isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[2][0], nn.SyncBatchNorm)
    distributed.revert_sync_batchnorm(model)
    assert type(model[1]) is nn.BatchNorm2d and type(model[2][0]) is nn.BatchNorm1d
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ end to end under torchrun

E2E_RECIPE = """\
title = "tiny ddp"
seed = 0
device = "cpu"

[data]
use = "digits"
image_size = 16

[target.backbone]
use = "mcnn"
width = 8

[target.train]
epochs = 3
batch_size = 64

[[variants]]
name = "bido-hsic"
defense = { use = "bido", lambda_x = 0.05, lambda_y = 0.5 }
"""


def _workbench(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "workbench", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _rank_pid(rank: int, cwd: Path) -> int | None:
    """The pid of torchrun's worker `rank` started in `cwd` (from /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            here = (proc / "cwd").resolve()
        except (OSError, ValueError):
            continue
        if f"RANK={rank}".encode() in env and here == cwd.resolve() and any(
                e.startswith(b"TORCHELASTIC_RUN_ID=") for e in env):
            return int(proc.name)
    return None


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
def test_nproc_run_is_killed_resumes_and_only_rank_zero_writes(tmp_path):
    (tmp_path / "tiny.toml").write_text(E2E_RECIPE)
    run_dir = tmp_path / "run"
    before = set(tmp_path.iterdir())
    launcher = _workbench(tmp_path, "run", "tiny.toml", "--nproc", "2", "--run-dir", "run", "--cache-dir", "cache")
    deadline = time.time() + 300
    while time.time() < deadline and launcher.poll() is None:  # after the first epoch's checkpoint
        events = (run_dir / "events.jsonl").read_text() if (run_dir / "events.jsonl").exists() else ""
        if '"type":"checkpoint"' in events:
            break
        time.sleep(0.2)
    follower = _rank_pid(1, tmp_path)
    assert follower is not None, launcher.communicate()
    os.kill(follower, signal.SIGKILL)  # a rank dies mid-training
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    # One line, the launcher's: rank 0, whose collective failed, leaves it to the launcher.
    assert len(lines) == 1 and "rank 1 of 2 was killed by signal SIGKILL" in lines[0], err[-3000:]
    assert lines[-1].endswith("resumable: workbench run run --resume --nproc 2"), err[-3000:]
    assert "Traceback" not in err
    assert (run_dir / "bido-hsic" / "last.safetensors").exists() and not (run_dir / "results.json").exists()

    resumed = _workbench(tmp_path, "run", "run", "--resume", "--nproc", "2", "--cache-dir", "cache")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "bido-hsic" in out

    # Only rank 0 wrote: the files are the run's own, each event once (two writers would double
    # them), the world size is recorded, and nothing else appeared next to the run.
    assert set(tmp_path.iterdir()) - before == {run_dir, tmp_path / "cache"}
    names = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    assert [n for n in names if not n.startswith("figures/")] == [
        "bido-hsic/last.safetensors", "bido-hsic/results.json", "bido-hsic/target.safetensors",
        "events.jsonl", "recipe.toml", "report.html", "report.md", "results.json", "run.json"]
    events = _events(run_dir)
    assert [e["type"] for e in events].count("run_started") == 2  # the killed run and its resumption
    epochs = [e["epoch"] for e in events if e["type"] == "epoch"]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 3 and epochs[0] == 1
    assert all(e.get("world_size") == 2 for e in events if e["type"] == "run_started")
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 2
    targets = [p for p in (tmp_path / "cache").rglob("*.safetensors")]
    assert len(targets) == 1  # the target entry, written once

    # The killed and resumed run trained exactly the weights of an uninterrupted one.
    whole = _workbench(tmp_path, "run", "tiny.toml", "--nproc", "2", "--run-dir", "whole", "--cache-dir", "cache-whole")
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-2000:]
    from safetensors.torch import load_file

    resumed_weights = load_file(str(run_dir / "bido-hsic" / "target.safetensors"))
    whole_weights = load_file(str(tmp_path / "whole" / "bido-hsic" / "target.safetensors"))
    assert resumed_weights.keys() == whole_weights.keys()
    assert all(torch.equal(resumed_weights[k], whole_weights[k]) for k in whole_weights)


def test_world_size_is_read_back_for_runs_list_and_the_live_view(tmp_path):
    from workbench.storage.runs import summarize
    from workbench.tui.follow import RunState

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    started = {"t": 1.0, "type": "run_started", "recipe": "r.toml", "variants": ["none"], "world_size": 4}
    (run_dir / "events.jsonl").write_text(json.dumps(started) + "\n")
    (run_dir / "recipe.toml").write_text("")
    assert summarize(run_dir).world_size == 4
    state = RunState()
    state.apply(started)
    assert state.world_size == 4
    state.apply({**started, "world_size": "many"})  # a bad field never breaks the view
    assert state.world_size == 1


def _check_data_parallel(defense, config: TrainConfig) -> None:
    """What the trainer checks before it trains data-parallel (on a CPU model)."""
    from workbench.running.training_parts import DataParallelRanks

    DataParallelRanks().prepare(torch.nn.Linear(1, 1), torch.device("cpu"), config, defense)


def test_a_global_batch_that_does_not_divide_over_the_ranks_is_one_line(monkeypatch):
    from workbench.errors import RunError
    from workbench.running import distributed
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    defense = load_registry().create("defense", "none")
    with pytest.raises(RunError, match=r"target.train.batch_size = 64: the global batch must divide evenly over 3"):
        _check_data_parallel(defense, TrainConfig(batch_size=64))
    with pytest.raises(RunError, match=r"balanced_batches \(classes × per_class\) = 64"):
        _check_data_parallel(defense, TrainConfig(balanced_batches={"classes": 16, "per_class": 4}))
    _check_data_parallel(defense, TrainConfig(batch_size=66))  # divides: accepted

    class SingleProcessOnly:
        data_parallel = False

    with pytest.raises(RunError, match="does not support data-parallel training"):
        _check_data_parallel(SingleProcessOnly(), TrainConfig(batch_size=66))


def test_nproc_with_seeds_is_one_clear_line(monkeypatch, capsys, tmp_path):
    from workbench.cli import main
    from workbench.testing import TINY_RECIPE

    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE)
    monkeypatch.setattr(sys, "argv", ["workbench", "run", str(recipe), "--nproc", "2", "--seeds", "0-1"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--seeds with --nproc or torchrun" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_dp_sgd_alone_or_inside_random_erasing_refuses_data_parallel_training(monkeypatch):
    from workbench.errors import RunError
    from workbench.running import distributed
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    registry = load_registry()
    for defense in (registry.create("defense", "dp-sgd"),
                    registry.create("defense", "random-erasing", defense={"use": "dp-sgd"})):
        with pytest.raises(RunError, match="does not support data-parallel training"):
            _check_data_parallel(defense, TrainConfig(batch_size=64))
    _check_data_parallel(registry.create("defense", "random-erasing", defense={"use": "bido"}),
                         TrainConfig(batch_size=64))
