"""Backbones: hidden shapes, one-pass logits, gradients, weights files and user errors.

Expected shapes are worked out by hand from the layer arithmetic (see the comments on the table);
timm's come from each model's own `feature_info` metadata (channels and reduction), not from
running it. Parameter counts are closed forms of the authors' layer lists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import nn

import workbench
from workbench.errors import WorkbenchError


@pytest.fixture(scope="module")
def registry():
    return workbench.load_registry()


def build(
    registry, name: str, params: dict, num_classes: int, in_channels: int, image_size: int
) -> nn.Module:
    return registry.create("backbone", name, **params).build(num_classes, in_channels, image_size)


# (id, name, params, in_channels, image_size, hidden shapes without the batch dimension)
# MCNN/SCNN valid (authors', >= 32 px): 7x7 conv pad 1 loses 4 px, pool halves, 5x5 convs lose 4 px:
#   32 -> 28 -> 14 | 14 -> 10 -> 5 | 5 -> 1;   64 -> 60 -> 30 | 30 -> 26 -> 13 | 13 -> 9.
# Same padding (auto below 32 px): only the pools shrink: 28 -> 14 -> 7 -> 7;  16 -> 8 -> 4 -> 4.
# The feature is block 3 (MCNN) or two more 3x3 convs (SCNN, 16*width channels), averaged.
# VGG16-BN: five 2x pools; hiddens are pools 1-4, feature = 512 * (size/32)^2.
CASES = [
    ("mcnn-32", "mcnn", {}, 1, 32, [(64, 14, 14), (128, 5, 5), (256,)]),
    ("mcnn-28", "mcnn", {"width": 16}, 1, 28, [(16, 14, 14), (32, 7, 7), (64,)]),
    ("mcnn-16", "mcnn", {"width": 16}, 3, 16, [(16, 8, 8), (32, 4, 4), (64,)]),
    ("mcnn-64", "mcnn", {"width": 8}, 1, 64, [(8, 30, 30), (16, 13, 13), (32,)]),
    ("scnn-32", "scnn", {}, 1, 32, [(32, 14, 14), (64, 5, 5), (128, 1, 1), (512,)]),
    ("scnn-28", "scnn", {"width": 8}, 1, 28, [(8, 14, 14), (16, 7, 7), (32, 7, 7), (128,)]),
    ("scnn-16", "scnn", {"width": 8}, 1, 16, [(8, 8, 8), (16, 4, 4), (32, 4, 4), (128,)]),
    ("scnn-64", "scnn", {"width": 8}, 3, 64, [(8, 30, 30), (16, 13, 13), (32, 9, 9), (128,)]),
    ("vgg-64", "vgg16-bn", {}, 3, 64, [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (2048,)]),
    ("vgg-32", "vgg16-bn", {}, 1, 32, [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512,)]),
    ("timm-resnet", "timm", {"model_name": "test_resnet"}, 1, 32, None),
    ("timm-vit", "timm", {"model_name": "test_vit", "feature_indices": [-1, -2]}, 3, 32, None),
    ("timm-effnet", "timm", {"model_name": "test_efficientnet.r160_in1k", "feature_indices": 2}, 1, 32, None),
]
CASE_IDS = [case[0] for case in CASES]
NUM_CLASSES = 5


def expected_timm_shapes(model, image_size: int) -> list[tuple[int, ...]]:
    """From timm's metadata: each chosen level has `num_chs` channels at size/`reduction`."""
    info = model.model.feature_info
    shapes = [
        (info[i]["num_chs"], image_size // info[i]["reduction"], image_size // info[i]["reduction"])
        for i in model.indices
    ]
    feature = getattr(model.model, "head_hidden_size", None) or model.model.num_features
    return [*shapes, (feature,)]


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(module for module in model.modules() if isinstance(module, nn.Conv2d))


@pytest.mark.parametrize(("case_id", "name", "params", "channels", "size", "shapes"), CASES, ids=CASE_IDS)
def test_hidden_shapes_and_one_pass_logits(registry, case_id, name, params, channels, size, shapes):
    model = build(registry, name, params, NUM_CLASSES, channels, size).eval()
    if shapes is None:
        shapes = expected_timm_shapes(model, size)
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        logits, hiddens = model.forward_hidden(x)
        plain = model(x)
        single = model(x[:1])  # batch of one in eval mode (BatchNorm uses running statistics)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.allclose(logits, plain, rtol=1e-5, atol=1e-6)
    assert single.shape == (1, NUM_CLASSES)
    assert torch.allclose(single, logits[:1], rtol=1e-4, atol=1e-5)
    assert [tuple(h.shape[1:]) for h in hiddens] == shapes
    assert all(h.shape[0] == 2 for h in hiddens)
    assert len(model.hidden_names) == len(hiddens)
    assert model.hidden_names[-1] == "feature"
    assert hiddens[-1].dim() == 2 and model.feature_dim == hiddens[-1].shape[1]
    assert first_conv(model).in_channels == channels


def test_timm_hidden_names_follow_feature_info(registry):
    vit = build(registry, "timm", {"model_name": "test_vit", "feature_indices": [-1, -2]}, 3, 3, 32)
    assert vit.hidden_names == ["blocks.4", "blocks.5", "feature"]  # ascending, as timm returns them
    resnet = build(registry, "timm", {"model_name": "test_resnet", "feature_indices": 2}, 3, 3, 32)
    assert resnet.hidden_names == ["layer3", "layer4", "feature"]


# One case per backbone (the smallest image each supports) keeps the backward passes cheap.
GRADIENT_CASES = [
    case for case in CASES if case[0] in {"mcnn-16", "scnn-16", "vgg-32", "timm-resnet", "timm-vit"}
]


@pytest.mark.parametrize(
    ("case_id", "name", "params", "channels", "size", "shapes"),
    GRADIENT_CASES,
    ids=[c[0] for c in GRADIENT_CASES],
)
def test_gradients_reach_first_conv(registry, case_id, name, params, channels, size, shapes):
    torch.manual_seed(0)
    model = build(registry, name, params, NUM_CLASSES, channels, size).train()
    conv = first_conv(model)
    x = torch.rand(2, channels, size, size)
    logits, hiddens = model.forward_hidden(x)
    # Random projections: a plain sum of a BatchNorm'd output is constant in training mode.
    losses = {
        "first hidden": (hiddens[0] * torch.randn_like(hiddens[0])).sum(),
        "feature": (hiddens[-1] * torch.randn_like(hiddens[-1])).sum(),
        "logits": F.cross_entropy(logits, torch.tensor([0, 1])),
    }
    for what, loss in losses.items():
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        grad = conv.weight.grad
        assert grad is not None, f"no gradient from the {what}"
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, f"zero gradient from the {what}"


@pytest.mark.parametrize(
    ("name", "params", "channels", "size"),
    [
        ("mcnn", {"width": 8}, 1, 16),
        ("scnn", {"width": 8}, 1, 16),
        ("vgg16-bn", {}, 3, 32),
        ("timm", {"model_name": "test_vit"}, 3, 32),
    ],
)
def test_deterministic_given_seed(registry, name, params, channels, size):
    torch.manual_seed(123)
    first = build(registry, name, params, NUM_CLASSES, channels, size).state_dict()
    torch.manual_seed(123)
    second = build(registry, name, params, NUM_CLASSES, channels, size).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def _randomise_batchnorm(model: nn.Module) -> None:
    """Non-trivial running statistics and affine terms, so the BN formula is really exercised."""
    generator = torch.Generator().manual_seed(7)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator))


