"""The dependency measures (`hsic`, `hsic-biased`, `coco`) against independent float64 references.

The references below are written straight from the formulas in spec/bido.md with numpy and
scipy in float64 (explicit centring matrix H, explicit inverse, direct pairwise distances), so
they share no code or tricks with the plugin (which centres without H, solves instead of
inverting, uses expm1 for the Gaussian and low-rank algebra for narrow linear kernels).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.spatial.distance import cdist

from workbench import load_registry
from workbench.errors import WorkbenchError
from workbench_dependence import COCO, BiasedHSIC, DependenceParams, NormalizedHSIC, NormalizedHSICParams

MEASURES = ("hsic", "hsic-biased", "coco")
KERNELS = ("gaussian", "linear", "imq")
M = 64  # BiDO's batch size
SIGMA = 5.0
EPSILON = 1e-5


# ---------------------------------------------------------------- float64 references


def reference_kernel(x: np.ndarray, kernel: str, sigma: float = SIGMA) -> np.ndarray:
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    if kernel == "gaussian":
        return np.exp(-cdist(x, x, "sqeuclidean") / (2.0 * sigma**2 * x.shape[1]))
    if kernel == "linear":
        return x @ x.T
    if kernel == "imq":
        return 1.0 / np.sqrt(cdist(x, x, "sqeuclidean") + 1.0)
    raise AssertionError(kernel)


def reference_from_kernels(
    name: str, gram_a: np.ndarray, gram_b: np.ndarray, epsilon: float = EPSILON
) -> float:
    m = gram_a.shape[0]
    h = np.eye(m) - np.ones((m, m)) / m
    if name == "hsic":
        ra = gram_a @ h @ np.linalg.inv(gram_a @ h + epsilon * m * np.eye(m))
        rb = gram_b @ h @ np.linalg.inv(gram_b @ h + epsilon * m * np.eye(m))
        return float(np.sum(ra * rb.T))
    if name == "hsic-biased":
        return float(np.trace(gram_a @ h @ gram_b @ h) / (m - 1) ** 2)
    if name == "coco":
        return float(np.sqrt(np.linalg.norm((h @ gram_a @ h) @ (h @ gram_b @ h), "fro")) / m)
    raise AssertionError(name)


def reference(name: str, a: np.ndarray, b: np.ndarray, kernel_a: str, kernel_b: str) -> float:
    return reference_from_kernels(name, reference_kernel(a, kernel_a), reference_kernel(b, kernel_b))


# ---------------------------------------------------------------- batches shaped like BiDO's


def images(d: int, seed: int, m: int = M) -> np.ndarray:
    """Flattened inputs in [0, 1], like BiDO's X."""
    return np.random.default_rng(seed).random((m, d), dtype=np.float32)


def structured_images(d: int, seed: int, m: int = M, rank: int = 6) -> np.ndarray:
    """Inputs in [0, 1] driven by a few latent factors, as real images are.

    iid uniform pixels are a poor stand-in when testing dependence: in high dimension every
    centred Gram matrix of them is close to a multiple of I, so X scores nearly as high
    against independent noise as against itself.
    """
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((m, rank))
    basis = rng.standard_normal((rank, d)) / np.sqrt(rank)
    return (1.0 / (1.0 + np.exp(-(latents @ basis)))).astype(np.float32)


