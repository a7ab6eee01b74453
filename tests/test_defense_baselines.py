"""The baselines BiDO is compared against (negls, random-erasing, trap-mid, tl-dmi, dp-sgd) and the
defense interface they share: losses and transforms against values worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from workbench import load_registry
from workbench.api import DefenseContext, StageCache, TrainingSetup
from workbench.recipe.schema import TrainConfig
from workbench.running.trainer import train_classifier

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def digits(registry):
    return registry.create("dataset", "digits").load(0)


def _mcnn(registry, width=8):
    torch.manual_seed(0)
    return registry.create("backbone", "mcnn", width=width).build(5, 1, 16)


# ------------------------------------------------------------------ negative label smoothing


def test_negls_is_cross_entropy_against_the_negatively_smoothed_target(registry):
    """α = −0.05, K = 5: the target is q_y = 1 − α + α/K = 1.04 and q_k = α/K = −0.01 elsewhere."""
    defense = registry.create("defense", "negls", alpha=-0.05, schedule="constant")
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 1.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    y = torch.tensor([0, 3])
    out = defense.loss(x=None, y=y, logits=logits, hiddens=[], model=None)
    q = torch.full((2, 5), -0.01)
    q[0, 0] = q[1, 3] = 1.04
    assert q.sum(1).tolist() == pytest.approx([1.0, 1.0])
    expected = -(q * F.log_softmax(logits, 1)).sum(1).mean()
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-6)
    # Negative smoothing rewards confidence beyond plain CE: the loss is below CE here.
    assert float(out.loss) < float(F.cross_entropy(logits, y))
    # Positive α is ordinary label smoothing, exactly torch's.
    positive = registry.create("defense", "negls", alpha=0.1)
    out = positive.loss(x=None, y=y, logits=logits, hiddens=[], model=None)
    assert float(out.loss) == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=0.1)), rel=1e-6)


def test_negls_schedule_follows_the_reference_ramp(registry):
    """Reference at 100 epochs: 0 before epoch 50, α·(e + 1 − 50)/50 for e in 50..74, then α."""
    defense = registry.create("defense", "negls", alpha=-0.05)
    factors = {}
    for epoch in (0, 49, 50, 60, 74, 75, 99):
        defense.start_epoch(epoch, 100)
        factors[epoch] = defense.alpha
    assert factors[0] == factors[49] == 0.0
    assert factors[50] == pytest.approx(-0.05 / 50)
    assert factors[60] == pytest.approx(-0.05 * 11 / 50)
    assert factors[74] == pytest.approx(-0.05 * 25 / 50)
    assert factors[75] == factors[99] == -0.05
    # The digits tier's 20 epochs: start at 10, ramp over 5.
    defense.start_epoch(10, 20)
    assert defense.alpha == pytest.approx(-0.005)
    defense.start_epoch(15, 20)
    assert defense.alpha == -0.05
    # `auto` leaves a positive α constant (the reference schedules only negative factors).
    positive = registry.create("defense", "negls", alpha=0.1)
    positive.start_epoch(0, 100)
    assert positive.alpha == 0.1


# ------------------------------------------------------------------ random erasing


def test_random_erasing_area_shape_and_fill_statistics(registry):
    """Square patches of U(0.1, 0.4) of the area: mean erased share ≈ 0.25, every share in range."""
    defense = registry.create("defense", "random-erasing", value=[1.0])
    x = torch.zeros(2000, 1, 64, 64)
    erased = defense.erase(x, torch.Generator().manual_seed(0))
    mask = erased[:, 0] == 1.0
    share = mask.float().mean((1, 2))
    # Rounding the side to whole pixels moves the share by at most (2·side + 1)/4096.
    assert share.min() >= 0.1 - 0.01 and share.max() <= 0.4 + 0.01
    assert float(share.mean()) == pytest.approx(0.25, abs=0.01)
    rows, cols = mask.any(2).sum(1), mask.any(1).sum(1)
    assert torch.equal(rows, cols) and torch.equal(rows * cols, mask.sum((1, 2)))  # filled squares
    # Random location: the patch centre is spread over the image (mean near the middle).
    centre = (mask.float() * torch.arange(64).view(1, 1, 64)).sum((1, 2)) / mask.sum((1, 2))
    assert float(centre.mean()) == pytest.approx(31.5, abs=1.0)
    # The reference fills 0.485, 0.456, 0.406 in images normalised with mean 0.5, std 0.5: in pixels
    # 0.5 + 0.5·v per channel; grayscale images get the mean of the three.
    rgb = registry.create("defense", "random-erasing").erase(torch.zeros(4, 3, 16, 16), torch.Generator())
    assert [rgb[:, c].unique().tolist() for c in range(3)] == [
        pytest.approx([0.0, 0.5 + 0.5 * v]) for v in (0.485, 0.456, 0.406)]
    gray = registry.create("defense", "random-erasing").erase(torch.zeros(4, 1, 16, 16), torch.Generator())
    assert gray.unique().tolist() == pytest.approx([0.0, 0.5 + 0.5 * (0.485 + 0.456 + 0.406) / 3])
    # probability 0.5: about half the images are touched.
    half = registry.create("defense", "random-erasing", probability=0.5, value=[1.0])
    touched = (half.erase(torch.zeros(1000, 1, 16, 16), torch.Generator().manual_seed(1)) > 0).any((1, 2, 3))
    assert float(touched.float().mean()) == pytest.approx(0.5, abs=0.05)


def test_random_erasing_wraps_another_defense(registry):
    """BiDO + random erasing: the batch is erased, BiDO's loss is computed on what the model saw."""
    model = _mcnn(registry)
    both = registry.create("defense", "random-erasing", defense={"use": "bido", "lambda_x": 0.3})
    both.start_training(model, None, TrainingSetup(dataset_size=32, batch_size=32, epochs=1, device=CPU, seed=3))
    x, y = torch.rand(32, 1, 16, 16), torch.arange(32) % 5
    seen, labels = both.transform(x, y, model=model, epoch=0, step=0)
    assert torch.equal(labels, y) and not torch.equal(seen, x)
    again, _ = both.transform(x, y, model=model, epoch=0, step=0)
    assert torch.equal(seen, again)  # the erasing stream depends on (seed, epoch, step) only
    logits, hiddens = model.forward_hidden(seen)
    out = both.loss(x=seen, y=y, logits=logits, hiddens=hiddens, model=model)
    plain = registry.create("defense", "bido", lambda_x=0.3).loss(x=seen, y=y, logits=logits, hiddens=hiddens,
                                                                    model=model)
    assert torch.allclose(out.loss, plain.loss)
    dp = registry.create("defense", "random-erasing", defense={"use": "dp-sgd"})
    assert dp.report_keys == ("epsilon", "delta")


