"""RoLSS, SCA, Gaussian noise, AT-AT and Purifier: each defense's core computation against an
independent float64 computation, its refusals, and a digits run of each through the one trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench import load_registry
from workbench.api import DefenseContext, WorkbenchError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def digits(registry):
    return registry.create("dataset", "digits").load(0)


def _mcnn(registry, width=8, seed=0):
    torch.manual_seed(seed)
    return registry.create("backbone", "mcnn", width=width).build(5, 1, 16)


def _resnet18(registry, seed=0, **kwargs):
    torch.manual_seed(seed)
    return registry.create("backbone", "timm", model_name="resnet18",
                           model_kwargs={"zero_init_last": False, **kwargs}).build(5, 1, 32)


# ------------------------------------------------------------------ RoLSS


def _bn64(x, bn):
    return F.batch_norm(x, bn.running_mean.double(), bn.running_var.double(), bn.weight.double(), bn.bias.double(),
                        False, 0.0, bn.eps)


def _basic_block64(block, x, scale):
    """act(F(x) + s·P(x)) of a timm BasicBlock from its weights, in float64."""
    conv = lambda c, t: F.conv2d(t, c.weight.double(), None, c.stride, c.padding)  # noqa: E731
    branch = _bn64(conv(block.conv2, F.relu(_bn64(conv(block.conv1, x), block.bn1))), block.bn2)
    shortcut = x
    projection = [m for m in (block.downsample or []) if type(m).__name__ != "ShortcutScale"]
    if projection:
        shortcut = _bn64(conv(projection[0], x), projection[1])
    return F.relu(branch + scale * shortcut)


@pytest.mark.parametrize("scale", [0.0, 0.2, 1.0])
def test_rolss_block_is_act_of_residual_plus_scaled_shortcut(registry, scale):
    """Every block of layer4 computes relu(F(x) + s·P(x)), the projection block included; the
    other stages and the state-dict keys are untouched."""
    reference = _resnet18(registry)
    model = _resnet18(registry)
    keys = list(model.state_dict())
    for module in (*model.modules(), *reference.modules()):  # random BN statistics make the check sharper
        if isinstance(module, nn.BatchNorm2d):
            g = torch.Generator().manual_seed(sum(module.weight.shape))
            module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
    registry.create("defense", "rolss", skip=[1, 1, 1, scale]).prepare_model(model, 5)
    assert list(model.state_dict()) == keys
    model.double().eval()
    g = torch.Generator().manual_seed(1)
    for index, channels, side in ((0, 256, 4), (1, 512, 2)):
        block = model.model.layer4[index]
        x = torch.randn(2, channels, side, side, generator=g, dtype=torch.float64)
        expected = _basic_block64(block, x, scale)
        with torch.no_grad():
            assert torch.allclose(block(x), expected, atol=1e-10, rtol=0)
    # Stages 1–3 unchanged: the same output as the undefended model's block.
    reference.double().eval()
    x = torch.randn(2, 128, 4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        reference.model.layer3.load_state_dict(model.model.layer3.state_dict())
        assert torch.equal(model.model.layer3(x), reference.model.layer3(x))


def test_rolss_zero_scale_gives_the_projection_a_zero_gradient(registry):
    model = _resnet18(registry)
    registry.create("defense", "rolss").prepare_model(model, 5)
    logits, _ = model.forward_hidden(torch.rand(4, 1, 32, 32))
    logits.sum().backward()
    projection = model.model.layer4[0].downsample[0].weight
    assert projection.grad is not None and float(projection.grad.abs().sum()) == 0.0
    assert float(model.model.layer3[0].conv1.weight.grad.abs().sum()) > 0


def test_rolss_reference_layer3_tail_drops_the_last_fifth_of_stage_3(registry):
    """resnet.py:295,310-321: blocks with index ≥ int(0.8·n) of layer3 have no shortcut (ResNet-18: 1 of 2)."""
    emitted = []
    ctx = DefenseContext(num_classes=5, emit=lambda type, **f: emitted.append(f["message"]))
    model = _resnet18(registry)
    registry.create("defense", "rolss", skip=[1, 1, 1, 1], reference_layer3_tail=True).prepare_model(model, 5, ctx)
    scales = [getattr(b.downsample[-1], "scale", 1.0) if b.downsample is not None else 1.0
              for b in model.model.layer3]
    assert scales == [1.0, 0.0]
    assert all(b.downsample is None or not hasattr(b.downsample[-1], "scale") for b in model.model.layer4)
    assert "stage 3: 1, 0" in emitted[0]


def test_rolss_scales_facenet_ir_units(registry):
    torch.manual_seed(0)
    model = registry.create("backbone", "facenet").build(5, 1, 16)
    registry.create("defense", "rolss", skip=[1, 1, 1, 0.5]).prepare_model(model, 5)
    model.double().eval()
    trunk = model.feature
    last = trunk.body[trunk.stage_ends[-1] - 1]
    x = torch.randn(2, 512, 1, 1, dtype=torch.float64)
    with torch.no_grad():
        plain_shortcut = last.shortcut_layer[0](x)  # the identity shortcut (a 1×1 max-pool)
        assert torch.allclose(last(x), last.res_layer(x) + 0.5 * plain_shortcut, atol=1e-12)
        first = trunk.body[0]
        assert not hasattr(first.shortcut_layer, "scale") and not any(
            type(m).__name__ == "ShortcutScale" for m in first.modules())


def test_rolss_refuses_backbones_without_residual_stages(registry):
    with pytest.raises(WorkbenchError) as info:
        registry.create("defense", "rolss").prepare_model(_mcnn(registry), 5)
    message = str(info.value)
    assert "\n" not in message and "MCNN" in message and "skip connections" in message and "resnet18" in message
    with pytest.raises(Exception, match="one shortcut scale per stage"):
        registry.create("defense", "rolss", skip=[1, 0])


def test_rolss_warns_about_timm_zero_init_last(registry):
    emitted = []
    ctx = DefenseContext(num_classes=5, emit=lambda type, **f: emitted.append((f["level"], f["message"])))
    torch.manual_seed(0)
    model = registry.create("backbone", "timm", model_name="resnet18").build(5, 1, 32)
    registry.create("defense", "rolss").prepare_model(model, 5, ctx)
    assert any(level == "warning" and "zero_init_last = false" in message for level, message in emitted)


# ------------------------------------------------------------------ SCA (LCA layers)


def _lcapt_codes(x, phi, lam, tau, iterations):
    """lcapt's loop in float64 (`lca.py:264-279`): G = Φ ⋆ Φ with the self-term at zero offset
    removed, inhibition conv2d(a, G, padding k − 1), the code from u after T − 1 updates."""
    x = x.double()
    n = x[0].numel()
    mean = x.sum(dim=(1, 2, 3), keepdim=True) / n
    centred = x - mean
    std = (centred.pow(2).sum(dim=(1, 2, 3), keepdim=True) / (n - 1)).sqrt()
    s = centred / (std + 1e-12)
    phi = phi.double()
    k = phi.shape[-1]
    drive = F.conv2d(s, phi, padding=k // 2)
    G = F.conv2d(phi, phi, padding=k - 1)
    for i in range(phi.shape[0]):
        G[i, i, k - 1, k - 1] = 0.0
    u = torch.zeros_like(drive)
    a = None
    for _ in range(iterations):
        a = torch.clamp(u - lam, min=0.0)
        inhibition = F.conv2d(a, G, padding=k - 1)
        u = u + (drive - u - inhibition) / tau
    return a


def test_lca_codes_match_lcapt_in_float64(registry):
    from workbench_defenses.sca import LCAConv2d

    g = torch.Generator().manual_seed(0)
    for c_in, c_out, k, lam in ((1, 6, 5, 0.5), (3, 4, 3, 0.25)):
        layer = LCAConv2d(c_in, c_out, k, lam, tau=4.0, iterations=12, generator=g).double()
        x = torch.rand(3, c_in, 9, 9, generator=g, dtype=torch.float64)
        codes = layer(x)
        expected = _lcapt_codes(x, layer.dictionary, lam, 4.0, 12)
        assert torch.allclose(codes, expected, atol=1e-12, rtol=0)
        assert (codes >= 0).all() and 0 < float((codes > 0).double().mean()) < 0.9  # sparse, not empty
        norms = layer.dictionary.flatten(1).norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
        assert "dictionary" in dict(layer.named_buffers()) and not list(layer.parameters())


def test_sca_replaces_mcnn_blocks_1_and_2_and_passes_gradients_to_the_input(registry):
    model = _mcnn(registry, width=4)
    ctx = DefenseContext(num_classes=5, seed=3)
    model = registry.create("defense", "sca", iterations=3).prepare_model(model, 5, ctx)
    first, second = model.blocks[0][0], model.blocks[1][0]
    assert tuple(first.dictionary.shape) == (4, 1, 5, 5) and tuple(second.dictionary.shape) == (8, 4, 5, 5)
    assert first.lam == 0.5 and isinstance(model.blocks[2][0], nn.Conv2d)
    # The same seed builds the same dictionary (a loaded target has the trained one's structure).
    again = registry.create("defense", "sca", iterations=3).prepare_model(_mcnn(registry, width=4), 5, ctx)
    assert torch.equal(again.blocks[0][0].dictionary, first.dictionary)
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    logits, hiddens = model.forward_hidden(x)
    logits.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0 and len(hiddens) == 3


def test_sca_front_mode_and_refusals(registry):
    model = registry.create("defense", "sca", mode="front", iterations=2).prepare_model(_mcnn(registry), 5)
    assert model.lca.dictionary.shape == (1, 1, 7, 7) and model.lca.lam == 0.25 and model.feature_dim == 32
    assert model.forward_hidden(torch.rand(2, 1, 16, 16))[0].shape == (2, 5)
    with pytest.raises(WorkbenchError) as info:
        registry.create("defense", "sca").prepare_model(_resnet18(registry), 5)
    message = str(info.value)
    assert "\n" not in message and "ResNet" in message and "mode = 'front'" in message
    with pytest.raises(Exception, match="odd"):
        registry.create("defense", "sca", kernel_size=4)


# ------------------------------------------------------------------ Gaussian noise


def test_fixed_gaussian_noise_shifts_the_logits_by_w_times_n(registry):
    """Dared: logits = W(z + n) + b, so model(x) − none(x) = W·n for every x (float64, 1e-12)."""
    plain = _mcnn(registry)
    model = _mcnn(registry)
    defense = registry.create("defense", "gaussian-noise", sigma=0.1)
    model = defense.prepare_model(model, 5, DefenseContext(num_classes=5, seed=7))
    x = torch.rand(6, 1, 16, 16)
    plain.double().eval()
    model.double().eval()
    with torch.no_grad():
        assert torch.equal(model(x.double()), plain(x.double()))  # training: no noise
        defense.finish_training(model)
        n = model.head.noise
        assert n.shape == (32,) and 0.05 < float(n.std()) < 0.15
        shift = model(x.double()) - plain(x.double())
        expected = (plain.head.weight.double() @ n.double()).expand(6, 5)
    assert torch.allclose(shift, expected, atol=1e-12, rtol=0)
    assert set(model.state_dict()) == set(plain.state_dict()) | {"head.noise", "head.fresh_std"}


def test_gaussian_noise_refuses_a_model_without_a_linear_head(registry):
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Conv2d(1, 5, 16)

    with pytest.raises(WorkbenchError) as info:
        registry.create("defense", "gaussian-noise").prepare_model(Conv(), 5)
    message = str(info.value)
    assert "\n" not in message and message.startswith("gaussian-noise: backbone Conv has no linear head")


def test_fresh_relative_noise_is_hcr_scaled_and_redrawn(registry, digits):
    model = _mcnn(registry)
    defense = registry.create("defense", "gaussian-noise", mode="fresh", relative=True, sigma=2.0)
    model = defense.prepare_model(model, 5, DefenseContext(num_classes=5, data=digits))
    model.eval()
    with torch.no_grad():
        features = torch.cat([model.forward_hidden(x)[1][-1] for x in digits.train.tensors[0].split(256)]).double()
        defense.finish_training(model)
        rms = float(features.pow(2).mean().sqrt())
        assert float(model.head.fresh_std) == pytest.approx(2.0 * rms, rel=1e-5)
        x = digits.test.tensors[0][:8]
        assert not torch.allclose(model(x), model(x))


# ------------------------------------------------------------------ AT-AT


def test_atat_pgd_step_matches_the_closed_form_gradient(registry):
    """A linear model f(x) = W·vec(x) + b: ∇_x CE_mean(f(x), t) = Wᵀ(softmax − onehot)/B in closed
    form; one targeted step is x' = clip_[0,1](x + clip_ε(x0 + U − x − α·sign(∇))) from x0 + U."""
    from workbench_defenses.atat import pgd

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(4, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0  # at the bound: the clamp matters
    t = torch.tensor([1, 2, 0, 1])
    eps, alpha = 0.05, 0.02
    torch.manual_seed(5)
    adv = pgd(model, x, t, epsilon=eps, step_size=alpha, iterations=1, targeted=True, low=0.0, high=1.0)
    torch.manual_seed(5)
    start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1).double()
    W, b = model[1].weight.double(), model[1].bias.double()
    p = torch.softmax(start.flatten(1) @ W.T + b, 1)
    grad_ce = (p - F.one_hot(t, 3).double()) @ W / 4
    stepped = start - alpha * grad_ce.sign().view_as(start)  # targeted: down the CE towards t
    expected = (x.double() + (stepped - x.double()).clamp(-eps, eps)).clamp(0, 1)
    assert torch.allclose(adv.double(), expected, atol=1e-7)
    assert float((adv - x).abs().max()) <= eps + 1e-7 and float(adv.min()) >= 0 and float(adv.max()) <= 1


