"""The attacks' priors trained data-parallel under torchrun: every rank draws the same global
batch, runs its networks on its slice (`split_forward`), and averages gradients
(`average_gradients`); the step must be the one process's step on the whole batch.

Each case runs one step of the real training function in float64, once in this process and once
in two spawned gloo ranks inside `lockstep()` (through `load_or_train` / `load_or_compute`, as an
attack calls them), and compares the parameter changes to 1e-10. Adam's first step hides a
gradient's scale (it is ≈ lr·sign(g)), so the GAN loops run with SGD at lr 1 here: the change *is*
the gradient. The generators are BatchNorm-free (per-rank BatchNorm is the documented CPU
deviation); the discriminators are the attacks' own: instance norm (GMI), minibatch
discrimination over the global batch (KED-MI), spectral norm (PLG-MI). The batch of 7 splits
unevenly (4 + 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from digits_recipes import digits_attack_recipe
from test_distributed import _events
from workbench.api import AttackContext, StageCache
from workbench.attack_toolkit import ClassDiscriminator, Critic, load_or_train
from workbench.errors import RunError
from workbench.running import distributed
from workbench_attacks.gmi import GMIParams, train_wgan_gp
from workbench_attacks.kedmi import KEDMIParams, train_kplus1_gan
from workbench_attacks.lomma import LOMMAGMIParams, distill
from workbench_attacks.plgmi import PLGMIParams, ProjectionDiscriminator, train_cgan

WORLD = 2
SIZE, Z, CLASSES, BATCH = 8, 4, 3, 7


class TinyGenerator(nn.Module):
    """z (and a class) -> an 8x8 image; no BatchNorm."""

    def __init__(self, conditional: bool = False):
        super().__init__()
        self.embed = nn.Embedding(CLASSES, Z) if conditional else None
        self.fc = nn.Linear(Z, SIZE * SIZE)

    def forward(self, z, y=None):
        z = z.to(self.fc.weight.dtype)  # the loops draw z in float32, as the real generators take it
        if self.embed is not None:
            z = z + self.embed(y)
        return torch.sigmoid(self.fc(z)).view(-1, 1, SIZE, SIZE)


def classifier() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 6), nn.Tanh(), nn.Linear(6, CLASSES))


class DoublePool:
    """An `ImagePool` in float64 (the real one holds float32): same draws from the generator."""

    def __init__(self, images):
        self.images = images

    def sample(self, n, generator, device):
        return self.images[torch.randint(len(self.images), (n,), generator=generator)].to(device)


def _images(seed: int = 11, n: int = 20):
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@contextlib.contextmanager
def sgd_for_adam():
    """`torch.optim.Adam` -> SGD at lr 1 (no momentum) inside the block."""
    adam = torch.optim.Adam
    torch.optim.Adam = lambda params, lr, betas: torch.optim.SGD(params, lr=1.0)
    try:
        yield
    finally:
        torch.optim.Adam = adam


def gan_case(case: str):
    """(networks, train) for one GAN case: train() runs one step of the attack's own loop."""
    torch.manual_seed(5)
    budget = {"gan_steps": 1, "critic_iters": 1, "gan_batch_size": BATCH, "z_dim": Z, "gan_width": 4}
    rng = torch.Generator().manual_seed(9)
    cpu = torch.device("cpu")
    pool = DoublePool(_images())
    if case == "wgan-gp":
        g, d = TinyGenerator().double(), Critic(1, SIZE, 4).double()
        return {"g": g, "d": d}, lambda: train_wgan_gp(g, d, pool, GMIParams(**budget), device=cpu, rng=rng)
    target = classifier().double().eval().requires_grad_(False)
    if case == "kplus1":
        g = TinyGenerator().double()
        d = ClassDiscriminator(1, SIZE, 4, CLASSES, mbd_kernels=3, mbd_kernel_dim=2).double()
        params = KEDMIParams(**budget, mbd_kernels=3, mbd_kernel_dim=2)
        return {"g": g, "d": d}, lambda: train_kplus1_gan(g, d, target, pool, params, device=cpu, rng=rng)
    if case == "cgan":
        g, d = TinyGenerator(conditional=True).double(), ProjectionDiscriminator(1, SIZE, 4, CLASSES).double()
        labels = torch.arange(20) % CLASSES
        params = PLGMIParams(**budget, alpha=0.5)
        return {"g": g, "d": d}, lambda: train_cgan(g, d, target, pool.images, labels, params, CLASSES,
                                                    device=cpu, rng=rng)
    assert case == "distill"
    student = classifier().double()
    params = LOMMAGMIParams(distill_epochs=1, distill_optimizer="sgd", distill_lr=1.0, distill_batch_size=BATCH,
                            distill_temperature=2.0)
    return {"s": student}, lambda: distill(student, target, _images(n=BATCH), params, device=cpu, rng=rng)


