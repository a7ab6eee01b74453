"""`fid-inception` is pytorch-fid's FID Inception with local weights: its features equal the
package's on the same inputs, its Fréchet distance equals the package's function, and a missing or
foreign weights file is one line naming the file and its expected SHA-256. Random weights stand in
for the real ones (which cannot be fetched here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_fid import inception as package
from pytorch_fid.fid_score import calculate_frechet_distance
from torch.utils.data import TensorDataset

from workbench import load_registry
from workbench.api import AttackResult, DataSplits, EvalContext, WorkbenchError
from workbench_attacks.privacy import (
    FID_INCEPTION_SHA256,
    InceptionFeatures,
    feature_statistics,
    file_sha256,
    frechet_distance,
)


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A randomly initialised FID Inception's state dict, saved as pytorch-fid's file would be."""
    real_load = torch.nn.Module.load_state_dict
    torch.manual_seed(0)
    try:  # build the package's network without its download: skip the load of the fetched state
        torch.nn.Module.load_state_dict = lambda self, state, *a, **k: None
        package_fetch = package.load_state_dict_from_url
        package.load_state_dict_from_url = lambda *a, **k: {}
        net = package.fid_inception_v3()
    finally:
        torch.nn.Module.load_state_dict = real_load
        package.load_state_dict_from_url = package_fetch
    with torch.no_grad():  # He initialisation keeps the activations O(1) through the 94 layers
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def package_net(random_weights):
    """pytorch-fid's own InceptionV3 (pool3, resize and normalise on) with the same weights."""
    state = torch.load(random_weights, weights_only=True)
    fetch = package.load_state_dict_from_url
    package.load_state_dict_from_url = lambda *a, **k: state
    try:
        return package.InceptionV3([package.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        package.load_state_dict_from_url = fetch


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to 1e-6 relative to the features' scale (which must be a real one)."""
    scale = float(b.abs().max())
    assert scale > 1e-2, scale
    return bool(((a - b).abs().max() <= 1e-6 * scale).item())


def test_features_equal_pytorch_fids_on_the_same_inputs(random_weights, package_net):
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    ours = InceptionFeatures(random_weights, 299).eval()
    with torch.no_grad():
        want = package_net(x)[0].flatten(1)
        assert want.shape == (2, 2048)
        assert close(ours(x), want)
        # Grey images are repeated to RGB; LOMMA's convention truncates to uint8 first.
        grey = x[:, :1]
        assert close(ours(grey), package_net(grey.repeat(1, 3, 1, 1))[0].flatten(1))
        lomma = InceptionFeatures(random_weights, 299, uint8=True).eval()
        assert close(lomma(x), package_net((x * 255).to(torch.uint8).float() / 255)[0].flatten(1))
        assert not close(lomma(x), want)  # the uint8 step changes the features


def test_frechet_distance_equals_pytorch_fids():
    gen = np.random.default_rng(0)
    a = gen.normal(size=(400, 16))
    b = gen.normal(size=(300, 16)) @ gen.normal(size=(16, 16)) * 0.5 + 0.3
    mu1, s1 = feature_statistics(torch.from_numpy(a))
    mu2, s2 = feature_statistics(torch.from_numpy(b))
    ours = frechet_distance(mu1, s1, mu2, s2)
    want = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert abs(ours - want) <= 1e-6 * max(1.0, abs(want)) and want > 1


def eval_context(result: AttackResult, private_x: torch.Tensor, private_y: torch.Tensor) -> EvalContext:
    data = DataSplits(train=TensorDataset(private_x, private_y), test=TensorDataset(private_x, private_y),
                      public=None, num_classes=2, in_channels=1, image_size=private_x.shape[-1])
    return EvalContext(model=torch.nn.Identity(), data=data, device=torch.device("cpu"),
                       attack=result)


@pytest.mark.slow  # a subprocess or a fresh interpreter: seconds, kept out of the fast lane
def test_the_metric_runs_on_local_weights_without_a_hash(registry, random_weights):
    metric = registry.create("metric", "fid-inception", weights_file=str(random_weights), sha256=None,
                             image_size=75)
    gen = torch.Generator().manual_seed(0)
    private_x = torch.rand(8, 1, 4, 4, generator=gen)
    private_y = torch.tensor([0, 1] * 4)
    other = AttackResult(images=torch.rand(4, 1, 4, 4, generator=gen), targets=torch.tensor([0, 1, 0, 1]))
    value = metric.evaluate(eval_context(other, private_x, private_y))["fid_inception"]
    assert math.isfinite(value) and value > 0
    same = AttackResult(images=private_x, targets=private_y)
    assert metric.evaluate(eval_context(same, private_x, private_y))["fid_inception"] < 1e-6 * value


def test_a_missing_or_foreign_weights_file_is_one_line_with_the_expected_hash(registry, tmp_path, random_weights):
    with pytest.raises(WorkbenchError) as excinfo:
        registry.create("metric", "fid-inception", weights_file=str(tmp_path / "nowhere.pth"))
    message = str(excinfo.value)
    assert "\n" not in message and "nowhere.pth" in message and FID_INCEPTION_SHA256 in message
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    # The random weights are not the real file: refused by their hash, which the line names.
    with pytest.raises(WorkbenchError) as excinfo:
        registry.create("metric", "fid-inception", weights_file=str(random_weights))
    message = str(excinfo.value)
    assert "\n" not in message and file_sha256(random_weights) in message and FID_INCEPTION_SHA256 in message
    # A file of other tensors, hash check off: refused when loaded, in one line.
    bad = tmp_path / "not-inception.pt"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(WorkbenchError) as excinfo:
        InceptionFeatures(bad)
    assert "\n" not in str(excinfo.value) and "FID Inception" in str(excinfo.value)