def hidden(x: np.ndarray, width: int, seed: int, noise: float = 0.3) -> np.ndarray:
    """A ReLU block output that depends on x (plus noise), like a hidden layer Z."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((x.shape[1], width)).astype(np.float32) / np.sqrt(x.shape[1])
    noise = noise * rng.standard_normal((x.shape[0], width)).astype(np.float32)
    return np.maximum((x - 0.5) @ weights * 3.0 + noise, 0.0).astype(np.float32)


def one_hot(labels: np.ndarray, classes: int = 5) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def random_labels(seed: int, m: int = M, classes: int = 5) -> np.ndarray:
    return one_hot(np.random.default_rng(seed).integers(0, classes, m), classes)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: these are small ops, and on a shared machine OpenMP threads that
    spin-wait for busy cores make them several times slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def registry():
    """Built once: loading every built-in plugin takes seconds on a busy machine."""
    return load_registry()


def create(name: str, **params):
    return registry().create("dependency", name, **params)


def value(measure, a: np.ndarray, b: np.ndarray) -> float:
    result = measure(torch.from_numpy(a), torch.from_numpy(b))
    assert result.shape == () and result.dtype == torch.float32
    return result.item()


# ---------------------------------------------------------------- agreement with float64


@pytest.mark.parametrize("d", [10, 784, 4096])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", MEASURES)
def test_matches_float64_reference(name, kernel, d):
    x = images(d, seed=d)
    z = hidden(x, 300, seed=d + 1)
    measure = create(name, kernel_a=kernel, kernel_b=kernel)
    assert value(measure, x, z) == pytest.approx(reference(name, x, z, kernel, kernel), rel=1e-4)


@pytest.mark.parametrize("source", ["input", "hidden"])
@pytest.mark.parametrize("name", MEASURES)
def test_label_kernel_matches_float64_reference(name, source):
    """d(X, Y) and d(Z, Y) with BiDO's label kernel: linear on one-hot labels, 5 classes."""
    x = images(784, seed=3)
    a = x if source == "input" else hidden(x, 1024, seed=4)
    y = random_labels(seed=5)
    measure = create(name, kernel_a="gaussian", kernel_b="linear")
    assert value(measure, a, y) == pytest.approx(reference(name, a, y, "gaussian", "linear"), rel=1e-4)


def test_wide_input_matches_float64_reference():
    """One d = 65536 batch (a 256x256 image), every measure, against labels and a hidden layer."""
    x = images(65536, seed=7)
    z = hidden(x[:, :4096], 512, seed=8)
    y = random_labels(seed=9)
    kx = reference_kernel(x, "gaussian")
    kz = reference_kernel(z, "gaussian")
    ky = reference_kernel(y, "linear")
    for name in MEASURES:
        measure = create(name, kernel_b="linear")
        prepared_x = measure.prepare(torch.from_numpy(x), "gaussian")
        found_y = measure.pair(prepared_x, measure.prepare(torch.from_numpy(y), "linear")).item()
        found_z = measure.pair(prepared_x, measure.prepare(torch.from_numpy(z), "gaussian")).item()
        assert found_y == pytest.approx(reference_from_kernels(name, kx, ky), rel=1e-4), name
        assert found_z == pytest.approx(reference_from_kernels(name, kx, kz), rel=1e-4), name


# ---------------------------------------------------------------- closed forms and properties


def test_balanced_labels_closed_form():
    """m = 60, 5 classes x 12: H Y Yᵀ H has eigenvalue 12 four times and 0 otherwise, so
    nHSIC(Y, Y) = 4 (12 / (12 + 60 ε))², biased HSIC = 4·12² / 59², COCO = sqrt(2·12²) / 60."""
    y = torch.from_numpy(one_hot(np.repeat(np.arange(5), 12)))
    linear = {"kernel_a": "linear", "kernel_b": "linear"}
    expected = {
        "hsic": 4 * (12 / (12 + 60 * EPSILON)) ** 2,
        "hsic-biased": 4 * 144 / 59**2,
        "coco": math.sqrt(2 * 144) / 60,
    }
    for name, closed_form in expected.items():
        assert create(name, **linear)(y, y).item() == pytest.approx(closed_form, rel=1e-5), name


@pytest.mark.parametrize("name", MEASURES)
def test_dependent_pair_scores_clearly_higher_than_independent_noise(name):
    x = structured_images(784, seed=11)
    noise = structured_images(784, seed=12)
    z = hidden(x, 512, seed=13, noise=0.1)
    measure = create(name)
    assert value(measure, x, x) > 1.5 * value(measure, x, noise)
    # Shuffling z's rows keeps its distribution and breaks the pairing with x.
    shuffled = z[np.random.default_rng(14).permutation(M)]
    assert value(measure, x, z) > 1.5 * value(measure, x, shuffled)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", MEASURES)
def test_constant_variable_has_zero_dependence(name, kernel):
    """H K H = 0 and K H = 0 when every sample is the same, so all three measures are 0."""
    x = images(784, seed=15)
    constant = np.full((M, 32), 0.25, dtype=np.float32)
    measure = create(name, kernel_a="gaussian", kernel_b=kernel)
    assert abs(value(measure, x, constant)) <= 1e-6 * max(1.0, abs(value(measure, x, x)))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", MEASURES)
def test_symmetric_and_invariant_to_joint_sample_order(name, kernel):
    x = images(784, seed=16)
    z = hidden(x, 256, seed=17)
    measure = create(name, kernel_a=kernel, kernel_b=kernel)
    forward = value(measure, x, z)
    assert value(measure, z, x) == pytest.approx(forward, rel=1e-5)
    order = np.random.default_rng(18).permutation(M)
    assert value(measure, x[order], z[order]) == pytest.approx(forward, rel=1e-5)