CASES = ("wgan-gp", "kplus1", "cgan", "distill")


def one_step(case: str, cache: StageCache) -> dict[str, torch.Tensor]:
    """The change of every parameter in one step, trained through the attacks' cache helpers."""
    networks, train = gan_case(case)
    before = {f"{p}.{k}": v.clone() for p, m in networks.items() for k, v in m.state_dict().items()}
    ctx = AttackContext(target=None, data=None, evaluation_model=None, device=torch.device("cpu"), seed=0,
                        cache=cache)
    with sgd_for_adam():
        if case == "distill":  # LOMMA's surrogates go through the core's load_or_compute
            cache.load_or_compute("lomma-surrogates", {"case": case}, networks, train, what=case)
        else:
            load_or_train(ctx, "test", f"{case}-gan", {"case": case}, networks, lambda: train() or {})
    return {f"{p}.{k}": before[f"{p}.{k}"] - v for p, m in networks.items() for k, v in m.state_dict().items()
            if v.is_floating_point()}


def tl_dmi_pretraining(cache: StageCache) -> tuple[int, nn.Module]:
    """Build a TL-DMI target (1 pretraining epoch on digits' public split); the images its first
    convolution saw while pretraining."""
    from workbench import load_registry
    from workbench.components.protocols import DefenseContext
    from workbench.recipe.schema import TrainConfig

    registry = load_registry()
    torch.manual_seed(0)
    model = registry.create("backbone", "mcnn", width=4).build(5, 1, 16)
    rows = [0]
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first.register_forward_pre_hook(lambda _m, args: rows.__setitem__(0, rows[0] + args[0].shape[0]))
    ctx = DefenseContext(num_classes=5, data=registry.create("dataset", "digits").load(0), seed=0, cache=cache,
                         train=TrainConfig(epochs=1, batch_size=64))
    model = registry.create("defense", "tl-dmi").prepare_model(model, 5, ctx)
    return rows[0], model


