"""E from a local safetensors file (`[evaluation] weights_file`, `input_size`) and the `facenet`
backbone, BiDO's CelebA evaluation model."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from workbench import load_registry
from workbench.cli import main
from workbench.components.protocols import AttackResult
from workbench.errors import RecipeError, WorkbenchError
from workbench.recipe.load import load_recipe, resolve
from workbench.recipe.write import to_toml
from workbench.running.evaluation import ResizedInput, evaluation_model, run_attack
from workbench.storage.cache import StageCache
from workbench.storage.events import read_events
from workbench.testing import TINY_RECIPE


@pytest.fixture(scope="module")
def registry():
    return load_registry()


E_TABLE = """
[evaluation]
{extra}
[evaluation.backbone]
use = "scnn"
width = 8
"""


def recipe_text(extra: str = "") -> str:
    return TINY_RECIPE + E_TABLE.format(extra=extra)


def build_e(registry, tmp_path: Path, extra: str = "", cache: StageCache | None = None, events=None):
    """E as the runner builds it, for a recipe that is TINY_RECIPE plus an evaluation table."""
    path = tmp_path / "recipe.toml"
    path.write_text(recipe_text(extra))
    recipe = load_recipe(path, registry=registry)
    data = registry.create_from("dataset", recipe.data).load(recipe.seed)
    sink = events if events is not None else []
    model, figures = evaluation_model(recipe, resolve(recipe, registry), registry, data,
                                      cache or StageCache(tmp_path / "cache", registry=registry),
                                      torch.device("cpu"), lambda type, **f: sink.append({"type": type, **f}))
    return model, figures, data


def scrambled(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic random, so a load that skipped any tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=gen) + 0.5 if "running_var" in name else \
                    torch.randn(tensor.shape, generator=gen) * 0.3
                tensor.copy_(values)
    return module.eval()


def save_e(registry, path: Path, num_classes=10, in_channels=1, size=16, seed=3, use="scnn", **params):
    network = scrambled(registry.create("backbone", use, **(({"width": 8} if use == "scnn" else {}) | params))
                        .build(num_classes, in_channels, size), seed)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return network


# ---------------------------------------------------------------- loading


def test_loaded_e_gives_the_in_memory_logits_and_reports_its_file(registry, tmp_path, monkeypatch):
    reference = save_e(registry, tmp_path / "e.safetensors")
    events: list[dict] = []
    monkeypatch.chdir(tmp_path)  # a relative weights_file is taken from the working directory, like data.root
    model, figures, _ = build_e(registry, tmp_path, 'weights_file = "e.safetensors"', events=events)
    x = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        assert torch.equal(model.forward_hidden(x)[1][-1], reference.forward_hidden(x)[1][-1])
    digest = hashlib.sha256((tmp_path / "e.safetensors").read_bytes()).hexdigest()
    assert figures["weights_file"] == "e.safetensors" and figures["weights_sha256"] == digest
    assert figures["cached"] is False and "input_size" not in figures
    assert not [e for e in events if e["type"] == "epoch"]  # not trained
    logs = " ".join(e.get("message", "") for e in events if e["type"] == "log")
    assert "loaded from e.safetensors" in logs and digest[:16] in logs
    # Random weights judge at chance on the 10 digits: the class-order warning says so.
    assert "near chance" in logs


def test_a_dataparallel_prefix_is_dropped(registry, tmp_path):
    reference = save_e(registry, tmp_path / "plain.safetensors")
    save_file({f"module.{k}": v.contiguous() for k, v in reference.state_dict().items()},
              str(tmp_path / "dp.safetensors"))
    model, _, _ = build_e(registry, tmp_path, f'weights_file = "{tmp_path / "dp.safetensors"}"')
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_input_size_resizes_before_e_and_is_keyed(registry, tmp_path):
    reference = save_e(registry, tmp_path / "e32.safetensors", size=32)
    model, figures, _ = build_e(registry, tmp_path,
                                f'weights_file = "{tmp_path / "e32.safetensors"}"\ninput_size = 32')
    assert isinstance(model, ResizedInput) and figures["input_size"] == 32
    seen = []
    model.model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        expected = reference(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))
        assert torch.equal(model(x), expected)
    assert seen == [(3, 1, 32, 32)]


def _bilinear_half_pixel(image: np.ndarray, size: int) -> np.ndarray:
    """Upsampling with half-pixel centres written out in float64: output pixel i samples the input
    at (i + 0.5)·in/out − 0.5, clamped to the image, interpolating its two neighbours per axis."""
    def weights(n_in: int, n_out: int) -> np.ndarray:
        matrix = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
            low = int(np.floor(src))
            high = min(low + 1, n_in - 1)
            matrix[i, low] += 1 - (src - low)
            matrix[i, high] += src - low
        return matrix

    rows, cols = weights(image.shape[0], size), weights(image.shape[1], size)
    return rows @ image @ cols.T


def test_resize_is_bilinear_with_half_pixel_centres_golden():
    image = np.arange(20, dtype=np.float64).reshape(4, 5) ** 1.5 / 20
    image = image[:, :4]  # 4 x 4, not linear, so the interpolation weights matter
    resize = ResizedInput(torch.nn.Identity(), 7).double()
    got = resize(torch.from_numpy(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, _bilinear_half_pixel(image, 7), rtol=0, atol=1e-12)


def test_resize_matches_the_references_pil_bilinear_to_one_grey_level():
    # The reference resizes 64 -> 112 with PIL on 8-bit images (DefendMI low2high); in float the
    # result differs by at most one grey level (PIL rounds its output to 8 bits).
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(pixels).resize((112, 112), Image.BILINEAR), dtype=np.float64) / 255
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].double() / 255
    ours = ResizedInput(torch.nn.Identity(), 112).double()(x)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - pil).max() <= 1 / 255 + 1e-9


# ---------------------------------------------------------------- bad input: one line each


def test_a_pickle_and_train_with_weights_are_recipe_problems(registry, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(recipe_text('weights_file = "weights/FaceNet_95.88.pth"\ninput_size = 4'))
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry=registry)
    problems = info.value.problems
    assert any(p.startswith("evaluation.weights_file: expected a .safetensors file") and "docs/attacks.md" in p
               and "FaceNet_95.88.pth" in p for p in problems), problems
    assert any(p.startswith("evaluation.input_size") for p in problems), problems
    path.write_text(recipe_text('weights_file = "e.safetensors"\n[evaluation.train]\nepochs = 3'))
    with pytest.raises(RecipeError, match="not trained; remove"):
        load_recipe(path, registry=registry)


def test_the_resolved_recipe_of_a_loaded_e_validates_again(registry, tmp_path):
    # A run directory's recipe.toml is the resolved recipe (every default, E's unused `train` too);
    # `--resume` and worker processes read it back, so it must not trip the "train is set" check.
    path = tmp_path / "r.toml"
    path.write_text(recipe_text('weights_file = "e.safetensors"\ninput_size = 32'))
    recipe = load_recipe(path, registry=registry)
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(to_toml(resolve(recipe, registry)))
    again = load_recipe(resolved, registry=registry).evaluation
    assert again.weights_file == Path("e.safetensors") and again.input_size == 32


@pytest.mark.parametrize("case", ["missing", "not-safetensors", "wrong-keys", "wrong-shape"])
def test_bad_weights_files_are_one_line_naming_the_file(registry, tmp_path, case):
    path = tmp_path / "e.safetensors"
    if case == "not-safetensors":
        path.write_bytes(b"PK\x03\x04 a zip-pickled torch checkpoint renamed")
    elif case == "wrong-keys":
        save_e(registry, path, use="mcnn", width=8)
    elif case == "wrong-shape":
        save_e(registry, path, num_classes=7)
    with pytest.raises(WorkbenchError) as info:
        build_e(registry, tmp_path, f'weights_file = "{path}"')
    message = str(info.value)
    assert f"evaluation.weights_file '{path}'" in message and "\n" not in message
    expected = {"missing": "does not exist; expected a local .safetensors state dict of backbone 'scnn'",
                "not-safetensors": "could not be read as safetensors",
                "wrong-keys": "does not fit backbone 'scnn' built for 10 classes",
                "wrong-shape": "shape head.bias file [7] vs model [10], head.weight file [7, 128]"}[case]
    assert expected in message, message


def test_cli_run_with_a_missing_e_is_one_line_before_any_training(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text('weights_file = "no/such/facenet.safetensors"') + textwrap.dedent("""
        [[metrics]]
        use = "attack-accuracy"
        [attacks.gmi]
        use = "gmi"
        """))
    monkeypatch.setattr(sys, "argv", ["workbench", "run", str(recipe), "--run-dir", str(tmp_path / "run"),
                                      "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert "no/such/facenet.safetensors' does not exist" in lines[0]
    epochs = [e for e in read_events(tmp_path / "run") if e["type"] == "epoch"]
    assert epochs == []  # E is checked before any target trains


# ---------------------------------------------------------------- E's weights key the attack results


class CountingAttack:
    """An attack that counts its runs: whether run_attack took its result from the stage cache."""

    def __init__(self):
        from workbench.components.params import NoParams

        self.params = NoParams()
        self.runs = 0

    def run(self, ctx) -> AttackResult:
        self.runs += 1
        return AttackResult(images=torch.zeros(2, 1, 4, 4), targets=torch.tensor([0, 1]), figures={})


def test_e_weights_are_part_of_the_attack_cache_key(registry, tmp_path):
    from workbench.components.protocols import DataSplits

    target = torch.nn.Linear(4, 2)
    data = DataSplits(train=[(torch.zeros(1, 4, 4), 0), (torch.zeros(1, 4, 4), 1)], test=[], public=None,
                      num_classes=2, in_channels=1, image_size=4, class_names=["0", "1"])
    cache = StageCache(tmp_path / "cache", registry=registry)
    attack = CountingAttack()
    e_one, e_two = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    for i, evaluation in enumerate([e_one, e_one, e_two]):
        run_attack("count", attack, target, data, evaluation, torch.device("cpu"), 0, cache,
                   tmp_path / f"variant{i}", lambda *a, **k: None)
    assert attack.runs == 2  # the same E reuses the reconstructions; another E recomputes them


# ---------------------------------------------------------------- a run judged by E from a file

ATTACKS = """
[[metrics]]
use = "attack-accuracy"