@pytest.mark.parametrize("kernel", ["gaussian", "imq"])
@pytest.mark.parametrize("name", MEASURES)
def test_distance_kernels_ignore_translation_and_feature_order(name, kernel):
    x = images(784, seed=19)
    z = hidden(x, 256, seed=20)
    measure = create(name, kernel_a=kernel, kernel_b=kernel)
    forward = value(measure, x, z)
    shifted = x + np.float32(3.0)
    reordered = x[:, np.random.default_rng(21).permutation(784)]
    assert value(measure, shifted, z) == pytest.approx(forward, rel=1e-4)
    assert value(measure, reordered, z) == pytest.approx(forward, rel=1e-5)


def test_images_are_flattened_from_dim_one():
    x = images(256, seed=22)
    z = hidden(x, 128, seed=23)
    for name in MEASURES:
        measure = create(name)
        flat = measure(torch.from_numpy(x), torch.from_numpy(z))
        shaped = measure(torch.from_numpy(x).view(M, 1, 16, 16), torch.from_numpy(z).view(M, 8, 4, 4))
        assert shaped.item() == pytest.approx(flat.item(), rel=1e-6)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", MEASURES)
def test_gradients_flow_to_the_first_variable(name, kernel):
    x = images(784, seed=24)
    a = torch.from_numpy(hidden(x, 512, seed=25)).requires_grad_()
    for b, kernel_b in ((torch.from_numpy(x), kernel), (torch.from_numpy(random_labels(seed=26)), "linear")):
        a.grad = None
        create(name, kernel_a=kernel, kernel_b=kernel_b)(a, b).backward()
        assert a.grad is not None
        assert torch.isfinite(a.grad).all()
        assert a.grad.abs().max() > 0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", MEASURES)