def gmi_split_over_ranks(rank: int, cache_dir: Path) -> dict[str, torch.Tensor] | None:
    """GMI on a toy target: on rank 0 alone first (its prior cached), then on every rank with the
    search split over them (`searched_by_every_rank`); rank 0 returns both results."""
    import torch.distributed as dist

    from workbench import load_registry
    from workbench.running.attack_shards import PRIORS_ONLY, searched_by_every_rank

    registry = load_registry()
    data = registry.create("dataset", "digits").load(0)
    torch.manual_seed(1)
    target = nn.Sequential(nn.Flatten(), nn.Linear(256, data.num_classes)).eval().requires_grad_(False)
    # 3 classes x 2 restarts x 2 latents in forward batches of 4: 3 batches, 2 + 1 over the ranks.
    attack = registry.create("attack", "gmi", gan_steps=2, gan_batch_size=16, iterations=3, restarts=2,
                             samples_per_class=2, classes=[0, 1, 2], max_batch=4)
    ctx = AttackContext(target=target, data=data, evaluation_model=None, device=torch.device("cpu"), seed=0,
                        cache=StageCache(cache_dir) if rank == 0 else StageCache(None))
    out = None
    if rank == 0:  # one process: the prior trained and cached, then the whole search
        attack.run(dataclasses.replace(ctx, shard=PRIORS_ONLY))
        alone = attack.run(ctx)
        out = {"alone_images": alone.images, "alone_targets": alone.targets}
    dist.barrier()
    searched: set[int] = set()
    ctx = dataclasses.replace(ctx, emit=lambda type, **f: searched.add(f["target_class"])
                              if f.get("stage") == "attack:gmi" and "target_class" in f else None)
    merged = searched_by_every_rank(attack, ctx, target)
    torch.save(sorted(searched), cache_dir.parent / f"gmi-searched-rank{rank}.pt")
    if rank == 0:
        out |= {"images": merged.images, "targets": merged.targets, "restarts": merged.restarts,
                "alone_restarts": alone.restarts, "confidence": torch.tensor(merged.figures["target_confidence"]),
                "alone_confidence": torch.tensor(alone.figures["target_confidence"])}
    else:
        assert merged is None
    return out


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        with distributed.lockstep():
            for case in CASES:
                torch.save(one_step(case, StageCache(None)), Path(out_dir) / f"{case}-rank{rank}.pt")
        # A hit: rank 0 finds the entry in its cache (trained alone, before); rank 1 (no cache) must
        # not train, and ends with rank 0's weights.
        cache = StageCache(Path(out_dir) / "cache") if rank == 0 else StageCache(None)
        ctx = AttackContext(target=None, data=None, evaluation_model=None, device=torch.device("cpu"), seed=0,
                            cache=cache)
        networks, _ = gan_case("wgan-gp")
        if rank == 0:
            def quarter() -> dict:
                with torch.no_grad():
                    for p in networks["g"].parameters():
                        p.fill_(0.25)
                return {}

            load_or_train(ctx, "test", "hit-gan", {"k": 1}, networks, quarter)
            networks, _ = gan_case("wgan-gp")

        def refuse():
            raise AssertionError(f"rank {rank} trained a stage rank 0 found in its cache")

        with distributed.lockstep():
            hit = load_or_train(ctx, "test", "hit-gan", {"k": 1}, networks, refuse)
            torch.save({"hit": hit, **networks["g"].state_dict()}, Path(out_dir) / f"hit-rank{rank}.pt")
            # TL-DMI's pretraining inside prepare_model, as a target is built under torchrun.
            tl_cache = StageCache(Path(out_dir) / "tl-cache") if rank == 0 else StageCache(None)
            rows, model = tl_dmi_pretraining(tl_cache)
            torch.save({"rows": rows, **model.state_dict()}, Path(out_dir) / f"tl-dmi-rank{rank}.pt")
        split = gmi_split_over_ranks(rank, Path(out_dir) / "gmi-cache")
        if rank == 0:
            torch.save(split, Path(out_dir) / "gmi-split.pt")
        # Ranks that reach different stages (another version, another recipe) say so in one line.
        with distributed.lockstep():
            try:
                distributed.agree_on_hit("gmi-gan" if rank == 0 else "kedmi-gan", False)
            except RunError as exc:
                (Path(out_dir) / f"mismatch-rank{rank}.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prior-ranks")
    init_file = tempfile.mktemp(dir=out, prefix="init")
    mp.spawn(_rank_main, args=(WORLD, init_file, str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_prior_step_in_two_ranks_is_the_one_process_step_on_the_global_batch(case, ranks_dir):
    expected = one_step(case, StageCache(None))
    assert max(float(v.abs().max()) for v in expected.values()) > 1e-3  # the step moved the networks
    for rank in range(WORLD):
        got = torch.load(ranks_dir / f"{case}-rank{rank}.pt")
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.allclose(got[key], value, atol=1e-10, rtol=0), (case, rank, key)


@pytest.mark.slow
def test_a_cache_hit_on_rank_zero_hands_its_weights_to_the_other_ranks(ranks_dir):
    zero, one = (torch.load(ranks_dir / f"hit-rank{r}.pt") for r in range(WORLD))
    assert zero.pop("hit") is True and one.pop("hit") is True
    for key, value in zero.items():
        assert torch.equal(value, torch.full_like(value, 0.25)) and torch.equal(one[key], value), key


def test_without_lockstep_the_helpers_are_the_identity():
    networks, train = gan_case("wgan-gp")
    calls = []
    out = distributed.split_forward(lambda x: calls.append(len(x)) or x * 2, torch.ones(5))
    assert calls == [5] and torch.equal(out, torch.full((5,), 2.0))
    assert distributed.agree_on_hit("stage", False) is False and not distributed.in_data_parallel()
    with distributed.lockstep(), distributed.training_together(*networks.values()):
        assert not distributed.in_lockstep() and not distributed.in_data_parallel()  # no process group


def test_per_rank_minibatch_discrimination_would_train_a_different_discriminator():
    """Why the MBD layer gathers: on a slice, an image's closeness term sees only half its batch."""
    torch.manual_seed(0)
    d = ClassDiscriminator(1, SIZE, 4, CLASSES, mbd_kernels=3, mbd_kernel_dim=2).double()
    x = _images(n=4)
    x = torch.cat([x[:2], x[:2] + 1e-3 * x[2:]])  # near-copies: strong coupling across the halves
    whole = d(x)[1][:2]
    half = d(x[:2])[1]
    assert (whole - half).abs().max() > 1e-3



# ------------------------------------------------------------------ end to end under torchrun

ATTACKS = """
[attacks.gmi]
use = "gmi"
gan_steps = 3
gan_batch_size = 16
iterations = 3
restarts = 1
samples_per_class = 2
classes = [0, 1]

[attacks.kedmi]
use = "kedmi"
gan_steps = 3
gan_batch_size = 16
iterations = 3
fits = 1
samples_per_class = 2
classes = [0, 1]
"""


def _run(tmp_path: Path, run_dir: str) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "workbench", "run", "tiny.toml", "--nproc", "2", "--run-dir",
                           run_dir, "--cache-dir", "cache", "--quiet"], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_torchrun_trains_the_gan_priors_on_every_rank_and_reuses_them(tmp_path):
    recipe = digits_attack_recipe("ddp priors", ATTACKS).replace("epochs = 20", "epochs = 1").replace(
        "epochs = 15", "epochs = 1")
    # A second variant whose target is built with a pretraining (TL-DMI), on every rank together.
    recipe = recipe.replace('[[metrics]]', '[[variants]]\nname = "tl-dmi"\ndefense = { use = "tl-dmi" }\n'
                            '[[metrics]]', 1)
    (tmp_path / "tiny.toml").write_text(recipe)
    code, output = _run(tmp_path, "first")
    assert code == 0, output
    logs = [e.get("message", "") for e in _events(tmp_path / "first") if e["type"] == "log"]
    # GMI's prior in the shared stages (attack-prepare), KED-MI's per-target GAN before its search.
    assert any("trained gmi-gan by 2 ranks together" in m for m in logs), logs
    assert any("trained kedmi-gan by 2 ranks together" in m for m in logs), logs
    assert any("tl-dmi: pretrained on" in m and "1 epochs" in m for m in logs), logs
    for variant in ("none", "tl-dmi"):
        results = json.loads((tmp_path / "first" / variant / "results.json").read_text())
        assert set(results["attacks"]) == {"gmi", "kedmi"}
    # Again with the same cache: rank 0 hits every prior, the other rank takes its weights, nobody hangs.
    code, output = _run(tmp_path, "second")
    assert code == 0, output
    logs = [e.get("message", "") for e in _events(tmp_path / "second") if e["type"] == "log"]
    assert not any("ranks together" in m for m in logs)
    assert any("tl-dmi: pretrained on" in m and "from the stage cache" in m for m in logs), logs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "first", "second", "tiny.toml"]