# ------------------------------------------------------------------ Trap-MID


def test_trap_mid_blends_triggers_and_weights_the_trapdoor_loss(registry):
    model = _mcnn(registry)
    defense = registry.create("defense", "trap-mid", step_size=0.0)
    defense.prepare_model(model, 5)
    defense.start_training(model, None, TrainingSetup(dataset_size=40, batch_size=20, epochs=1, device=CPU, seed=0))
    defense.start_epoch(0, 1)
    x, y = torch.rand(20, 1, 16, 16), torch.arange(20) % 5
    batch, labels = defense.transform(x, y, model=model, epoch=0, step=0)
    trap_y = labels[20:]
    assert torch.equal(batch[:20], x) and torch.equal(labels[:20], y)
    assert torch.allclose(batch[20:], 0.98 * x + 0.02 * defense.triggers[trap_y])
    assert defense.triggers.shape == (5, 1, 16, 16) and defense.triggers.min() >= 0 and defense.triggers.max() <= 1
    _, second = defense.transform(x, y, model=model, epoch=0, step=1)
    # Over the epoch (40 images) every class is a trapdoor target equally often.
    assert torch.bincount(torch.cat([trap_y, second[20:]]), minlength=5).tolist() == [8] * 5
    logits = model(batch)
    out = defense.loss(x=batch, y=labels, logits=logits, hiddens=[], model=model)
    expected = 0.8 * F.cross_entropy(logits[:20], y) + 0.2 * F.cross_entropy(logits[20:], trap_y)
    assert torch.allclose(out.loss, expected)


def test_trap_mid_trigger_step_is_signed_and_lowers_the_trapdoor_loss(registry):
    model = _mcnn(registry)
    defense = registry.create("defense", "trap-mid", step_size=0.05, alpha=0.5, discriminator=False)
    defense.prepare_model(model, 5)
    defense.start_training(model, None, TrainingSetup(dataset_size=64, batch_size=64, epochs=1, device=CPU, seed=0))
    defense.start_epoch(0, 1)
    x = torch.rand(64, 1, 16, 16)
    defense._init_triggers(x)
    before = defense.triggers.clone()
    trap_y = defense._next_labels(64, CPU)
    model.eval()
    loss_before = F.cross_entropy(model(0.5 * x + 0.5 * before[trap_y]), trap_y)
    defense.update_triggers(model, x, trap_y)
    step = (defense.triggers - before).abs()
    inside = (before > 0.05) & (before < 0.95)  # not clamped
    assert torch.allclose(step[inside], torch.full_like(step[inside], 0.05), atol=1e-6)
    loss_after = F.cross_entropy(model(0.5 * x + 0.5 * defense.triggers[trap_y]), trap_y)
    assert float(loss_after.detach()) < float(loss_before.detach())
    assert all(p.grad is None for p in model.parameters())  # weights untouched


