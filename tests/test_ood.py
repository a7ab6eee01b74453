"""OOD scores, metrics and training losses, checked against hand arithmetic, float64 formulas
written here, closed forms and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

import workbench
from workbench.errors import WorkbenchError
from workbench.running.ood_metrics import CONVENTION, auroc, fpr_at_tpr, mean_over_sets, ood_metrics
from workbench_ood.losses import (
    energy_margin_loss,
    entropy_loss,
    estimate_energy_margins,
    free_energy,
    outlier_exposure_loss,
)


@pytest.fixture(scope="module")
def registry():
    return workbench.load_registry()


def _softmax64(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# ================================================================ metrics: hand-worked cases


def test_metrics_hand_case_distinct_scores():
    # ID [.9 .8 .7 .6], OOD [.75 .5 .3 .1]
    # FPR95: n_id = 4, need ceil(3.8) = 4 ID kept -> t = 4th largest ID = 0.6; OOD >= 0.6: {0.75} -> 1/4.
    # AUROC: 0.9 and 0.8 beat all 4 OOD, 0.7 and 0.6 beat 3 (not 0.75) -> (4+4+3+3)/16 = 0.875.
    # AUPR-In: ranking .9I .8I .75O .7I .6I ... ; precision at each ID hit 1/1, 2/2, 3/4, 4/5
    #   -> (1 + 1 + .75 + .8)/4 = 0.8875.
    # AUPR-Out: ranking by -score: .1O .3O .5O .6I .7I .75O ...; precision at each OOD hit
    #   1, 1, 1, 4/6 -> (3 + 2/3)/4 = 11/12.
    got = ood_metrics([0.9, 0.8, 0.7, 0.6], [0.75, 0.5, 0.3, 0.1])
    assert got == pytest.approx({"fpr95": 0.25, "auroc": 0.875, "aupr_in": 0.8875, "aupr_out": 11 / 12})


def test_metrics_hand_case_with_ties():
    # ID [1 1 0], OOD [1 0 0]
    # FPR95: need ceil(2.85) = 3 ID kept -> t = 0; every OOD >= 0 -> 1.
    # AUROC: each ID 1: tie with OOD 1 (1/2) + beats two 0s = 2.5; ID 0: ties two 0s = 1 -> 6/9.
    # AUPR-In: threshold 1 takes {I, I, O}: P = 2/3, R = 2/3; threshold 0 takes all: P = 3/6, R = 1
    #   -> 2/3·2/3 + 1/3·1/2 = 11/18. AUPR-Out is the mirror image: also 11/18.
    got = ood_metrics([1, 1, 0], [1, 0, 0])
    assert got == pytest.approx({"fpr95": 1.0, "auroc": 2 / 3, "aupr_in": 11 / 18, "aupr_out": 11 / 18})


def test_fpr95_threshold_is_the_ceil_095n_th_largest_id_score_and_ties_count():
    # ID 1..20: need ceil(19) = 19 kept -> t = 19th largest = 2 (only the score 1 is given up).
    # OOD [1.5, 2, 5]: 2 (tied with t) and 5 are >= t -> 2/3.
    # AUROC: vs 1.5: 19 ID above; vs 2: 18 above + 1 tie; vs 5: 15 above + 1 tie -> 53/60.
    id_scores = np.arange(1, 21, dtype=float)
    assert fpr_at_tpr(id_scores, [1.5, 2.0, 5.0]) == pytest.approx(2 / 3)
    assert auroc(id_scores, [1.5, 2.0, 5.0]) == pytest.approx(53 / 60)
    # ID 0..99: need 95 kept -> t = 95th largest = 5 (guards against 0.95·100 rounding up to 96).
    assert fpr_at_tpr(np.arange(100.0), [4.9, 5.0, 5.1]) == pytest.approx(2 / 3)


def test_identical_distributions_all_tied():
    # Every pair ties -> AUROC exactly 1/2; one threshold takes everything -> AP = base rate.
    got = ood_metrics([0.5] * 4, [0.5] * 6)
    assert got["auroc"] == 0.5
    assert got["fpr95"] == 1.0
    assert got["aupr_in"] == pytest.approx(4 / 10)
    assert got["aupr_out"] == pytest.approx(6 / 10)


def test_perfect_and_reversed_separation():
    perfect = ood_metrics([2.0, 3.0, 4.0], [0.0, 1.0])
    assert perfect == {"fpr95": 0.0, "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}
    reversed_ = ood_metrics([0.0, 1.0], [2.0, 3.0, 4.0])
    assert reversed_["auroc"] == 0.0
    assert reversed_["fpr95"] == 1.0


# ================================================================ metrics: against sklearn


def _brute_force_fpr95(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Literal definition: the largest candidate t with >= 95% of ID scores >= t."""
    candidates = np.unique(np.concatenate([id_scores, ood_scores]))
    keeping = [t for t in candidates if np.mean(id_scores >= t) >= 0.95]
    return float(np.mean(ood_scores >= max(keeping)))


