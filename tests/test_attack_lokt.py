"""LOKT (`lokt`, label-only): its losses against float64 transcriptions of the authors' code
(`train_tacgan.py:250-296`, `train_surrogate_model.py:95-97`, `plg_tacgan.py:95-110`, `losses.py:7-17`),
one T-ACGAN iteration, one surrogate step and two inversion steps against hand-written Adam, the query
count through a label oracle that never hands out the module, and (slow) the attack end to end on
the embedded digits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import workbench
from digits_recipes import digits_attack_recipe
from workbench.api import AttackContext, DataSplits, TargetOracle, WorkbenchError
from workbench.attack_toolkit import Group, ImagePool, group_stream, search
from workbench_attacks.lokt import (
    LOKT,
    LabelledLatents,
    LOKTParams,
    LOKTSearch,
    SurrogateEnsemble,
    inversion_rows,
    label_dataset,
    surrogate_loss,
    tacgan_d_loss,
    tacgan_g_loss,
    train_surrogate,
    train_tacgan,
)
from workbench_attacks.plgmi import augment

# ---------------------------------------------------------------- float64 transcriptions


def sigmoid(s: float) -> float:
    return 1 / (1 + math.exp(-s))


def bce(scores, target: float) -> float:
    """`nn.BCELoss()(sigmoid(s), target)`: the batch mean of −[y log σ + (1 − y) log(1 − σ)]."""
    return sum(-(target * math.log(sigmoid(s)) + (1 - target) * math.log(1 - sigmoid(s))) for s in scores) / len(scores)


def ce(logits, labels) -> float:
    """`nn.CrossEntropyLoss()`: the batch mean of −log softmax(o)[t]."""
    total = 0.0
    for row, t in zip(logits, labels, strict=True):
        total += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    return total / len(logits)


def max_margin(logits, labels) -> list[float]:
    """`losses.py:7-13` row by row: −o[y] + o[the largest class other than y], by the reference's argsort rule."""
    out = []
    for row, y in zip(logits, labels, strict=True):
        order = sorted(range(len(row)), key=lambda j: row[j])
        other = order[-2] if order[-1] == y else order[-1]
        out.append(-row[y] + row[other])
    return out


def adam_first_step(param: torch.Tensor, grad: torch.Tensor, lr: float, eps: float = 1e-8) -> torch.Tensor:
    """Adam's first step for any betas: m̂ = g, v̂ = g², so p − lr · g / (|g| + eps)."""
    return param - lr * grad / (grad.abs() + eps)


