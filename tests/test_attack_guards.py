"""Non-finite values end an attack with one clear line naming the attack and stage; a NaN
prior is never cached nor loaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from workbench import load_registry
from workbench.api import AttackContext, DataSplits, StageCache, WorkbenchError
from workbench.attack_toolkit import Group, load_or_train, search
from workbench.components.capabilities import capabilities_of
from workbench_attacks.gmi import GMIParams, GMISearch


def ctx(target: nn.Module, cache=None) -> AttackContext:
    data = DataSplits(
        train=TensorDataset(torch.zeros(1, 1, 2, 2), torch.zeros(1)),
        test=TensorDataset(torch.zeros(1, 1, 2, 2), torch.zeros(1)),
        public=None,
        num_classes=2,
        in_channels=1,
        image_size=2,
    )
    return AttackContext(
        target=target, data=data, evaluation_model=None, device=torch.device("cpu"), seed=0, cache=cache
    )


class G(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, z):
        return self.fc(z).sigmoid().view(-1, 1, 2, 2)


class Head(nn.Module):
    def __init__(self, out: int, poison: bool = False):
        super().__init__()
        self.fc = nn.Linear(4, out)
        self.poison = poison

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y * float("nan") if self.poison else y


def test_a_nan_loss_in_the_search_ends_the_attack_naming_the_stage():
    target = Head(2, poison=True).eval()
    critic = Head(1).eval()
    params = GMIParams(z_dim=3, samples_per_class=2, iterations=3)
    problem = GMISearch(params, G().eval(), lambda x: critic(x)[:, 0], target)
    with pytest.raises(
        WorkbenchError, match=r"attack 'gmi', stage attack:gmi: the search loss .* not finite"
    ):
        search(ctx(target), problem, [[Group(0, 0)], [Group(1, 0)]], attack="gmi", iterations=3, max_batch=8)


def test_a_nan_prior_is_never_cached_and_a_cached_one_is_never_loaded(tmp_path):
    cache = StageCache(tmp_path)
    net = G()

    def diverge():
        with torch.no_grad():
            net.fc.weight.fill_(float("nan"))
        return {}

    with pytest.raises(WorkbenchError, match=r"attack 'gmi', stage gmi-gan: .*NaN"):
        load_or_train(ctx(Head(2), cache), "gmi", "gmi-gan", {"k": 1}, {"generator": net}, diverge)
    assert not list(tmp_path.rglob("*.safetensors"))

    # An entry holding NaN (written by anything else) is retrained, not used.
    good = G()
    load_or_train(ctx(Head(2), cache), "gmi", "gmi-gan", {"k": 2}, {"generator": good}, lambda: {})
    path = next(tmp_path.rglob("*.safetensors"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
    save_file(tensors, str(path))
    trained = []
    fresh = G()
    hit = load_or_train(
        ctx(Head(2), cache), "gmi", "gmi-gan", {"k": 2}, {"generator": fresh}, lambda: trained.append(1) or {}
    )
    assert not hit and trained == [1]
    assert torch.isfinite(fresh.fc.weight).all()


def test_a_nan_gan_loss_stops_training_naming_the_stage():
    from workbench.attack_toolkit import GANBudget, train_gan

    g, d = G(), Head(1)
    budget = GANBudget(gan_steps=3, critic_iters=1)

    def d_loss():
        return d(g(torch.randn(4, 3))).mean() * float("nan")

    def g_loss():
        return -d(g(torch.randn(4, 3))).mean()

    with pytest.raises(
        WorkbenchError, match=r"attack 'kedmi', stage attack:kedmi:gan: the GAN loss .* not cached"
    ):
        train_gan(g, d, budget, d_loss=d_loss, g_loss=g_loss, attack="kedmi", stage="attack:kedmi:gan")


def test_every_attack_that_sees_t_only_through_the_oracle_refuses_a_context_without_one():
    """A hand-built context with no oracle ends a black-box or label-only attack in one line naming
    its access, before any prior is trained."""
    registry = load_registry()
    oracle_only = {}
    for name in registry.names("attack"):
        attack = registry.create("attack", name)
        access = capabilities_of(attack, "attack").access
        if access != "white-box":
            oracle_only[name] = access
            with pytest.raises(WorkbenchError, match=rf"^attack {name!r} is {access} and needs the run's target oracle$"):
                attack.run(ctx(target=None))
    assert oracle_only == {"brep-mi": "label-only", "c2fmi": "black-box", "lokt": "label-only",
                           "mirror-b": "black-box", "rlb-mi": "black-box"}