def _bn(x, bn: nn.Module):
    """Eval-mode BatchNorm written out in float64, channel axis 1."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = bn.running_mean.double().view(shape), bn.running_var.double().view(shape)
    weight, bias = bn.weight.double().view(shape), bn.bias.double().view(shape)
    return (x - mean) / torch.sqrt(var + bn.eps) * weight + bias


def test_mcnn_hiddens_match_the_authors_layers_written_out(registry):
    """At 32 px: conv7(pad 1)-BN-LeakyReLU(0.2)-pool, conv5-BN-LReLU-pool, conv5-BN-LReLU, linear."""
    model = build(registry, "mcnn", {"width": 4}, 3, 1, 32).eval()
    with torch.no_grad():
        _randomise_batchnorm(model)
        x = torch.rand(2, 1, 32, 32)
        logits, (block1, block2, feature) = model.forward_hidden(x)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        z = x.double()
        expected = []
        for conv, bn, padding, pool in zip(convs, bns, (1, 0, 0), (True, True, False), strict=True):
            z = F.leaky_relu(
                _bn(F.conv2d(z, conv.weight.double(), conv.bias.double(), padding=padding), bn), 0.2
            )
            z = F.max_pool2d(z, 2) if pool else z
            expected.append(z)
        assert expected[2].shape[2:] == (1, 1)  # the authors' flattened 256x1x1 feature
        flat = expected[2].flatten(1)
        head = model.head
        assert torch.allclose(block1.double(), expected[0], atol=1e-5)
        assert torch.allclose(block2.double(), expected[1], atol=1e-5)
        assert torch.allclose(feature.double(), flat, atol=1e-5)
        assert torch.allclose(logits.double(), flat @ head.weight.double().T + head.bias.double(), atol=1e-5)


def test_vgg_feature_is_batchnormed_flattened_block5(registry):
    model = build(registry, "vgg16-bn", {}, 3, 3, 64).eval()
    with torch.no_grad():
        _randomise_batchnorm(model)
        x = torch.rand(1, 3, 64, 64)
        logits, hiddens = model.forward_hidden(x)
        block5 = model.features(x)  # the whole torchvision conv stack: 512 x 2 x 2 at 64 px
        expected = _bn(block5.flatten(1).double(), model.feature_bn)
        assert block5.shape[1:] == (512, 2, 2)
        assert torch.allclose(hiddens[-1].double(), expected, atol=1e-4)
        head = model.head
        assert torch.allclose(
            logits.double(), expected @ head.weight.double().T + head.bias.double(), atol=1e-4
        )


def _conv_bn_params(layers: list[tuple[int, int, int]]) -> int:
    """Conv (weights + bias) followed by BatchNorm (scale + shift) for (in, out, kernel) triples."""
    return sum(c_in * c_out * k * k + c_out + 2 * c_out for c_in, c_out, k in layers)


def test_parameter_counts_match_the_authors_architectures(registry):
    def count(model: nn.Module, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

    mcnn = build(registry, "mcnn", {}, 5, 1, 32)
    assert count(mcnn) == _conv_bn_params([(1, 64, 7), (64, 128, 5), (128, 256, 5)]) + 256 * 5 + 5
    assert count(mcnn) == 1_029_765
    scnn = build(registry, "scnn", {}, 10, 1, 32)
    scnn_layers = [(1, 32, 7), (32, 64, 5), (64, 128, 5), (128, 256, 3), (256, 512, 3)]
    assert count(scnn) == _conv_bn_params(scnn_layers) + 512 * 10 + 10
    vgg = build(registry, "vgg16-bn", {}, 1000, 3, 64)
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    vgg_layers = [(c_in, c_out, 3) for c_in, c_out in zip([3, *widths[:-1]], widths, strict=True)]
    head = 2 * 2048 + 2048 * 1000 + 1000  # BatchNorm1d(2048) + Linear(2048, 1000)
    assert count(vgg) == _conv_bn_params(vgg_layers) + head
    assert count(vgg, trainable_only=True) == count(vgg) - 2048  # the authors' frozen BN shift


def test_vgg_feature_bn_shift_is_frozen_unless_asked(registry):
    assert not build(registry, "vgg16-bn", {}, 3, 3, 32).feature_bn.bias.requires_grad
    assert build(registry, "vgg16-bn", {"feature_bn_shift": True}, 3, 3, 32).feature_bn.bias.requires_grad


def test_timm_head_dropout_shares_one_sample_between_feature_and_logits(registry):
    model = build(
        registry, "timm", {"model_name": "test_resnet", "model_kwargs": {"drop_rate": 0.5}}, 4, 3, 32
    )
    model.train()
    logits, hiddens = model.forward_hidden(torch.rand(4, 3, 32, 32))
    assert (hiddens[-1] == 0).any()  # dropout did act on the pre-logits
    assert torch.allclose(logits, model.model.get_classifier()(hiddens[-1]), atol=1e-6)


# ------------------------------------------------------------------ weights files


@pytest.fixture(scope="module")
def vgg_source(registry) -> nn.Module:
    """An RGB 32-px VGG16-BN with non-trivial BN statistics, to be saved and loaded (read only)."""
    torch.manual_seed(0)
    model = build(registry, "vgg16-bn", {}, 3, 3, 32)
    with torch.no_grad():
        _randomise_batchnorm(model)
    return model


def test_vgg_pretrained_safetensors_round_trip(registry, vgg_source, tmp_path: Path):
    # torchvision layout: `features.*`, plus a classifier that must be ignored
    tensors = {f"features.{key}": value for key, value in vgg_source.features.state_dict().items()}
    tensors["classifier.0.weight"] = torch.zeros(4, 4)
    path = tmp_path / "vgg_features.safetensors"
    save_file(tensors, str(path))
    torch.manual_seed(1)
    loaded = build(registry, "vgg16-bn", {"pretrained_file": str(path)}, 3, 3, 32)
    expected = vgg_source.features.state_dict()
    got = loaded.features.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    assert not torch.equal(loaded.head.weight, vgg_source.head.weight)  # the head is not in the file


def test_vgg_pretrained_torch_checkpoint_wrapped_and_dataparallel(registry, vgg_source, tmp_path: Path):
    state = {f"module.features.{key}": value for key, value in vgg_source.features.state_dict().items()}
    path = tmp_path / "vgg.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = build(registry, "vgg16-bn", {"pretrained_file": str(path)}, 3, 3, 32)
    expected = vgg_source.features.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.features.state_dict().items())


def test_timm_pretrained_safetensors_round_trip(registry, tmp_path: Path, monkeypatch):
    torch.manual_seed(0)
    source = build(registry, "timm", {"model_name": "test_resnet"}, 5, 1, 32)
    path = tmp_path / "resnet.safetensors"
    save_file(source.model.state_dict(), str(path))
    monkeypatch.setenv("HOME", str(tmp_path))  # recipes may say ~/...; expanded when read
    torch.manual_seed(1)
    params = {"model_name": "test_resnet", "pretrained_file": "~/resnet.safetensors"}
    loaded = build(registry, "timm", params, 5, 1, 32)
    expected, got = source.model.state_dict(), loaded.model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)

    # Other number of classes: the trunk loads, the classifier stays fresh with the new shape.
    other = build(registry, "timm", {"model_name": "test_resnet", "pretrained_file": str(path)}, 7, 1, 32)
    got = other.model.state_dict()
    assert got["fc.weight"].shape == (7, 96)
    assert all(torch.equal(got[key], expected[key]) for key in expected if not key.startswith("fc."))


@pytest.mark.parametrize(("name", "params"), [("vgg16-bn", {}), ("timm", {"model_name": "test_resnet"})])
def test_missing_pretrained_file_names_the_path(registry, tmp_path: Path, name, params):
    missing = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(
        WorkbenchError, match=r"pretrained_file .*nowhere/weights\.safetensors' does not exist"
    ):
        registry.create("backbone", name, pretrained_file=str(missing), **params)


def test_mismatched_pretrained_file_says_which_key(registry, vgg_source, tmp_path: Path):
    path = tmp_path / "rgb.safetensors"
    save_file({f"features.{k}": v for k, v in vgg_source.features.state_dict().items()}, str(path))
    expected = (
        r"rgb\.safetensors' does not fit the VGG16-BN conv stack: "
        r"shape features\.0\.weight file \[64, 3, 3, 3\] vs model \[64, 1, 3, 3\]$"
    )
    with pytest.raises(WorkbenchError, match=expected):
        build(registry, "vgg16-bn", {"pretrained_file": str(path)}, 3, 1, 32)  # grayscale model

    vit = build(registry, "timm", {"model_name": "test_vit"}, 3, 3, 32)
    vit_path = tmp_path / "vit.safetensors"
    save_file(vit.model.state_dict(), str(vit_path))
    with pytest.raises(
        WorkbenchError, match=r"vit\.safetensors' does not fit the timm model: .*missing conv1\.0\.weight"
    ):
        build(registry, "timm", {"model_name": "test_resnet", "pretrained_file": str(vit_path)}, 3, 3, 32)


def test_unreadable_pretrained_files(registry, tmp_path: Path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WorkbenchError, match=r"garbage\.safetensors' could not be read as safetensors"):
        build(registry, "vgg16-bn", {"pretrained_file": str(garbage)}, 3, 3, 32)
    no_tensors = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": 0.1}, no_tensors)
    with pytest.raises(WorkbenchError, match=r"numbers\.pt' holds no state dict"):
        build(registry, "timm", {"model_name": "test_resnet", "pretrained_file": str(no_tensors)}, 3, 3, 32)


# ------------------------------------------------------------------ user errors


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("mcnn", {"width": -3}, r"backbone 'mcnn': width: must be a width from 1 to 65,536 \(got -3\)"),
        ("scnn", {"width": 0}, r"backbone 'scnn': width: must be a width from 1 to 65,536"),
        ("mcnn", {"width": 10**9}, r"backbone 'mcnn': width: must be a width from 1 to 65,536 \(got 1000000000\)"),
        ("mcnn", {"dropout": 1.0}, r"dropout: Input should be less than 1"),
        ("mcnn", {"widht": 32}, r"unknown key 'widht'"),
        ("mcnn", {"padding": "full"}, r"padding: Input should be 'auto', 'valid' or 'same'"),
        (
            "timm",
            {"model_name": "test_resnett"},
            r"unknown timm model 'test_resnett' \(did you mean \"test_resnet\"\?\)",
        ),
        ("timm", {}, r"model_name: required key missing"),
        ("timm", {"model_name": "test_resnet", "feature_indices": 0}, r"feature_indices: .*at least 1"),
        (
            "timm",
            {"model_name": "test_resnet", "model_kwargs": {"pretrained": True}},
            r"pretrained cannot be set",
        ),
    ],
)
def test_bad_params_are_one_line_workbench_errors(registry, name, params, message):
    with pytest.raises(WorkbenchError, match=message) as caught:
        registry.create("backbone", name, **params)
    assert "\n" not in str(caught.value)


def test_params_models_raise_validation_errors_directly():
    from workbench_backbones import MCNNParams, TimmParams

    with pytest.raises(ValidationError, match="width"):
        MCNNParams(width=-1)
    with pytest.raises(ValidationError, match="did you mean"):
        TimmParams(model_name="resnet5O")


@pytest.mark.parametrize(
    ("name", "params", "build_args", "message"),
    [
        (
            "mcnn",
            {"padding": "valid"},
            (5, 1, 28),
            r"padding 'valid' needs images of at least 32 px \(got image_size=28\)",
        ),
        ("scnn", {"padding": "same"}, (5, 1, 3), r"needs images of at least 4 px"),
        ("mcnn", {}, (5, 1, 2), r"needs images of at least 4 px"),
        ("vgg16-bn", {}, (5, 3, 16), r"image_size must be at least 32 px"),
        ("mcnn", {}, (0, 1, 32), r"num_classes must be a positive integer \(got 0\)"),
        (
            "timm",
            {"model_name": "test_resnet", "feature_indices": [0, 9]},
            (5, 3, 32),
            r"feature_indices \[9\] out of range for timm model 'test_resnet' with 5 levels",
        ),
        ("timm", {"model_name": "test_resnet", "feature_indices": 6}, (5, 3, 32), r"has 5 levels"),
    ],
)
def test_impossible_builds_are_workbench_errors(registry, name, params, build_args, message):
    with pytest.raises(WorkbenchError, match=message):
        build(registry, name, params, *build_args)


def test_registered_with_summaries_and_documented_params(registry):
    for name in ("mcnn", "scnn", "vgg16-bn", "timm"):
        component = registry.get("backbone", name)
        assert component.plugin == "workbench_backbones"
        assert component.summary
        schema = component.params_schema()
        for field, spec in schema["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no docstring"