def rand(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


# ---------------------------------------------------------------- the losses


@pytest.mark.parametrize("conditional", [True, False])
def test_tacgan_losses_equal_the_transcription(conditional):
    gen = torch.Generator().manual_seed(0)
    real, fake, classes = rand(6, gen=gen) * 3, rand(6, gen=gen) * 3, rand(6, 4, gen=gen) * 2
    t, condition = torch.randint(4, (6,), generator=gen), torch.randint(4, (6,), generator=gen)
    alpha = 1.5
    d = tacgan_d_loss(real, fake, classes, t if conditional else None, alpha)
    g = tacgan_g_loss(fake, classes, condition, conditional, alpha)
    want_d = bce(fake.tolist(), 0.0) + bce(real.tolist(), 1.0) + (alpha * ce(classes.tolist(), t.tolist()) if conditional else 0)
    want_g = bce(fake.tolist(), 1.0) + (alpha * ce(classes.tolist(), condition.tolist()) if conditional else 0)
    assert d.item() == pytest.approx(want_d, rel=1e-13)
    assert g.item() == pytest.approx(want_g, rel=1e-13)


def test_surrogate_loss_equals_the_transcription():
    gen = torch.Generator().manual_seed(1)
    clean, aug, t = rand(5, 3, gen=gen) * 2, rand(5, 3, gen=gen) * 2, torch.randint(3, (5,), generator=gen)
    want = 0.5 * ce(clean.tolist(), t.tolist()) + 0.5 * ce(aug.tolist(), t.tolist())
    assert surrogate_loss(clean, aug, t).item() == pytest.approx(want, rel=1e-13)


def test_inversion_loss_is_the_mean_over_surrogates_of_two_margins():
    gen = torch.Generator().manual_seed(2)
    y = torch.tensor([0, 2, 1, 2])
    views = [(rand(4, 3, gen=gen), rand(4, 3, gen=gen)) for _ in range(3)]
    views[0][0][1] = torch.tensor([0.0, 1.0, 5.0])  # the target is the top class: the runner-up counts
    got = inversion_rows(views, y, "margin")
    margins = [(max_margin(v1.tolist(), y.tolist()), max_margin(v2.tolist(), y.tolist())) for v1, v2 in views]
    rows = [sum(first[i] + second[i] for first, second in margins) / 3 for i in range(4)]
    torch.testing.assert_close(got, torch.tensor(rows, dtype=torch.float64), rtol=0, atol=1e-14)
    # The reference's loss (`plg_tacgan.py:95-110`): per surrogate the sum of two batch means, then / K.
    reference = sum(sum(first) / 4 + sum(second) / 4 for first, second in margins) / 3
    assert got.mean().item() == pytest.approx(reference, rel=1e-13)


# ---------------------------------------------------------------- tiny float64 networks


class TinyGenerator(nn.Module):
    """(z, y) -> 1×4×4 images: sigmoid(W z + e_y)."""

    def __init__(self, z_dim=3, classes=3):
        super().__init__()
        self.linear, self.embed = nn.Linear(z_dim, 16), nn.Embedding(classes, 16)

    def forward(self, z, y):
        return torch.sigmoid(self.linear(z) + self.embed(y)).view(-1, 1, 4, 4)


class TinyDiscriminator(nn.Module):
    """x -> (realness logit, class logits) from a tanh layer, as the T-ACGAN's two heads."""

    def __init__(self, classes=3):
        super().__init__()
        self.hidden, self.realness, self.classes = nn.Linear(16, 8), nn.Linear(8, 1), nn.Linear(8, classes)

    def forward(self, x):
        h = torch.tanh(self.hidden(x.flatten(1)))
        return self.realness(h)[:, 0], self.classes(h)


def tiny(seed=0):
    torch.manual_seed(seed)
    g, d = TinyGenerator().double(), TinyDiscriminator().double()
    target = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval()
    return g, d, target


def clone(module):
    copy = type(module)().double()
    copy.load_state_dict(module.state_dict())
    return copy


def test_one_tacgan_iteration_equals_hand_written_adam_on_the_transcribed_losses():
    g, d, target = tiny()
    g0, d0 = clone(g), clone(d)
    pool = ImagePool(TensorDataset(torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(3)), torch.zeros(20)), "lokt")
    p = LOKTParams(z_dim=3, warmup_steps=0, gan_steps=1, critic_iters=1, gan_batch_size=5, gan_lr=0.01, alpha=1.5)
    asked = []

    def labels(x):
        asked.append(len(x))
        return target(x.double()).argmax(1)

    train_tacgan(g, d, labels, pool, p, 3, device=torch.device("cpu"), rng=torch.Generator().manual_seed(7))
    assert asked == [5]  # one conditional D step: one fake batch labelled by T

    # By hand: the D step (real, then z and ỹ drawn from the same stream, fakes labelled by T), then the G step.
    rng = torch.Generator().manual_seed(7)
    real = pool.sample(5, rng, torch.device("cpu")).double()
    z, y = torch.randn(5, 3, generator=rng).double(), torch.randint(3, (5,), generator=rng)
    with torch.no_grad():
        fake = g0(z, y)
        t = target(fake).argmax(1)
    real_s, _ = d0(real)
    fake_s, fake_c = d0(fake)
    loss_d = (-(1 - torch.sigmoid(fake_s)).log().mean() - torch.sigmoid(real_s).log().mean()
              - 1.5 * (fake_c.softmax(1).gather(1, t[:, None]).log().mean()))
    grads = torch.autograd.grad(loss_d, list(d0.parameters()))
    with torch.no_grad():
        for q, grad in zip(d0.parameters(), grads, strict=True):
            q.copy_(adam_first_step(q, grad, 0.01))
    z, y = torch.randn(5, 3, generator=rng).double(), torch.randint(3, (5,), generator=rng)
    fake_s, fake_c = d0(g0(z, y))
    loss_g = -torch.sigmoid(fake_s).log().mean() - 1.5 * fake_c.softmax(1).gather(1, y[:, None]).log().mean()
    grads = torch.autograd.grad(loss_g, list(g0.parameters()))
    with torch.no_grad():
        for q, grad in zip(g0.parameters(), grads, strict=True):
            q.copy_(adam_first_step(q, grad, 0.01))
    for got, want in [*zip(d.parameters(), d0.parameters(), strict=True), *zip(g.parameters(), g0.parameters(), strict=True)]:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_the_warmup_sends_no_queries_and_every_conditional_d_step_one_batch():
    g, d, target = tiny()
    pool = ImagePool(TensorDataset(torch.rand(20, 1, 4, 4), torch.zeros(20)), "lokt")
    p = LOKTParams(z_dim=3, warmup_steps=2, gan_steps=3, critic_iters=2, gan_batch_size=4)
    asked = []
    train_tacgan(g, d, lambda x: asked.append(len(x)) or target(x).argmax(1), pool, p, 3,
                 device=torch.device("cpu"), rng=torch.Generator().manual_seed(0))
    assert asked == [4] * (3 * 2)  # gan_steps · critic_iters batches, none in the 2 warm-up iterations


