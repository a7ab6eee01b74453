"""Trap-MID's epoch selection (`select`) and its discriminator's starting weights
(`discriminator_weights`), against the reference's behaviour (Trap-MID `engine.py:99, 276-281, 308`)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

from workbench.api import DataSplits, DefenseContext, TrainingSetup, WorkbenchError
from workbench_defenses.trap import TrapMID, TrapMIDParams

CPU = torch.device("cpu")
K = 3


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 6)
        self.head = torch.nn.Linear(6, K)

    def forward(self, x):
        return self.head(self.body(x.flatten(1)).relu())


def selection_split() -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 2, 2, generator=gen)
    return TensorDataset(x, (x.flatten(1)[:, 0] > 0).long() + (x.flatten(1)[:, 1] > 1).long())


def ctx(test: TensorDataset) -> DefenseContext:
    data = DataSplits(train=test, test=test, public=None, num_classes=K, in_channels=1, image_size=2)
    return DefenseContext(num_classes=K, data=data)


def accuracy_of(model, data) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def started(select: str, model: torch.nn.Module, test: TensorDataset) -> TrapMID:
    defense = TrapMID(TrapMIDParams(select=select, discriminator=False))
    defense.prepare_model(model, K, ctx(test))
    defense.start_training(model, torch.optim.SGD(model.parameters(), lr=0.1),
                           TrainingSetup(dataset_size=60, batch_size=20, epochs=3, device=CPU, seed=0))
    return defense


@pytest.mark.parametrize("select", ["best", "last"])
def test_best_keeps_the_epoch_with_the_highest_test_accuracy_and_its_triggers(select):
    test = selection_split()
    torch.manual_seed(0)
    model = Tiny()
    defense = started(select, model, test)
    x = torch.rand(20, 1, 2, 2)
    y = torch.zeros(20, dtype=torch.long)
    weights = []
    for epoch in range(3):
        defense.start_epoch(epoch, 3)
        defense.transform(x, y, model=model, epoch=epoch, step=0)
        defense.transform(x, y, model=model, epoch=epoch, step=1)
        # "Training": a different model every epoch, some better, some worse on the test split.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(10 + epoch)))
        weights.append(({k: v.clone() for k, v in model.state_dict().items()}, defense.triggers.clone(),
                        accuracy_of(model, test)))
    # The triggers as they stood at the end of each epoch: the next epoch's first step sees them.
    defense.finish_training(model)
    best = max(range(3), key=lambda e: (weights[e][2], -e))  # strict `>`: the earliest of equals
    chosen = best if select == "best" else 2
    assert best != 2 and weights[best][2] > weights[2][2]  # best and last really differ
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[chosen][0][key])
    assert torch.equal(defense.triggers, weights[chosen][1])
    if select == "best":
        assert defense.best_accuracy == pytest.approx(weights[best][2])


def test_the_best_epoch_survives_a_resume():
    test = selection_split()
    torch.manual_seed(0)
    model = Tiny()
    defense = started("best", model, test)
    defense.start_epoch(0, 2)
    defense.transform(torch.rand(20, 1, 2, 2), torch.zeros(20, dtype=torch.long), model=model, epoch=1, step=0)
    state = defense.state_dict()
    again = started("best", Tiny(), test)
    again.load_state_dict(state)
    assert again.best_accuracy == defense.best_accuracy
    assert all(torch.equal(again.best[k], v) for k, v in defense.best.items())


def test_the_discriminator_starts_from_the_weights_file_with_a_fresh_head(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    source = Tiny()
    path = tmp_path / "pretrained.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    defense = TrapMID(TrapMIDParams(discriminator_weights=path))
    defense.prepare_model(model, K)
    defense.start_training(model, torch.optim.SGD(model.parameters(), lr=0.1),
                           TrainingSetup(dataset_size=60, batch_size=20, epochs=1, device=CPU, seed=0))
    d = defense.discriminator
    assert torch.equal(d.body.weight, source.body.weight) and torch.equal(d.body.bias, source.body.bias)
    assert d.head.weight.shape == (1, 6)


def test_bad_discriminator_weights_are_one_line(tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(WorkbenchError) as excinfo:
        TrapMID(TrapMIDParams(discriminator_weights=missing))
    assert "\n" not in str(excinfo.value) and "discriminator_weights" in str(excinfo.value)
    assert "nowhere.safetensors" in str(excinfo.value)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"body.weight": torch.zeros(5, 4), "body.bias": torch.zeros(5)}, str(wrong))
    defense = TrapMID(TrapMIDParams(discriminator_weights=wrong))
    model = Tiny()
    defense.prepare_model(model, K)
    with pytest.raises(WorkbenchError) as excinfo:
        defense.start_training(model, torch.optim.SGD(model.parameters(), lr=0.1),
                               TrainingSetup(dataset_size=60, batch_size=20, epochs=1, device=CPU, seed=0))
    message = str(excinfo.value)
    assert "\n" not in message and "body.weight [5, 4] vs [6, 4]" in message
