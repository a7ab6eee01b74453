"""dcor against its definition in float64 numpy, its known cases, and through workbench."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from workbench_dcor import DistanceCorrelation
from workbench_dcor.measure import DCorParams

from workbench.components.registry import Registry


def dcor_squared_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Székely et al. 2007, straight from the definition, in float64."""

    def centred(x):
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        return d - d.mean(0, keepdims=True) - d.mean(1, keepdims=True) + d.mean()

    A, B = centred(a.astype(np.float64)), centred(b.astype(np.float64))
    dcov_ab, dcov_aa, dcov_bb = (A * B).mean(), (A * A).mean(), (B * B).mean()
    return dcov_ab / np.sqrt(dcov_aa * dcov_bb)


@pytest.fixture
def measure():
    # A negligible floor so the measure is the textbook statistic (the default floor of 1e-2 on
    # squared distances is for training stability).
    return DistanceCorrelation(DCorParams(epsilon=1e-12))


@pytest.mark.parametrize("d_a,d_b", [(3, 5), (64, 1), (256, 10)])
def test_matches_the_definition(measure, d_a, d_b):
    rng = np.random.default_rng(d_a)
    a = rng.normal(size=(48, d_a))
    b = np.tanh(a[:, :1] * 2) + 0.5 * rng.normal(size=(48, d_b))
    got = float(measure(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)))
    assert got == pytest.approx(dcor_squared_reference(a, b), rel=1e-4)


def test_affine_copy_is_one_and_independent_samples_are_near_zero(measure):
    rng = np.random.default_rng(0)
    a = torch.tensor(rng.normal(size=(200, 4)), dtype=torch.float32)
    assert float(measure(a, 3.0 * a + 7.0)) == pytest.approx(1.0, abs=1e-5)
    # The sample dCor² of independent variables is biased upwards by O(1/n): small, and shrinking.
    small = float(measure(a, torch.tensor(rng.normal(size=(200, 4)), dtype=torch.float32)))
    a_large = torch.tensor(rng.normal(size=(800, 4)), dtype=torch.float32)
    large = float(measure(a_large, torch.tensor(rng.normal(size=(800, 4)), dtype=torch.float32)))
    assert large < 0.03 and large < small < 0.15


def test_prepare_pair_equals_call_and_gradients_are_finite(measure):
    a = torch.randn(32, 10, requires_grad=True)
    b = torch.randn(32, 3)
    value = measure.pair(measure.prepare(a), measure.prepare(b))
    assert torch.allclose(value, measure(a, b))
    value.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_registered_through_the_entry_point_module_and_usable_by_bido(plugin_manager):
    import workbench_dcor

    if not plugin_manager.pm.has_plugin("dcor"):
        plugin_manager.register(workbench_dcor, "dcor")
    registry = Registry(plugin_manager)
    assert registry.get("dependency", "dcor").plugin == "dcor"
    model = registry.create("backbone", "lenet5").build(5, 1, 16)
    defense = registry.create("defense", "bido", lambda_x=0.1, lambda_y=1.0, measure={"use": "dcor"})
    x, y = torch.rand(16, 1, 16, 16), torch.arange(16) % 5
    logits, hiddens = model.forward_hidden(x)
    out = defense.loss(x=x, y=y, logits=logits, hiddens=hiddens, model=model)
    assert torch.isfinite(out.loss) and set(out.logs) >= {"dep_x/0", "dep_y/2"}
    assert [h.shape[1:] for h in hiddens][-1] == torch.Size([84])