def test_one_surrogate_step_equals_hand_written_adam():
    g, _d, _target = tiny()
    g.eval()
    surrogate = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    start = [q.detach().clone() for q in surrogate.parameters()]
    gen = torch.Generator().manual_seed(4)
    data = LabelledLatents(torch.randn(6, 3, generator=gen), torch.randint(3, (6,), generator=gen),
                           torch.randint(3, (6,), generator=gen))
    p = LOKTParams(surrogate_epochs=1, surrogate_epoch_steps=1, surrogate_batch_size=4, surrogate_lr=0.05,
                   crop_scale=(0.5, 0.9), rotation=20)
    agreement = train_surrogate(surrogate, g, data, p, device=torch.device("cpu"), rng=torch.Generator().manual_seed(9))

    rng = torch.Generator().manual_seed(9)
    pick = torch.randperm(6, generator=rng)[:4]  # the endless sampler's first batch
    with torch.no_grad():
        x = g(data[0][pick].double(), data[1][pick])
        x_aug = augment(x, rng, (0.5, 0.9), 20.0)
    weight, bias = (q.clone().requires_grad_(True) for q in start)
    t = data[2][pick]

    def nll(images):
        logits = images.flatten(1) @ weight.T + bias
        return -(logits.log_softmax(1).gather(1, t[:, None])).mean()

    loss = 0.5 * nll(x) + 0.5 * nll(x_aug)
    grads = torch.autograd.grad(loss, [weight, bias])
    for got, q, grad in zip(surrogate.parameters(), [weight, bias], grads, strict=True):
        torch.testing.assert_close(got.detach(), adam_first_step(q.detach(), grad, 0.05), rtol=0, atol=1e-12)
    assert not any(q.requires_grad for q in surrogate.parameters()) and not surrogate.training
    with torch.no_grad():
        want = (surrogate(g(data[0].double(), data[1])).argmax(1) == data[2]).double().mean().item()
    assert agreement == pytest.approx(want)