[[metrics]]
use = "knn-dist"

[attacks.gmi]
use = "gmi"
gan_steps = 3
critic_iters = 1
iterations = 5
samples_per_class = 2
"""


@pytest.mark.slow
def test_a_run_with_e_from_a_file_skips_its_training_and_judges_as_the_trained_e(
        run_tiny_recipe, registry, tmp_path, isolated_cache):
    trained_text = TINY_RECIPE + ATTACKS + E_TABLE.format(extra="") + "[evaluation.train]\nepochs = 2\n"
    trained_dir, trained = run_tiny_recipe(trained_text)
    # The E that run trained (from the shared stage cache), written to a safetensors file.
    recipe = load_recipe(trained_dir / "recipe.toml", registry=registry)
    data = registry.create_from("dataset", recipe.data).load(recipe.seed)
    e, _ = evaluation_model(recipe, resolve(recipe, registry), registry, data,
                            StageCache(isolated_cache, registry=registry), torch.device("cpu"), lambda *a, **k: None)
    weights = tmp_path / "e.safetensors"
    save_file({k: v.contiguous() for k, v in e.state_dict().items()}, str(weights))

    loaded_text = TINY_RECIPE + ATTACKS + E_TABLE.format(extra=f'weights_file = "{weights}"')
    run_dir, loaded = run_tiny_recipe(loaded_text)
    events = list(read_events(run_dir))
    assert not [e for e in events if e["type"] == "epoch" and e.get("variant") == "evaluation-model"]
    assert [e for e in events if e["type"] == "epoch" and e.get("variant") == "none"]  # the target did train
    assert loaded["evaluation_model"]["weights_file"] == str(weights)
    assert loaded["evaluation_model"]["test_accuracy"] == trained["evaluation_model"]["test_accuracy"]
    assert loaded["variants"][0]["attacks"] == trained["variants"][0]["attacks"]
    assert loaded["variants"][0]["attacks"]["gmi"]["top1"] >= 0  # judged, figures present
    report = (run_dir / "report.md").read_text()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert f"- evaluation model E: `scnn` loaded from `{weights}` (sha256 `{digest}`), not trained" in report
    assert json.loads((run_dir / "results.json").read_text())["evaluation_model"]["weights_sha256"] == digest


# ---------------------------------------------------------------- the facenet backbone (BiDO's CelebA E)


def _ir_parameter_count(units: tuple[int, ...], in_channels: int, image_size: int, classes: int) -> int:
    """IR-ResNet parameters counted from the architecture's description (Defend_MI `FaceNet`,
    `evolve.py` `Backbone112`), layer by layer: BN = 2 per channel, PReLU = 1 per channel."""
    total = in_channels * 64 * 9 + 2 * 64 + 64  # input layer: conv 3x3 (no bias), BN, PReLU
    previous = 64
    for width, count in zip((64, 128, 256, 512), units, strict=True):
        for _ in range(count):
            shortcut = 0 if previous == width else previous * width + 2 * width  # 1x1 conv + BN
            residual = 2 * previous + previous * width * 9 + width + width * width * 9 + 2 * width
            total += shortcut + residual
            previous = width
    side = image_size // 16
    total += 2 * 512 + (512 * side * side * 512 + 512) + 2 * 512  # BN2d, Linear, BN1d
    return total + 512 * classes + classes  # head


@pytest.mark.slow
def test_facenet_is_ir50_at_112_px_with_the_references_names(registry):
    model = registry.create("backbone", "facenet").build(1000, 3, 112)
    assert sum(p.numel() for p in model.parameters()) == _ir_parameter_count((3, 4, 14, 3), 3, 112, 1000)
    state = model.state_dict()
    # Names and shapes as in the authors' FaceNet (so their checkpoint loads once converted).
    assert state["feature.input_layer.0.weight"].shape == (64, 3, 3, 3)
    assert "feature.body.0.shortcut_layer.0.weight" not in state  # 64 -> 64: a strided subsampling
    assert state["feature.body.3.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)
    assert state["feature.body.3.res_layer.3.weight"].shape == (128, 128, 3, 3)
    assert state["feature.body.23.res_layer.4.running_var"].shape == (512,)
    assert "feature.body.24.res_layer.0.weight" not in state  # 3 + 4 + 14 + 3 = 24 units
    assert state["feature.output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert state["feature.output_layer.4.running_mean"].shape == (512,)
    assert state["fc_layer.weight"].shape == (1000, 512)
    ir152 = registry.create("backbone", "facenet", depth=152).build(1000, 3, 64)
    assert sum(p.numel() for p in ir152.parameters()) == _ir_parameter_count((3, 8, 36, 3), 3, 64, 1000)


def test_facenet_hiddens_and_sizes(registry):
    model = registry.create("backbone", "facenet").build(10, 1, 16).eval()
    with torch.no_grad():
        logits, hiddens = model.forward_hidden(torch.rand(2, 1, 16, 16))
    assert logits.shape == (2, 10) and model.feature_dim == 512
    assert [tuple(h.shape[1:]) for h in hiddens] == [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1), (512,)]
    assert model.hidden_names == ["stage1", "stage2", "stage3", "stage4", "feature"]
    assert sum(p.numel() for p in model.parameters()) == _ir_parameter_count((3, 4, 14, 3), 1, 16, 10)
    with pytest.raises(WorkbenchError, match="multiple of 16.*input_size = 112"):
        registry.create("backbone", "facenet").build(10, 3, 100)


def _bn(x: np.ndarray, module: torch.nn.BatchNorm2d) -> np.ndarray:
    mean, var = module.running_mean.double().numpy(), module.running_var.double().numpy()
    weight, bias = module.weight.double().detach().numpy(), module.bias.double().detach().numpy()
    shape = (1, -1, 1, 1)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + module.eps) * weight.reshape(shape) \
        + bias.reshape(shape)


def _conv(x: np.ndarray, weight: torch.Tensor, stride: int, padding: int) -> np.ndarray:
    """Cross-correlation written out: sum over input channels and the kernel window."""
    w = weight.double().detach().numpy()
    out_c, _, k, _ = w.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    side = (padded.shape[-1] - k) // stride + 1
    out = np.zeros((x.shape[0], out_c, side, side))
    for i in range(side):
        for j in range(side):
            window = padded[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = np.einsum("bchw,ochw->bo", window, w)
    return out


@pytest.mark.parametrize(("in_channels", "channels"), [(3, 5), (4, 4)], ids=["projected", "identity"])
def test_one_ir_unit_against_a_float64_transcription(in_channels, channels):
    from workbench_backbones.face_ir import IRUnit

    unit = scrambled(IRUnit(in_channels, channels, stride=2), seed=7).double()
    x = np.random.default_rng(1).normal(size=(2, in_channels, 6, 6))
    # residual: BN -> conv3x3 s1 -> PReLU -> conv3x3 s2 -> BN; shortcut: 1x1 s2 conv + BN, or subsampling
    bn_in, conv1, prelu, conv2, bn_out = unit.res_layer
    h = _conv(_bn(x, bn_in), conv1.weight, 1, 1)
    slope = prelu.weight.double().detach().numpy().reshape(1, -1, 1, 1)
    h = np.where(h > 0, h, slope * h)
    residual = _bn(_conv(h, conv2.weight, 2, 1), bn_out)
    if in_channels == channels:
        shortcut = x[:, :, ::2, ::2]
    else:
        conv, bn = unit.shortcut_layer
        shortcut = _bn(_conv(x, conv.weight, 2, 0), bn)
    with torch.no_grad():
        got = unit(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, residual + shortcut, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_a_facenet_e_from_a_file_judges_through_the_resize(registry, tmp_path):
    reference = save_e(registry, tmp_path / "facenet.safetensors", size=32, use="facenet")
    extra = f'weights_file = "{tmp_path / "facenet.safetensors"}"\ninput_size = 32'
    path = tmp_path / "recipe.toml"
    path.write_text(TINY_RECIPE + f"\n[evaluation]\n{extra}\n[evaluation.backbone]\nuse = \"facenet\"\n")
    recipe = load_recipe(path, registry=registry)
    data = registry.create_from("dataset", recipe.data).load(recipe.seed)
    model, figures = evaluation_model(recipe, resolve(recipe, registry), registry, data,
                                      StageCache(tmp_path / "cache", registry=registry), torch.device("cpu"),
                                      lambda *a, **k: None)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        up = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.equal(model(x), reference(up))
    assert figures["backbone"] == "facenet" and figures["input_size"] == 32


def test_the_celeba_recipes_judge_with_facenet_from_a_file_at_112_px(registry):
    root = Path(__file__).parents[1] / "recipes"
    for name in ("celeba_vgg16_bido.toml", "celeba_vgg16_bido_plus.toml", "celeba_vgg16_lomma.toml"):
        evaluation = load_recipe(root / name, registry=registry).evaluation
        assert evaluation.backbone.use == "facenet" and evaluation.input_size == 112, name
        assert evaluation.weights_file is not None and evaluation.weights_file.suffix == ".safetensors", name


def test_the_documented_conversion_snippet_gives_a_loadable_e(registry, tmp_path, monkeypatch):
    # The snippet of docs/attacks.md, "E from a file", run on a checkpoint shaped as the authors'
    # (`{"state_dict": ...}` saved from DataParallel, so every key starts with `module.`).
    docs = (Path(__file__).parents[1] / "docs" / "attacks.md").read_text()
    section = docs.split("## E from a file", 1)[1].split("\n## ", 1)[0]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    reference = scrambled(registry.create("backbone", "scnn", width=8).build(10, 1, 16), seed=5)
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}, "epoch": 30},
               "FaceNet_95.88.tar")
    exec(compile(snippet, "docs/attacks.md", "exec"), {})
    path = tmp_path / "recipe.toml"
    path.write_text(recipe_text('weights_file = "weights/FaceNet_95.88.safetensors"'))
    recipe = load_recipe(path, registry=registry)
    data = registry.create_from("dataset", recipe.data).load(recipe.seed)
    model, _ = evaluation_model(recipe, resolve(recipe, registry), registry, data,
                                StageCache(tmp_path / "cache", registry=registry), torch.device("cpu"),
                                lambda *a, **k: None)
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_a_missing_inception_file_stops_the_run_before_any_training(tmp_path, monkeypatch, capsys):
    # The LOMMA recipe's FID needs local Inception weights; like E's file, they are checked first.
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE + '\n[[metrics]]\nuse = "fid-inception"\nweights_file = "no/inception.safetensors"\n')
    monkeypatch.setattr(sys, "argv", ["workbench", "run", str(recipe), "--run-dir", str(tmp_path / "run"),
                                      "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no/inception.safetensors' does not exist" in err, err
    assert [e for e in read_events(tmp_path / "run") if e["type"] == "epoch"] == []
