"""Model-inversion attacks on a toy problem a small CNN learns in a second.

Images are 8x8 grey; private class k has quadrant k bright and the rest dark. The attacker's
public data are images of the same domain with every quadrant at a random brightness (no class
structure). A second net trained on the private data plays the evaluation model E: an attack
works when E recognises the target class in its reconstructions well above chance (1/4).
GAN budgets are tiny: the tests check behaviour, caching and determinism, not image quality.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import workbench
from workbench.components.protocols import AttackContext, AttackResult, DataSplits
from workbench.errors import WorkbenchError
from workbench.storage.cache import StageCache

SIZE = 8
NUM_CLASSES = 4
CHANCE = 1 / NUM_CLASSES


def quadrant_mask(k: int) -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE)
    half = SIZE // 2
    row, col = divmod(k, 2)
    mask[row * half : (row + 1) * half, col * half : (col + 1) * half] = 1
    return mask


def private_images(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(n) % NUM_CLASSES
    masks = torch.stack([quadrant_mask(int(k)) for k in labels])
    bright = 0.7 + 0.3 * torch.rand(n, 1, 1, generator=gen)
    dark = 0.25 * torch.rand(n, SIZE, SIZE, generator=gen)
    x = masks * bright + (1 - masks) * dark + 0.05 * torch.randn(n, SIZE, SIZE, generator=gen)
    return x.clamp(0, 1)[:, None], labels


def public_images(n: int, gen: torch.Generator) -> torch.Tensor:
    levels = torch.rand(n, 4, generator=gen)
    x = sum(levels[:, k, None, None] * quadrant_mask(k) for k in range(4))
    return (x + 0.05 * torch.randn(n, SIZE, SIZE, generator=gen)).clamp(0, 1)[:, None]


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 32),
            nn.ReLU(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward_hidden(self, x):
        feat = self.features(x)
        return self.head(feat), [feat]

    def forward(self, x):
        return self.forward_hidden(x)[0]


def train_classifier(x, y, seed: int) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def toy():
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = private_images(400, gen)
    x_test, y_test = private_images(200, gen)
    public = public_images(400, gen)
    data = DataSplits(
        train=TensorDataset(x_train, y_train),
        test=TensorDataset(x_test, y_test),
        public=TensorDataset(public, torch.full((len(public),), -1)),
        num_classes=NUM_CLASSES,
        in_channels=1,
        image_size=SIZE,
    )
    target = train_classifier(x_train, y_train, seed=1)
    evaluator = train_classifier(x_train, y_train, seed=2)
    for model in (target, evaluator):
        assert (model(x_test).argmax(1) == y_test).float().mean() > 0.95
    return data, target, evaluator


@pytest.fixture(scope="module")
def registry():
    return workbench.load_registry()


def context(toy, cache=None, seed=0, events=None) -> AttackContext:
    data, target, evaluator = toy

    def emit(type, **fields):
        if events is not None:
            events.append({"type": type, **fields})

    return AttackContext(
        target=target,
        data=data,
        evaluation_model=evaluator,
        device=torch.device("cpu"),
        seed=seed,
        cache=cache,
        emit=emit,
    )


def evaluator_top1(toy, result: AttackResult) -> float:
    _, _, evaluator = toy
    with torch.no_grad():
        return float((evaluator(result.images).argmax(1) == result.targets).float().mean())


def check_layout(result: AttackResult, classes: list[int], restarts: int, samples: int) -> None:
    n = len(classes) * restarts * samples
    assert result.images.shape == (n, 1, SIZE, SIZE)
    assert result.images.device.type == "cpu"
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
    assert result.targets.dtype == torch.long and result.restarts.dtype == torch.long
    for k in classes:
        assert int((result.targets == k).sum()) == restarts * samples
        assert sorted(set(result.restarts[result.targets == k].tolist())) == list(range(restarts))


TINY_GAN = dict(z_dim=16, gan_width=8, gan_steps=15, gan_batch_size=32, critic_iters=2)


def subset(result: AttackResult, classes: list[int]) -> torch.Tensor:
    return result.images[torch.isin(result.targets, torch.tensor(classes))]


@pytest.mark.slow
def test_gmi_recovers_classes_reuses_its_cached_gan_and_is_deterministic(toy, registry, tmp_path):
    attack = registry.create(
        "attack", "gmi", **TINY_GAN, iterations=60, restarts=2, samples_per_class=4, loss_batch=NUM_CLASSES
    )
    first_events: list[dict] = []
    first = attack.run(context(toy, StageCache(tmp_path), events=first_events))
    check_layout(first, list(range(NUM_CLASSES)), restarts=2, samples=4)
    assert evaluator_top1(toy, first) >= 2 * CHANCE  # 0.72 / 0.75 measured; tiny GAN, so some margin
    gan_events = [e for e in first_events if e.get("stage") == "attack:gmi:gan"]
    assert gan_events and gan_events[-1]["step"] == TINY_GAN["gan_steps"]
    assert len(list((tmp_path / "gmi-gan").glob("*.safetensors"))) == 1
    assert first.figures["gan_cached"] == 0.0

    # Progress: per class at most 20 events, with loss and target confidence.
    search = [e for e in first_events if e.get("stage") == "attack:gmi"]
    for k in range(NUM_CLASSES):
        mine = [e for e in search if e["target_class"] == k]
        assert 1 <= len(mine) <= 20
        assert {"step", "total", "loss", "confidence"} <= set(mine[-1])
    assert search[-1]["step"] == search[-1]["total"]

    # A second run with the same cache loads the GAN (no training events) and, with the same
    # seed, reproduces the reconstructions exactly.
    second_events: list[dict] = []
    second = attack.run(context(toy, StageCache(tmp_path), events=second_events))
    assert not [e for e in second_events if e.get("stage") == "attack:gmi:gan"]
    assert second.figures["gan_cached"] == 1.0
    assert torch.equal(first.images, second.images)

    # Without a cache the GAN is trained again, identically from the same seed; a class's
    # reconstructions depend neither on which other classes are attacked nor on batching.
    alone = registry.create(
        "attack",
        "gmi",
        **TINY_GAN,
        iterations=60,
        restarts=2,
        samples_per_class=4,
        loss_batch=NUM_CLASSES,
        classes=[1, 3],
        max_batch=4,
    )
    third = alone.run(context(toy, None))
    assert third.figures["gan_cached"] == 0.0
    assert torch.allclose(third.images, subset(first, [1, 3]), atol=1e-5)


@pytest.mark.slow
def test_kedmi_recovers_classes_and_caches_per_target(toy, registry, tmp_path):
    attack = registry.create(
        "attack", "kedmi", **TINY_GAN, iterations=60, lr=0.1, fits=2, samples_per_class=4
    )
    events: list[dict] = []
    first = attack.run(context(toy, StageCache(tmp_path), events=events))
    # fits x draws per class; a result's restart index numbers the (fit, draw) pairs
    check_layout(first, list(range(NUM_CLASSES)), restarts=8, samples=1)
    assert first.figures["draws_per_fit"] == 4.0
    assert evaluator_top1(toy, first) >= 2 * CHANCE  # 0.72 / 0.75 measured; tiny GAN, so some margin
    assert [e for e in events if e.get("stage") == "attack:kedmi:gan"]
    assert {e["target_class"] for e in events if e.get("stage") == "attack:kedmi"} == set(range(NUM_CLASSES))
    assert len(list((tmp_path / "kedmi-gan").glob("*.safetensors"))) == 1

    events.clear()
    second = attack.run(context(toy, StageCache(tmp_path), events=events))
    assert not [e for e in events if e.get("stage") == "attack:kedmi:gan"]
    assert second.figures["gan_cached"] == 1.0
    assert torch.equal(first.images, second.images)

    # The K+1 GAN learns the target's soft labels: another target means another cache entry.
    data, target, evaluator = toy
    from workbench.attack_toolkit import public_pool

    pool = public_pool(context(toy), "kedmi")
    key_a = attack.gan_key(pool, context(toy))
    key_b = attack.gan_key(pool, context((data, evaluator, evaluator)))
    assert key_a["public"] == key_b["public"] and key_a["target"] != key_b["target"]


@pytest.mark.slow
def test_miface_recovers_classes_without_public_data(toy, registry):
    data, target, evaluator = toy
    no_public = DataSplits(
        train=data.train, test=data.test, public=None, num_classes=NUM_CLASSES, in_channels=1, image_size=SIZE
    )
    attack = registry.create(
        "attack", "mi-face", iterations=80, restarts=2, samples_per_class=3, tv_weight=0.1
    )
    events: list[dict] = []
    result = attack.run(context((no_public, target, evaluator), events=events))
    check_layout(result, list(range(NUM_CLASSES)), restarts=2, samples=3)
    assert evaluator_top1(toy, result) >= 0.6 > CHANCE
    assert result.figures["target_confidence"] > 0.9
    assert {e["target_class"] for e in events if e.get("stage") == "attack:mi-face"} == set(
        range(NUM_CLASSES)
    )

    again = attack.run(context((no_public, target, evaluator)))
    assert torch.equal(result.images, again.images)


def test_miface_one_minus_prob_from_zeros(toy, registry):
    # Fredrikson's original: start at zeros, no noise, minimise 1 - softmax_y.
    attack = registry.create(
        "attack",
        "mi-face",
        iterations=80,
        restarts=1,
        samples_per_class=1,
        loss="one-minus-prob",
        init="zeros",
        init_noise=0.0,
        lr=0.1,
    )
    result = attack.run(context(toy))
    assert evaluator_top1(toy, result) >= 0.75


def test_attacks_report_user_errors(toy, registry):
    data, target, evaluator = toy
    no_public = DataSplits(
        train=data.train, test=data.test, public=None, num_classes=NUM_CLASSES, in_channels=1, image_size=SIZE
    )
    for name in ("gmi", "kedmi"):
        with pytest.raises(WorkbenchError, match="public"):
            registry.create("attack", name, **TINY_GAN).run(context((no_public, target, evaluator)))
    with pytest.raises(WorkbenchError, match=r"classes \[7\].*0\.\.3"):
        registry.create("attack", "mi-face", classes=[1, 7]).run(context(toy))
    with pytest.raises(WorkbenchError, match="iterations"):
        registry.create("attack", "gmi", iterations=0)
    with pytest.raises(WorkbenchError, match="unknown key"):
        registry.create("attack", "kedmi", momentum=0.9)
    wrong_shape = DataSplits(
        train=data.train,
        test=data.test,
        public=TensorDataset(torch.rand(10, 3, SIZE, SIZE), torch.zeros(10)),
        num_classes=NUM_CLASSES,
        in_channels=1,
        image_size=SIZE,
    )
    with pytest.raises(WorkbenchError, match=r"public images are shaped \[3, 8, 8\]"):
        registry.create("attack", "gmi", **TINY_GAN).run(context((wrong_shape, target, evaluator)))


@pytest.mark.parametrize("image_size", [16, 28, 32, 64])
def test_networks_are_sized_for_the_data(image_size):
    from workbench.attack_toolkit import ClassDiscriminator, Critic, Generator

    generator = Generator(10, 3, image_size, 4).eval()
    with torch.no_grad():
        images = generator(torch.randn(2, 10))
        critic_scores = Critic(3, image_size, 4)(images)
        features, logits = ClassDiscriminator(3, image_size, 4, num_classes=7)(images)
    assert images.shape == (2, 3, image_size, image_size)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert critic_scores.shape == (2,)
    assert logits.shape == (2, 7) and features.shape[0] == 2


def test_params_document_every_field(registry):
    for name in ("gmi", "kedmi", "mi-face"):
        schema = registry.get("attack", name).params_schema()
        undocumented = [k for k, v in schema["properties"].items() if not v.get("description")]
        assert not undocumented, f"{name}: {undocumented}"
    for name, field in (("gmi", "iterations"), ("gmi", "loss_batch"), ("kedmi", "iterations"), ("kedmi", "fits")):
        doc = registry.get("attack", name).params.model_fields[field].description
        assert "Reference" in doc and "`" in doc, (name, field)  # the value and the file it comes from


def test_first_classes_limits_the_attacked_classes():
    from workbench.attack_toolkit import resolve_classes

    assert resolve_classes(None, 1000, "gmi", 300) == list(range(300))
    assert resolve_classes(None, 5, "gmi", 300) == list(range(5))
    assert resolve_classes([3, 1], 5, "gmi", 2) == [3, 1]  # an explicit list wins
    assert resolve_classes(None, 5, "gmi") == list(range(5))