@pytest.mark.slow
def test_tl_dmi_pretraining_is_shared_out_over_the_ranks(ranks_dir):
    """Built in lockstep, a defense's pretraining trains data-parallel: each rank sees half the
    public images (one process sees them all), and every rank ends with rank 0's weights."""
    alone, _ = tl_dmi_pretraining(StageCache(None))
    zero, one = (torch.load(ranks_dir / f"tl-dmi-rank{r}.pt") for r in range(WORLD))
    rows = [zero.pop("rows"), one.pop("rows")]
    assert sum(rows) == alone and abs(rows[0] - rows[1]) <= alone // 64 + 1  # at most one row per batch
    for key, value in zero.items():
        assert torch.equal(one[key], value), key


@pytest.mark.slow
def test_the_ranks_split_an_attacks_search_into_the_one_process_result(ranks_dir):
    """Under torchrun each rank searches a contiguous shard of the classes' forward batches; rank 0's
    merge is the one-process search bit for bit (same prior, same thread count)."""
    assert [torch.load(ranks_dir / f"gmi-searched-rank{r}.pt") for r in range(WORLD)] == [[0, 1], [2]]
    got = torch.load(ranks_dir / "gmi-split.pt")
    assert got["images"].shape[0] == 3 * 2 * 2
    for key in ("images", "targets", "restarts", "confidence"):
        assert torch.equal(got[key], got[f"alone_{key}"]), key


@pytest.mark.slow
def test_ranks_that_reach_different_stages_stop_with_one_line(ranks_dir):
    assert not (ranks_dir / "mismatch-rank0.txt").exists()
    assert (ranks_dir / "mismatch-rank1.txt").read_text() == (
        "rank 1 reached stage 'kedmi-gan' where rank 0 reached 'gmi-gan' (are all ranks running the same "
        "workbench version and recipe?)")
