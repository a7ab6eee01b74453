"""BREP-MI (`brep-mi`, label-only): its sphere step against a float64 transcription of
`brep_mi.py:53-82` written point by point, the loop's bookkeeping (rejection, expansion, patience)
through a counted label oracle that never hands out the module, and (slow) the attack end to end on
the embedded digits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from digits_recipes import digits_attack_recipe
from workbench.api import AttackContext, DataSplits, TargetOracle, WorkbenchError
from workbench_attacks.brepmi import BREPMI, BREPMIParams, sphere_step, unit_directions


def reference_step(z, radius, units, inside, p):
    """One start at a time, one point at a time, as `brep_mi.py:53-82` reads (float64 Python floats)."""
    out_z, out_r, out_e = [], [], []
    for s in range(len(z)):
        r = float(radius[s])
        n = len(units[s])
        alpha = min(r / 3 * (p.step_ratio * 3), p.max_step)  # min(R/3, 3) with the default ratio
        count = sum(bool(v) for v in inside[s])
        grown = r * p.expansion
        expand = count > p.expand_fraction * n and math.isfinite(grown) and (p.max_radius is None or grown <= p.max_radius)
        r_new = grown if expand else r
        d = [0.0] * len(z[s])
        for k in range(n):
            phi = 1.0 if bool(inside[s][k]) else -1.0
            if p.repulsion_only:
                phi = (phi - 1) / 2
            for j in range(len(d)):
                d[j] += phi * (r * float(units[s][k][j])) / r_new / n
        out_z.append([min(max(float(z[s][j]) + alpha * d[j], -p.z_clip), p.z_clip) for j in range(len(d))])
        out_r.append(r_new)
        out_e.append(expand)
    return torch.tensor(out_z, dtype=torch.float64), torch.tensor(out_r, dtype=torch.float64), torch.tensor(out_e)


@pytest.mark.parametrize("repulsion_only,max_radius", [(True, None), (False, 3.0)])
def test_the_sphere_step_equals_the_transcription(repulsion_only, max_radius):
    gen = torch.Generator().manual_seed(0)
    p = BREPMIParams(points=8, repulsion_only=repulsion_only, max_radius=max_radius, z_clip=1.0)
    z = torch.rand(5, 6, generator=gen, dtype=torch.float64) * 2 - 1
    radius = torch.tensor([0.5, 2.0, 2.5, 12.0, 1.5e308], dtype=torch.float64)  # the last cannot grow
    units = unit_directions(5, 8, 6, gen)
    inside = torch.rand(5, 8, generator=gen) < torch.tensor([0.9, 0.2, 0.95, 0.5, 1.0])[:, None]
    inside[0] = True
    got = sphere_step(z, radius, units, inside, p)
    want = reference_step(z.tolist(), radius.tolist(), units.tolist(), inside.tolist(), p)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-14)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    assert got[2].tolist() == want[2].tolist()
    assert bool(got[2][0]) and not bool(got[2][4])  # all inside: expands; a radius that would overflow: not
    assert torch.allclose(units.norm(dim=2), torch.ones(5, 8, dtype=torch.float64))


def _tiny(budget=None):
    """A linear 'generator' on 4-d latents and a target that labels by the sign of two pixels."""
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(4, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))).eval()
    target = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    data = DataSplits(train=TensorDataset(torch.zeros(1, 1, 4, 4), torch.zeros(1)),
                      test=TensorDataset(torch.zeros(1, 1, 4, 4), torch.zeros(1)),
                      public=None, num_classes=3, in_channels=1, image_size=4)
    oracle = TargetOracle(target, "label-only", 3, budget=budget, attack="brep-mi")
    ctx = AttackContext(target=None, data=data, evaluation_model=None, device=torch.device("cpu"), seed=0,
                        oracle=oracle)
    return generator, target, ctx


def test_the_run_sees_only_labels_and_counts_every_query(monkeypatch):
    generator, target, ctx = _tiny()
    p = BREPMIParams(z_dim=4, points=6, patience=5, max_iterations=30, restarts=2, samples_per_class=1,
                     init_batch=64, report="final")
    attack = BREPMI(p)
    monkeypatch.setattr(attack, "prior", lambda ctx: (generator, None, False))
    result = attack.run(ctx)
    assert result.images.shape == (6, 1, 4, 4)
    assert result.targets.tolist() == [0, 0, 1, 1, 2, 2] and result.restarts.tolist() == [0, 1] * 3
    f = result.figures
    starts = 6
    # The initial batches, then N + 1 label queries per iteration of every searched start.
    assert ctx.oracle.queries == f["initial_queries"] + f["iterations"] * starts * (p.points + 1)
    assert f["initial_queries"] % p.init_batch == 0 and f["iterations"] >= p.patience
    # Every reported final point is still labelled its class (rejected steps never move z).
    with torch.no_grad():
        labels = target(result.images).argmax(1)
    assert f["unattacked_starts"] == 0 and torch.equal(labels, result.targets)
    assert BREPMI.capabilities.access == "label-only"


def test_a_budget_stops_the_attack_in_one_line(monkeypatch):
    generator, _target, ctx = _tiny(budget=500)
    attack = BREPMI(BREPMIParams(z_dim=4, points=6, patience=50, restarts=1, samples_per_class=1, init_batch=64))
    monkeypatch.setattr(attack, "prior", lambda ctx: (generator, None, False))
    with pytest.raises(WorkbenchError, match=r"'brep-mi': query budget 500"):
        attack.run(ctx)


def test_a_label_only_context_has_no_target():
    _generator, _target, ctx = _tiny()
    attack = BREPMI(BREPMIParams())
    assert ctx.target is None
    with pytest.raises(WorkbenchError, match="labels"):
        ctx.oracle.probabilities(torch.zeros(1, 1, 4, 4))
    with pytest.raises(WorkbenchError, match="needs the run's target oracle"):
        attack.run(AttackContext(target=None, data=ctx.data, evaluation_model=None, device=torch.device("cpu"),
                                 seed=0))


DIGITS_RECIPE = digits_attack_recipe("BREP-MI on digits", """
[attacks.brep-mi]
use = "brep-mi"
""")


@pytest.mark.slow
def test_brepmi_recovers_the_private_digits_from_labels_alone(run_tiny_recipe, shared_trained_stages):
    _, results = run_tiny_recipe(DIGITS_RECIPE, workers=1)
    brep = results["variants"][0]["attacks"]["brep-mi"]
    assert brep["top1"] >= 0.3, brep  # chance is 0.2
    assert brep["queries"] > 100_000, brep