def test_gradients_match_finite_differences_in_float64(name, kernel):
    """float64 inputs stay float64, so autograd can be checked against finite differences.
    Small σ and a larger ε keep the problem well conditioned for differencing."""
    generator = torch.Generator().manual_seed(27)
    a = torch.rand(8, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    b = (
        a.detach()[:, :2] + 0.3 * torch.rand(8, 2, generator=generator, dtype=torch.float64)
    ).requires_grad_()
    params = {"epsilon": 1e-2} if name == "hsic" else {}
    measure = create(name, kernel_a=kernel, kernel_b=kernel, sigma=0.5, **params)
    assert measure(a, b).dtype == torch.float64
    assert torch.autograd.gradcheck(measure, (a, b))


def test_coco_gradient_is_finite_for_a_constant_layer():
    """A dead ReLU block (all zeros over the batch) must not turn the loss into NaN."""
    x = torch.from_numpy(images(256, seed=28))
    dead = torch.zeros(M, 64, requires_grad=True)
    result = create("coco")(dead, x)
    result.backward()
    assert result.item() == pytest.approx(0.0, abs=1e-8)
    assert torch.isfinite(dead.grad).all()


# ---------------------------------------------------------------- sharing work across layers


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", MEASURES)
def test_prepare_many_equals_prepare_one_by_one(name, kernel):
    x = images(256, seed=29)
    # MCNN-like hidden widths, plus a 32-wide layer (below m: nHSIC's low-rank linear path).
    layers = [torch.from_numpy(hidden(x, width, seed=30 + width)) for width in (2048, 32, 1024, 512)]
    measure = create(name)
    together = measure.prepare_many(layers, kernel)
    assert len(together) == len(layers)
    prepared_x = measure.prepare(torch.from_numpy(x), "gaussian")
    for layer, batched in zip(layers, together, strict=True):
        alone = measure.prepare(layer, kernel)
        assert batched.kernel == kernel
        torch.testing.assert_close(batched.matrix, alone.matrix, rtol=1e-5, atol=1e-6)
        assert measure.pair(prepared_x, batched).item() == pytest.approx(
            measure.pair(prepared_x, alone).item(), rel=1e-5
        )


@pytest.mark.parametrize("name", MEASURES)
def test_call_equals_pair_of_prepared(name):
    x = torch.from_numpy(images(784, seed=31))
    y = torch.from_numpy(random_labels(seed=32))
    measure = create(name, kernel_a="imq", kernel_b="linear")
    assert (measure.kernel_a, measure.kernel_b) == ("imq", "linear")
    paired = measure.pair(measure.prepare(x, "imq"), measure.prepare(y, "linear"))
    assert measure(x, y).item() == pytest.approx(paired.item(), rel=1e-6)


def test_pairing_mismatched_preparations_is_refused():
    a = torch.from_numpy(images(32, seed=33))
    hsic, coco = create("hsic"), create("coco")
    with pytest.raises(ValueError, match="pairs 'R' preparations"):
        hsic.pair(hsic.prepare(a, "gaussian"), coco.prepare(a, "gaussian"))
    with pytest.raises(ValueError, match="same batch size"):
        coco.pair(coco.prepare(a, "gaussian"), coco.prepare(a[:10], "gaussian"))
    with pytest.raises(ValueError, match="batch size m"):
        coco.prepare_many([a, a[:10]], "gaussian")
    with pytest.raises(ValueError, match="at least 2 samples"):
        coco.prepare(a[:1], "gaussian")
    with pytest.raises(ValueError, match="unknown kernel 'rbf'"):
        coco.prepare(a, "rbf")


# ---------------------------------------------------------------- precision under bf16 / autocast


@pytest.mark.parametrize("name", MEASURES)
def test_bf16_inputs_give_a_float32_result(name):
    x = torch.from_numpy(images(784, seed=34))
    z = torch.from_numpy(hidden(x.numpy(), 512, seed=35))
    measure = create(name)
    full = measure(x, z)
    low = measure(x.bfloat16(), z.bfloat16())
    assert low.dtype == torch.float32
    # Exactly the float32 computation on the rounded values ...
    rounded = measure(x.bfloat16().float(), z.bfloat16().float())
    assert low.item() == pytest.approx(rounded.item(), rel=1e-6)
    # ... and close to the float32 result: bf16 keeps ~3 significant digits of each input.
    assert low.item() == pytest.approx(full.item(), rel=2e-2)


@pytest.mark.parametrize("name", MEASURES)
def test_autocast_does_not_lower_precision(name):
    x = torch.from_numpy(images(784, seed=36))
    y = torch.from_numpy(random_labels(seed=37))
    measure = create(name, kernel_b="linear")
    plain = measure(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = measure(x, y)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(plain.item(), rel=1e-6)


# ---------------------------------------------------------------- registry and params


def test_registered_and_reachable_through_the_registry():
    registry = load_registry()  # a fresh one: registration itself is under test
    assert {"hsic", "hsic-biased", "coco"} <= set(registry.names("dependency"))
    hsic = registry.create("dependency", "hsic", sigma=5.0)
    assert isinstance(hsic, NormalizedHSIC)
    assert (hsic.kernel_a, hsic.kernel_b, hsic.sigma, hsic.epsilon) == ("gaussian", "gaussian", 5.0, 1e-5)
    assert isinstance(registry.create("dependency", "hsic-biased"), BiasedHSIC)
    coco = registry.create("dependency", "coco", kernel_b="linear", sigma=2.0)
    assert isinstance(coco, COCO) and (coco.kernel_b, coco.sigma) == ("linear", 2.0)
    for name in MEASURES:
        component = registry.get("dependency", name)
        assert component.plugin == "workbench_dependence"
        assert component.summary
        schema = component.params_schema()
        assert schema["properties"]["sigma"]["description"]
        assert schema["properties"]["kernel_a"]["enum"] == ["gaussian", "linear", "imq"]


@pytest.mark.parametrize(
    ("name", "params", "mentions"),
    [
        ("hsic", {"kernel_a": "rbf"}, "kernel_a"),
        ("coco", {"kernel_b": "rbf"}, "kernel_b"),
        ("hsic-biased", {"sigma": 0}, "sigma"),
        ("hsic", {"epsilon": -1.0}, "epsilon"),
        ("coco", {"epsilon": 1e-5}, "unknown key 'epsilon'"),
    ],
)
def test_bad_params_are_user_errors(name, params, mentions):
    with pytest.raises(WorkbenchError, match=mentions) as caught:
        create(name, **params)
    assert "\n" not in str(caught.value)


def test_params_models_validate_on_their_own():
    with pytest.raises(ValidationError, match="kernel_a"):
        DependenceParams(kernel_a="rbf")
    with pytest.raises(ValidationError, match="sigma"):
        NormalizedHSICParams(sigma=0)
    assert NormalizedHSICParams().epsilon == 1e-5