def test_trap_mid_discriminator_learns_clean_from_triggered(registry):
    model = _mcnn(registry)
    # Triggers barely move (tiny step), so the discriminator faces a fixed task it should learn.
    defense = registry.create("defense", "trap-mid", step_size=1e-6, alpha=0.5)
    defense.prepare_model(model, 5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    defense.start_training(model, optimizer, TrainingSetup(dataset_size=64, batch_size=64, epochs=1, device=CPU,
                                                           seed=0))
    d = defense.discriminator
    assert d is not None and d is not model and d(torch.rand(2, 1, 16, 16)).shape == (2, 1)
    assert isinstance(defense.discriminator_optimizer, torch.optim.Adam)
    defense.start_epoch(0, 1)
    x = torch.rand(64, 1, 16, 16)
    losses = []
    for step in range(15):
        defense.transform(x, torch.zeros(64, dtype=torch.long), model=model, epoch=0, step=step)
        losses.append(defense.last_discriminator_loss)
    assert losses[-1] < losses[0]  # it learns to tell triggered images from clean ones
    state = defense.state_dict()
    assert "triggers" in state and any(k.startswith("discriminator.") for k in state)
    assert any(k.startswith("discriminator_optimizer.") for k in state)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------ TL-DMI


def test_tl_dmi_pretrains_once_freezes_the_front_and_adds_a_fresh_head(registry, digits, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64)
    cache = StageCache(tmp_path / "cache")
    logs = []
    ctx = DefenseContext(num_classes=5, data=digits, seed=0, cache=cache, train=config,
                         emit=lambda type, **f: logs.append(f.get("message", "")))
    defense = registry.create("defense", "tl-dmi")
    model = defense.prepare_model(_mcnn(registry), 5, ctx)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # MCNN: 3 convolutions; round(0.6·3) = 2 frozen with their BatchNorms; block 3 and the head train.
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3
    assert {f"{convs[0]}.weight", f"{convs[1]}.weight"} <= frozen and f"{convs[2]}.weight" not in frozen
    head = defense.head
    assert all(p.requires_grad for p in head.parameters()) and head.out_features == 5
    assert "pretrained on" in logs[-1] and "1 epochs" in logs[-1]
    # The second build finds the pretraining in the cache, with the same weights.
    again = registry.create("defense", "tl-dmi").prepare_model(_mcnn(registry), 5, ctx)
    assert "from the stage cache" in logs[-1]
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    groups = defense.param_groups(model)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_tl_dmi_loads_a_local_weights_file(registry, tmp_path):
    from safetensors.torch import save_file

    source = registry.create("backbone", "mcnn", width=8).build(7, 1, 16)  # another head size
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    defense = registry.create("defense", "tl-dmi", source="file", pretrained=str(tmp_path / "w.safetensors"),
                              freeze=0.0)
    model = defense.prepare_model(_mcnn(registry), 5, DefenseContext(num_classes=5))
    loaded = source.state_dict()
    for name, value in model.state_dict().items():
        if name in loaded and loaded[name].shape == value.shape and not name.startswith("head"):
            assert torch.equal(value, loaded[name]), name


# ------------------------------------------------------------------ DP-SGD


def _rdp_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Full-batch Gaussian mechanism (q = 1): RDP(α) = T·α / (2σ²), converted to (ε, δ) as Opacus
    does (Balle et al. 2020), minimised over Opacus's grid of orders α."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    return min(steps * a / (2 * sigma**2) - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
               for a in orders)


def test_dp_sgd_epsilon_matches_the_gaussian_mechanism_by_hand(registry):
    pytest.importorskip("opacus")
    data = [(torch.rand(1, 16, 16), i % 5) for i in range(32)]
    defense = registry.create("defense", "dp-sgd", noise_multiplier=2.0, delta=1e-5)
    model = defense.prepare_model(_mcnn(registry, width=4), 5, DefenseContext(num_classes=5))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    config = TrainConfig(epochs=3, batch_size=32)  # q = 1: one step an epoch
    result = train_classifier(model, defense, data, config, device=CPU, seed=0)
    assert [h["epsilon"] for h in result.history] == pytest.approx(
        [_rdp_epsilon(2.0, t, 1e-5) for t in (1, 2, 3)], rel=1e-6)
    assert result.history[-1]["delta"] == 1e-5
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())