@pytest.mark.parametrize("decimals", [0, 1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_on_random_scores_with_many_ties(seed, decimals):
    rng = np.random.default_rng(seed)
    id_scores = np.round(rng.normal(1.0, 1.0, size=137), decimals)
    ood_scores = np.round(rng.normal(0.0, 1.2, size=91), decimals)
    labels = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
    pooled = np.r_[id_scores, ood_scores]

    got = ood_metrics(id_scores, ood_scores)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, pooled), abs=1e-12)
    assert got["aupr_in"] == pytest.approx(average_precision_score(labels, pooled), abs=1e-12)
    assert got["aupr_out"] == pytest.approx(average_precision_score(1 - labels, -pooled), abs=1e-12)
    assert got["fpr95"] == pytest.approx(_brute_force_fpr95(id_scores, ood_scores), abs=1e-12)
    assert all(0.0 <= value <= 1.0 for value in got.values())


def test_metrics_accept_torch_tensors_and_infinite_scores():
    got = ood_metrics(torch.tensor([3.0, math.inf, math.inf]), torch.tensor([-math.inf, 0.0]))
    assert got == {"fpr95": 0.0, "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}


def test_metrics_reject_nan_and_empty_with_a_clear_line():
    with pytest.raises(WorkbenchError, match=r"ood_scores holds 1 NaN"):
        ood_metrics([0.1, 0.2], [0.3, float("nan")])
    with pytest.raises(WorkbenchError, match=r"id_scores is empty"):
        ood_metrics([], [0.3])
    with pytest.raises(WorkbenchError, match=r"tpr must be in \(0, 1\]"):
        fpr_at_tpr([0.1], [0.2], tpr=1.5)


def test_mean_over_sets_and_convention():
    per_set = {
        "letters": {"fpr95": 0.2, "auroc": 0.9, "aupr_in": 0.8, "aupr_out": 0.7},
        "noise": {"fpr95": 0.4, "auroc": 0.7, "aupr_in": 0.6, "aupr_out": 0.5},
    }
    assert mean_over_sets(per_set) == pytest.approx(
        {"fpr95": 0.3, "auroc": 0.8, "aupr_in": 0.7, "aupr_out": 0.6}
    )
    assert mean_over_sets({}) == {}
    assert CONVENTION.startswith("ID positive (BiDO+ convention)")


# ================================================================ scores


class _Linear(nn.Module):
    """f(x) = W·flatten(x) + b with fixed float64 weights, so gradients have a closed form."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0]).double()
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight))
            self.linear.bias.copy_(torch.from_numpy(bias))

    def forward(self, x):
        return self.linear(x.flatten(1))


@pytest.fixture
def linear_case():
    rng = np.random.default_rng(7)
    weight, bias = rng.normal(size=(5, 12)), rng.normal(size=5)
    x = rng.uniform(size=(6, 3, 2, 2))
    return _Linear(weight, bias), weight, bias, x


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_msp_energy_and_max_logit_match_float64_formulas(registry, linear_case, temperature):
    model, weight, bias, x = linear_case
    logits = x.reshape(len(x), -1) @ weight.T + bias
    x_t = torch.from_numpy(x)

    msp = registry.create("ood_score", "msp", temperature=temperature)(model, x_t)
    np.testing.assert_allclose(msp.numpy(), _softmax64(logits / temperature).max(axis=1), rtol=1e-12)

    energy = registry.create("ood_score", "energy", temperature=temperature)(model, x_t)
    expected_energy = temperature * np.log(np.exp(logits / temperature).sum(axis=1))
    np.testing.assert_allclose(energy.numpy(), expected_energy, rtol=1e-12)

    max_logit = registry.create("ood_score", "max-logit")(model, x_t)
    np.testing.assert_allclose(max_logit.numpy(), logits.max(axis=1), rtol=1e-12)
    assert msp.shape == energy.shape == max_logit.shape == (len(x),)


def test_odin_matches_closed_form_perturbation_under_no_grad(registry, linear_case):
    model, weight, bias, x = linear_case
    temperature, epsilon = 1000.0, 0.0014
    flat = x.reshape(len(x), -1)
    # For a linear model, d/dx [−log softmax_c(Wx/T + b/T)] = −(W_c − Σ_k p_k W_k)/T, c = argmax,
    # so x' = x − ε·sign(that) = x + ε·sign(W_c − pᵀW).
    probs = _softmax64((flat @ weight.T + bias) / temperature)
    top = probs.argmax(axis=1)
    direction = weight[top] - probs @ weight
    perturbed = flat + epsilon * np.sign(direction)
    expected = _softmax64((perturbed @ weight.T + bias) / temperature).max(axis=1)

    model.eval()
    odin = registry.create("ood_score", "odin")
    with torch.no_grad():
        got = odin(model, torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # The step raises the confidence it is scored with, and the model is left untouched.
    plain = registry.create("ood_score", "msp", temperature=temperature)(model, torch.from_numpy(x))
    assert torch.all(got > plain)
    assert all(p.grad is None for p in model.parameters())
    assert not got.requires_grad
    assert not model.training


def test_odin_without_perturbation_is_temperature_scaled_msp(registry, linear_case):
    model, _, _, x = linear_case
    odin = registry.create("ood_score", "odin", temperature=10.0, epsilon=0.0)(model, torch.from_numpy(x))
    msp = registry.create("ood_score", "msp", temperature=10.0)(model, torch.from_numpy(x))
    torch.testing.assert_close(odin, msp, rtol=0, atol=0)


def test_scores_reject_bad_params_and_non_logit_outputs(registry):
    with pytest.raises(WorkbenchError, match="temperature"):
        registry.create("ood_score", "energy", temperature=0)
    with pytest.raises(WorkbenchError, match="epsilon"):
        registry.create("ood_score", "odin", epsilon=-1)

    class ReturnsTuple(nn.Module):
        def forward(self, x):
            return [x], x

    with pytest.raises(WorkbenchError, match=r"ood_score 'msp': model\(x\) must return logits"):
        registry.create("ood_score", "msp")(ReturnsTuple(), torch.zeros(2, 3))


# ================================================================ losses


def _entropy64(logits: np.ndarray) -> np.ndarray:
    probs = _softmax64(logits)
    return -(probs * np.log(probs)).sum(axis=1)


def test_entropy_loss_matches_float64_sum_and_uniform_closed_form():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(8, 10))
    got = entropy_loss(torch.from_numpy(logits), gamma=1e-3)
    assert got.item() == pytest.approx(-1e-3 * _entropy64(logits).sum(), rel=1e-12)
    # Uniform predictions: every sample has entropy log K, summed over the batch.
    uniform = entropy_loss(torch.full((8, 10), 2.5, dtype=torch.float64), gamma=0.5)
    assert uniform.item() == pytest.approx(-0.5 * 8 * math.log(10), rel=1e-12)


def test_entropy_loss_gradient_step_raises_ood_entropy():
    logits = torch.tensor([[4.0, 0.0, -1.0], [0.5, 3.0, 0.0]], requires_grad=True)
    entropy_loss(logits, gamma=1.0).backward()
    stepped = (logits - 0.1 * logits.grad).detach().double().numpy()
    assert _entropy64(stepped).sum() > _entropy64(logits.detach().double().numpy()).sum()


def test_energy_margin_loss_matches_float64_formula():
    rng = np.random.default_rng(4)
    id_logits, ood_logits = rng.normal(2.0, 2.0, size=(6, 5)), rng.normal(0.0, 1.0, size=(3, 5))
    m_in, m_out = -4.0, -2.0
    e_in = -np.log(np.exp(id_logits).sum(axis=1))
    e_out = -np.log(np.exp(ood_logits).sum(axis=1))
    expected = 0.1 * (np.mean(np.maximum(e_in - m_in, 0) ** 2) + np.mean(np.maximum(m_out - e_out, 0) ** 2))
    got = energy_margin_loss(torch.from_numpy(id_logits), torch.from_numpy(ood_logits), m_in, m_out)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert expected > 0  # the case exercises both hinges, not just zeros


def test_energy_margin_loss_closed_form_with_constant_logits():
    # Constant logits c over K classes: E = −(c + log K). With K = 4: ID c = 3 -> E_in = −3 − log 4,
    # OOD c = 0 -> E_out = −log 4.
    id_logits = torch.full((2, 4), 3.0, dtype=torch.float64)
    ood_logits = torch.zeros(5, 4, dtype=torch.float64)
    e_in, e_out = -3 - math.log(4), -math.log(4)
    # Margins already met on both sides -> zero.
    assert energy_margin_loss(id_logits, ood_logits, m_in=e_in + 1, m_out=e_out - 1).item() == 0.0
    # Missed by 2 (ID) and by 0.5 (OOD), with weight 2 -> 2·(2² + 0.5²) = 8.5.
    got = energy_margin_loss(id_logits, ood_logits, m_in=e_in - 2, m_out=e_out + 0.5, weight=2.0)
    assert got.item() == pytest.approx(2.0 * (2**2 + 0.5**2), rel=1e-12)


def test_estimate_energy_margins_is_the_mean_energy_of_each_side():
    rng = np.random.default_rng(5)
    id_batches = [torch.from_numpy(rng.normal(size=(n, 7))) for n in (16, 16, 5)]
    ood_batches = [torch.from_numpy(rng.normal(size=(n, 7))) for n in (8, 8, 3)]
    id_energies = [free_energy(b) for b in id_batches]
    ood_energies = [free_energy(b) for b in ood_batches]
    all_id = np.concatenate([b.numpy() for b in id_batches])
    all_ood = np.concatenate([b.numpy() for b in ood_batches])
    expected = (-np.log(np.exp(all_id).sum(1)).mean(), -np.log(np.exp(all_ood).sum(1)).mean())

    assert estimate_energy_margins(id_energies, ood_energies) == pytest.approx(expected, rel=1e-12)
    assert estimate_energy_margins(torch.cat(id_energies), torch.cat(ood_energies)) == pytest.approx(expected)
    with pytest.raises(WorkbenchError, match="ood_energies is empty"):
        estimate_energy_margins(id_energies, [])
    with pytest.raises(WorkbenchError, match="NaN or infinite"):
        estimate_energy_margins(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_outlier_exposure_loss_is_uniform_cross_entropy_minimal_at_uniform():
    rng = np.random.default_rng(6)
    logits = rng.normal(scale=2.0, size=(9, 6))
    log_probs = np.log(_softmax64(logits))
    got = outlier_exposure_loss(torch.from_numpy(logits), weight=0.5)
    assert got.item() == pytest.approx(0.5 * np.mean(-log_probs.mean(axis=1)), rel=1e-12)
    # Cross-entropy from uniform is >= its entropy log K, with equality only at uniform predictions.
    assert got.item() > 0.5 * math.log(6)
    uniform = torch.full((3, 6), -1.25, dtype=torch.float64, requires_grad=True)
    at_uniform = outlier_exposure_loss(uniform, weight=1.0)
    assert at_uniform.item() == pytest.approx(math.log(6), rel=1e-12)
    at_uniform.backward()
    assert torch.allclose(uniform.grad, torch.zeros_like(uniform.grad), atol=1e-15)


# ------------------------------------------------------------------ OOD losses as components


def test_energy_loss_margins_are_the_last_warmup_epochs_running_means_as_the_reference_reads_them(registry):
    """`OE_fit` ("ER") reads m_in/m_out from its epoch meters before adding the current batch, so the
    margins are the batch-size-weighted means over every warm-up batch of the last epoch but the last."""
    rng = np.random.default_rng(3)
    loss = registry.create("ood_loss", "energy")
    batches = {epoch: [(rng.normal(size=(n, 5)), rng.normal(size=(n // 2, 5)) * 3) for n in (8, 8, 6)]
               for epoch in (0, 1)}
    for epoch, pairs in batches.items():
        for id_logits, ood_logits in pairs:
            loss.observe(torch.from_numpy(id_logits), torch.from_numpy(ood_logits), epoch)

    def energies(logits: np.ndarray) -> np.ndarray:
        return -np.log(np.exp(logits).sum(axis=1))

    used = batches[1][:-1]
    expected_in = np.concatenate([energies(i) for i, _ in used]).mean()
    expected_out = np.concatenate([energies(o) for _, o in used]).mean()
    margins = loss.prepare(None, None, None, torch.device("cpu"))
    assert margins == pytest.approx({"m_in": expected_in, "m_out": expected_out}, rel=1e-12)

    id_logits, ood_logits = rng.normal(size=(4, 5)), rng.normal(size=(2, 5))
    expected = 0.1 * (np.mean(np.maximum(energies(id_logits) - expected_in, 0) ** 2)
                      + np.mean(np.maximum(expected_out - energies(ood_logits), 0) ** 2))
    got = loss(torch.from_numpy(id_logits), torch.from_numpy(ood_logits))
    assert got.item() == pytest.approx(expected, rel=1e-12)

    resumed = registry.create("ood_loss", "energy")
    resumed.restore(margins)
    assert resumed(torch.from_numpy(id_logits), torch.from_numpy(ood_logits)).item() == pytest.approx(expected)


def test_energy_loss_uses_the_recipes_margins_when_given(registry):
    loss = registry.create("ood_loss", "energy", m_in=-7.0, m_out=-2.0, weight=0.5)
    assert loss.prepare(None, None, None, torch.device("cpu")) == {"m_in": -7.0, "m_out": -2.0}
    with pytest.raises(WorkbenchError, match="before its margins"):
        registry.create("ood_loss", "energy")(torch.zeros(2, 3), torch.zeros(2, 3))


def test_warmup_ood_batches_move_batchnorm_as_in_the_reference(registry):
    """With `warmup_ood_forward` the OOD batches pass through the model in training mode during warm-up
    (no gradient): BatchNorm's running statistics differ from a warm-up on ID data alone."""
    from torch.utils.data import TensorDataset

    from workbench.recipe.schema import OODTrainingConfig, TrainConfig
    from workbench.running.trainer import OODFeed, train_classifier

    x = torch.rand(64, 1, 16, 16) * 0.2  # dark ID images, bright OOD noise: BatchNorm's means differ
    train = TensorDataset(x, torch.arange(64) % 5)
    aux = registry.create("ood_dataset", "noise", role="auxiliary", size=64).load(16, 1, 0)
    running = {}
    for forward in (True, False):
        model = registry.create("backbone", "scnn").build(5, 1, 16)
        config = OODTrainingConfig(dataset={"use": "noise"}, warmup_epochs=1, warmup_ood_forward=forward)
        torch.manual_seed(0)
        train_classifier(model, registry.create("defense", "none"), train, TrainConfig(epochs=1, batch_size=32),
                         device=torch.device("cpu"), seed=0,
                         ood=OODFeed(aux, config, registry.create("ood_loss", "entropy")))
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        running[forward] = bn.running_mean.clone()
    assert not torch.allclose(running[True], running[False])


def test_a_third_party_ood_loss_plugs_in_through_its_hook(register_plugin, make_registry):
    from workbench.api import StrictModel, hookimpl

    class Params(StrictModel):
        weight: float = 1.0

    class MaxSoftmaxMargin:
        def __init__(self, params):
            self.params = params

        def __call__(self, id_logits, ood_logits):
            return self.params.weight * ood_logits.softmax(1).max(1).values.mean()

    class Plugin:
        @hookimpl
        def register_ood_losses(self, register):
            register("msp-margin", MaxSoftmaxMargin, params=Params)

    register_plugin(Plugin(), "msp-margin-plugin")
    registry = make_registry()
    loss = registry.create("ood_loss", "msp-margin", weight=2.0)
    assert loss(torch.zeros(2, 4), torch.zeros(3, 4)).item() == pytest.approx(0.5)
    assert registry.get("ood_loss", "msp-margin").plugin == "msp-margin-plugin"