def test_atat_targets_are_wrong_classes_and_the_loss_is_1_to_0_08(registry):
    from workbench_defenses.atat import wrong_classes

    torch.manual_seed(0)
    y = torch.arange(5).repeat(2000)
    t = wrong_classes(y, 5)
    assert not (t == y).any()
    share_next = float((t == (y + 1) % 5).double().mean())
    assert share_next == pytest.approx(0.4, abs=0.02)  # (t + 1) mod K: 2/K for y + 1 (reference quirk)

    defense = registry.create("defense", "at-at")
    model = defense.prepare_model(_mcnn(registry), 5)
    x = torch.rand(6, 1, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    joined, labels = defense.transform(x, y, model=model, epoch=0, step=0)
    assert joined.shape == (12, 1, 16, 16) and torch.equal(labels[:6], y) and not (labels[6:] == y).any()
    assert float((joined[6:] - x).abs().max()) <= 2.5e-4 + 1e-7
    logits = model(joined)
    out = defense.loss(x=joined, y=labels, logits=logits, hiddens=[], model=model)
    logp = torch.log_softmax(logits.detach().double(), 1)
    nll = -logp.gather(1, labels.view(-1, 1)).squeeze(1)
    expected = nll[:6].sum() + 0.08 * nll[6:].sum()
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    success = float((logits[6:].argmax(1) == labels[6:]).double().mean())
    assert out.logs["attack_success"] == pytest.approx(success)
    mean = registry.create("defense", "at-at", reduction="mean")
    assert float(mean.loss(x=joined, y=labels, logits=logits, hiddens=[], model=model).loss.detach()) == pytest.approx(
        float(nll[:6].mean() + 0.08 * nll[6:].mean()), rel=1e-6)


# ------------------------------------------------------------------ Purifier


def test_purifier_forward_and_loss_match_float64(registry):
    from workbench_defenses.purifier import purifier_loss

    target = _mcnn(registry)
    defense = registry.create("defense", "purifier", cond_dim=16)
    model = defense.prepare_model(target, 5, DefenseContext(num_classes=5, seed=1))
    model.eval()
    x = torch.rand(7, 1, 16, 16)
    with torch.no_grad():
        logits = model.target(x)
        assert torch.equal(model(x), logits)  # before fitting: exactly the target
        model.fitted.fill_(1)
        purified = model(x)
    mlp = model.purifier
    l64 = logits.double()
    c = l64.argmax(1)
    hidden = torch.relu(torch.cat([l64, mlp.embedding.weight.double()[c]], 1) @ mlp.fc1.weight.double().T
                        + mlp.fc1.bias.double())
    expected = l64 + hidden @ mlp.fc2.weight.double().T + mlp.fc2.bias.double()
    assert torch.allclose(purified.double(), expected, atol=1e-5)
    loss, ce, mse = purifier_loss(purified, logits, 0.1)
    p = expected.double()
    ce64 = -(torch.log_softmax(p, 1).gather(1, c.view(-1, 1))).mean()
    mse64 = (p - l64).pow(2).mean()
    assert float(loss) == pytest.approx(float(ce64 + 0.1 * mse64), rel=1e-5)
    assert mlp.fc1.in_features == 5 + 16 and mlp.fc1.out_features == 8 and mlp.fc2.out_features == 5


def test_purifier_fits_after_training_and_leaves_the_target_alone(registry, digits):
    from workbench.api import NoParams
    from workbench.recipe.schema import TrainConfig
    from workbench.running.trainer import train_classifier
    from workbench_defenses.none import NoDefense

    defense = registry.create("defense", "purifier", epochs=5, cond_dim=32)
    model = defense.prepare_model(_mcnn(registry), 5, DefenseContext(num_classes=5, data=digits, seed=0))
    # The purifier is not the target optimizer's; it is fitted by finish_training.
    assert all(not p.requires_grad for p in model.purifier.parameters())
    plain = _mcnn(registry)
    config = TrainConfig(epochs=3)
    result = train_classifier(model, defense, digits.train, config, device=CPU, seed=0)
    train_classifier(plain, NoDefense(NoParams()), digits.train, config, device=CPU, seed=0)
    assert int(model.fitted) == 1 and math.isfinite(result.history[-1]["ce"])
    for key, value in plain.state_dict().items():  # the target trained exactly as `none`
        assert torch.equal(model.target.state_dict()[key], value), key
    model.eval()
    x = digits.test.tensors[0]
    with torch.no_grad():
        purified, logits = model(x), model.target(x)
    # Fitted to the target's own top class: the predictions agree, the confidences differ.
    assert float((purified.argmax(1) == logits.argmax(1)).double().mean()) > 0.9
    assert not torch.allclose(purified, logits, atol=1e-3)


# ------------------------------------------------------------------ end to end on digits

FIVE_VARIANTS = """
[[variants]]
name = "sca"
defense = { use = "sca", iterations = 3 }

[[variants]]
name = "gaussian-noise"
defense = { use = "gaussian-noise" }

[[variants]]
name = "at-at"
defense = { use = "at-at", iterations = 2 }

[[variants]]
name = "purifier"
defense = { use = "purifier", epochs = 2 }

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
def test_the_new_defenses_train_and_are_attacked_end_to_end(run_tiny_recipe):
    from workbench.testing import TINY_RECIPE

    run_dir, results = run_tiny_recipe(TINY_RECIPE.replace("epochs = 5", "epochs = 2") + FIVE_VARIANTS, workers=1)
    by_name = {v["name"]: v for v in results["variants"]}
    assert set(by_name) == {"none", "sca", "gaussian-noise", "at-at", "purifier"}
    for variant in by_name.values():
        assert 0 <= variant["utility"]["test_accuracy"] <= 1
        assert 0 <= variant["attacks"]["gmi"]["top1"] <= 1
    assert 0 <= by_name["at-at"]["defense"]["attack_success"] <= 1
    from safetensors.torch import load_file

    noise = load_file(str(run_dir / "gaussian-noise" / "target.safetensors"))
    assert float(noise["model.head.noise"].abs().sum()) > 0  # the saved (attacked) target carries the noise
    purifier = load_file(str(run_dir / "purifier" / "target.safetensors"))
    assert int(purifier["model.fitted"]) == 1
    events = (run_dir / "events.jsonl").read_text()
    assert "gaussian-noise: post-hoc" in events and "purifier: post-hoc" in events


RESNET_RECIPE = """
title = "rolss"
seed = 0
device = "cpu"

[data]
use = "digits"
image_size = 32

[target.backbone]
use = "timm"
model_name = "resnet18"
model_kwargs = { zero_init_last = false }

[target.train]
epochs = 1
batch_size = 64

[[variants]]
name = "none"
defense = { use = "none" }

[[variants]]
name = "rolss"
defense = { use = "rolss" }

[[metrics]]
use = "accuracy"
"""


@pytest.mark.slow
def test_rolss_trains_a_resnet_beside_none(run_tiny_recipe):
    run_dir, results = run_tiny_recipe(RESNET_RECIPE, workers=1)
    by_name = {v["name"]: v for v in results["variants"]}
    assert set(by_name) == {"none", "rolss"}
    assert all(0 <= v["utility"]["test_accuracy"] <= 1 for v in by_name.values())
    assert "rolss: timm ResNet shortcut scales per block" in (run_dir / "events.jsonl").read_text()