def test_dp_sgd_clips_and_noises_through_opacus(registry):
    """σ = 0 and C tiny: the step is the mean of per-sample gradients clipped to C (norm ≤ C)."""
    pytest.importorskip("opacus")
    data = [(torch.rand(1, 16, 16), i % 5) for i in range(16)]
    defense = registry.create("defense", "dp-sgd", noise_multiplier=0.0, max_grad_norm=1e-3)
    model = defense.prepare_model(_mcnn(registry, width=4), 5, DefenseContext(num_classes=5))
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainConfig(epochs=1, batch_size=16, optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0})
    train_classifier(model, defense, data, config, device=CPU, seed=0)
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert 0 < float(update.norm()) <= 1e-3 + 1e-7


# ------------------------------------------------------------------ resume keeps the defense's state


@pytest.mark.parametrize("name", ["trap-mid", "dp-sgd"])
@pytest.mark.slow
def test_resume_restores_the_defense_state(registry, digits, tmp_path, name):
    if name == "dp-sgd":
        pytest.importorskip("opacus")
    config = TrainConfig(epochs=2, batch_size=64)
    subset = torch.utils.data.Subset(digits.train, range(256))

    def run(folder, epochs, resume=False):
        defense = registry.create("defense", name)
        model = defense.prepare_model(_mcnn(registry, width=4), 5, DefenseContext(num_classes=5))
        result = train_classifier(model, defense, subset, config.model_copy(update={"epochs": epochs}),
                                  device=CPU, seed=0, checkpoint_dir=folder, resume=resume)
        return model, result

    straight, full = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    resumed, rest = run(tmp_path / "b", 2, resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert rest.history[-1] == full.history[-1]


# ------------------------------------------------------------------ the documented example, end to end


def test_the_plugin_guide_defense_example_trains(digits):
    """docs/plugins.md's `Cutout` example, executed as written, through the one trainer."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "class Cutout" in block)
    namespace: dict = {}
    exec(code, namespace)
    defense = namespace["Cutout"](namespace["CutoutParams"](size=4))
    model = load_registry().create("backbone", "mcnn", width=4).build(5, 1, 16)
    subset = torch.utils.data.Subset(digits.train, range(128))
    result = train_classifier(model, defense, subset, TrainConfig(epochs=1), device=CPU, seed=0)
    assert math.isfinite(result.history[-1]["ce"])
    seen, _ = defense.transform(torch.ones(2, 1, 16, 16), torch.zeros(2, dtype=torch.long), model=model,
                                epoch=0, step=0)
    assert int((seen == 0).sum()) == 2 * 16


# ------------------------------------------------------------------ every defense trained and attacked


DEFENSE_VARIANTS = """
[[variants]]
name = "negls"
defense = { use = "negls", alpha = -0.05 }

[[variants]]
name = "tl-dmi"
defense = { use = "tl-dmi", pretrain_epochs = 1 }

[[variants]]
name = "bido-re"
[variants.defense]
use = "random-erasing"
defense = { use = "bido", lambda_x = 0.3, lambda_y = 0.5 }

[[variants]]
name = "trap-mid"
defense = { use = "trap-mid" }

[[variants]]
name = "dp-sgd"
defense = { use = "dp-sgd" }

[[metrics]]
use = "accuracy"

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
"""


@pytest.mark.slow
def test_every_new_defense_trains_and_is_attacked_end_to_end(run_tiny_recipe):
    pytest.importorskip("opacus")
    from workbench.testing import TINY_RECIPE

    run_dir, results = run_tiny_recipe(TINY_RECIPE.replace("epochs = 5", "epochs = 2") + DEFENSE_VARIANTS,
                                       workers=1)
    by_name = {v["name"]: v for v in results["variants"]}
    assert set(by_name) == {"none", "negls", "tl-dmi", "bido-re", "trap-mid", "dp-sgd"}
    for variant in by_name.values():
        assert 0 <= variant["utility"]["test_accuracy"] <= 1
        assert 0 <= variant["attacks"]["gmi"]["top1"] <= 1
    assert by_name["dp-sgd"]["defense"]["epsilon"] > 0 and by_name["dp-sgd"]["defense"]["delta"] == 1e-5
    assert 0 <= by_name["trap-mid"]["defense"]["trap_accuracy"] <= 1
    assert "defense" not in by_name["none"]
    saved = json.loads((run_dir / "dp-sgd" / "results.json").read_text())
    assert saved["defense"]["epsilon"] == by_name["dp-sgd"]["defense"]["epsilon"]