def test_the_surrogates_train_alike_on_kept_and_on_regenerated_images(monkeypatch):
    """`label_dataset` keeps G's images when they fit in `KEPT_IMAGES_BYTES` (computed once for T's labels)
    and the surrogates then index them; above the cap they regenerate each batch, as the reference. Both
    are G's same images, so the trained surrogates are equal."""
    import workbench_attacks.lokt as lokt

    g, _d, target = tiny()
    g.eval()
    p = LOKTParams(z_dim=3, data_per_class=5, max_batch=4, surrogate_epochs=2, surrogate_batch_size=4)
    queried = []

    def labels(x):
        queried.append(len(x))
        return target(x).argmax(1)

    kept = label_dataset(g, labels, p, 3, device=torch.device("cpu"), rng=torch.Generator().manual_seed(3))
    monkeypatch.setattr(lokt, "KEPT_IMAGES_BYTES", 15 * 16 * 8 - 1)  # one image short of the data set
    regenerated = label_dataset(g, labels, p, 3, device=torch.device("cpu"), rng=torch.Generator().manual_seed(3))
    assert queried == [4, 4, 4, 3] * 2  # T labels the same 15 images either way
    assert regenerated.images is None and kept.images.shape == (15, 1, 4, 4)
    assert torch.equal(kept.labels, regenerated.labels) and torch.equal(kept.z, regenerated.z)
    with torch.no_grad():
        torch.testing.assert_close(kept.images, g(kept.z.double(), kept.condition), rtol=0, atol=0)

    surrogates = []
    for data in (kept, regenerated):
        torch.manual_seed(5)
        surrogate = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
        agreement = train_surrogate(surrogate, g, data, p, device=torch.device("cpu"), rng=torch.Generator().manual_seed(6))
        surrogates.append((surrogate, agreement))
    (first, agree_first), (second, agree_second) = surrogates
    assert agree_first == agree_second
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_two_inversion_steps_equal_hand_written_adam_on_the_surrogates():
    g, _d, _target = tiny()
    g.eval().requires_grad_(False)
    torch.manual_seed(5)
    surrogates = [nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval().requires_grad_(False) for _ in range(2)]
    p = LOKTParams(z_dim=3, iterations=2, lr=0.1, restarts=1, samples_per_class=2, crop_scale=(0.6, 0.9), rotation=10)
    data = DataSplits(train=None, test=None, public=None, num_classes=3, in_channels=1, image_size=4)
    ctx = AttackContext(target=SurrogateEnsemble(surrogates), data=data, evaluation_model=None,
                        device=torch.device("cpu"), seed=0)
    images, targets, _restarts, _confidence = search(ctx, LOKTSearch(p, g, surrogates), [[Group(2, 0)]],
                                                     attack="lokt", iterations=2, max_batch=8)
    # By hand, from the group's stream: the latents, then per step and surrogate two independent views
    # (the augmentation is PLG-MI's `augment`, tested with PLG-MI).
    stream = group_stream(0, "lokt", Group(2, 0))
    z = torch.randn(2, 3, generator=stream).double()
    y = torch.tensor([2, 2])
    m = v = torch.zeros_like(z)
    for step in (1, 2):  # Adam(lr 0.1, betas (0.9, 0.999), eps 1e-8) on the reference's batch-mean loss
        leaf = z.clone().requires_grad_(True)
        x = g(leaf, y)
        loss = 0
        for s in surrogates:  # per surrogate margin(S(aug₁ x)) + margin(S(aug₂ x)), batch means; then / K
            for _view in range(2):
                o = s(augment(x, stream, (0.6, 0.9), 10.0))
                loss = loss + torch.stack([-o[i, 2] + o[i, :2].max() for i in range(2)]).mean()
        loss = loss / len(surrogates)
        (grad,) = torch.autograd.grad(loss, leaf)
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
        z = z - 0.1 * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
    assert targets.tolist() == [2, 2]
    # The search sums the rows instead of averaging them: Adam's step differs only through eps.
    torch.testing.assert_close(images, g(z, y).clamp(0, 1), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the threat model


def label_only_context(budget=None):
    reg = workbench.load_registry()
    torch.manual_seed(0)
    target = reg.create("backbone", "mcnn", width=4).build(3, 1, 8).eval()
    public = TensorDataset(torch.rand(32, 1, 8, 8), torch.zeros(32))
    data = DataSplits(train=public, test=public, public=public, num_classes=3, in_channels=1, image_size=8)
    oracle = TargetOracle(target, "label-only", 3, budget=budget, attack="lokt")
    return reg, AttackContext(target=None, data=data, evaluation_model=None, device=torch.device("cpu"), seed=0,
                              oracle=oracle)


TINY = dict(z_dim=8, gan_width=4, warmup_steps=1, gan_steps=2, critic_iters=2, gan_batch_size=4, data_per_class=6,
            surrogate_epochs=1, iterations=2, restarts=2, samples_per_class=1, surrogate_3=None)


def test_the_run_sees_only_labels_and_counts_every_query():
    reg, ctx = label_only_context()
    attack = reg.create("attack", "lokt", **TINY)
    assert LOKT.capabilities.access == "label-only" and ctx.target is None
    result = attack.run(ctx)
    assert result.images.shape == (6, 1, 8, 8) and result.targets.tolist() == [0, 0, 1, 1, 2, 2]
    f = result.figures
    # T-ACGAN: gan_steps · critic_iters · batch; data set: data_per_class · K; the search: none.
    assert f["gan_queries"] == 2 * 2 * 4 and f["dataset_queries"] == 6 * 3
    assert ctx.oracle.queries == 16 + 18
    assert 0 <= f["surrogate_agreement"] <= 1 and 0 <= f["surrogate_confidence"] <= 1


def test_a_budget_stops_the_attack_in_one_line_and_no_oracle_no_attack():
    reg, ctx = label_only_context(budget=20)
    with pytest.raises(WorkbenchError, match=r"'lokt': query budget 20"):
        reg.create("attack", "lokt", **TINY).run(ctx)
    with pytest.raises(WorkbenchError, match="needs the run's target oracle"):
        LOKT(LOKTParams()).run(AttackContext(target=None, data=ctx.data, evaluation_model=None,
                                             device=torch.device("cpu"), seed=0))


def test_params_document_every_field_with_a_reference():
    spec = workbench.load_registry().get("attack", "lokt")
    schema = spec.params_schema()
    assert not [k for k, v in schema["properties"].items() if not v.get("description")]
    fields = spec.params.model_fields
    for name in ("alpha", "warmup_steps", "gan_steps", "data_per_class", "surrogate_lr", "surrogate_epochs",
                 "iterations", "lr", "inv_loss", "critic_iters", "gan_lr"):
        assert "reference" in fields[name].description.lower() and ".py:" in fields[name].description, name


# ---------------------------------------------------------------- end to end on digits

DIGITS_RECIPE = digits_attack_recipe("LOKT on digits", """
[attacks.lokt]
use = "lokt"
""")


@pytest.mark.slow
def test_lokt_recovers_the_private_digits_from_labels_alone(run_tiny_recipe, shared_trained_stages):
    _, results = run_tiny_recipe(DIGITS_RECIPE, workers=1)
    lokt = results["variants"][0]["attacks"]["lokt"]
    assert lokt["top1"] >= 0.6, lokt  # chance is 0.2 (five private digits)
    assert lokt["queries"] == 400 * 5 * 64 + 500 * 5, lokt
