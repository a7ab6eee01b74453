"""PPA (`ppa`): the Poincaré loss against a direct float64 transcription of spec/attacks.md B4.1,
the initial and final selection rules on hand-built confidence tables, the random resized crop,
the generator read from safetensors (round trip, and one clear line for every bad file), the
shared GMI prior, and (slow) the attack end to end on the embedded digits.

Every expected value is written out here with explicit loops from the spec's formulas, not by
calling the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from digits_recipes import digits_attack_recipe
from workbench.api import AttackContext, DataSplits, StageCache, WorkbenchError, model_state, state_to_tensors
from workbench.attack_toolkit import Critic, Generator
from workbench.testing import TINY_RECIPE
from workbench_attacks.gmi import GMI, GMIParams
from workbench_attacks.ppa import (
    PPA,
    PPAParams,
    load_generator_file,
    poincare_loss,
    random_resized_crop,
    select_top,
)


@pytest.fixture(scope="module")
def registry():
    import workbench

    return workbench.load_registry()


# ---------------------------------------------------------------- the objective


def test_poincare_loss_matches_a_direct_transcription():
    """B4.1: u = o/‖o‖₁, v = clip(onehot(y) − 1e-4, 0, 1), L = arccosh(1 + 2‖u−v‖²/((1−‖u‖²)(1−‖v‖²)))."""
    o = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 2])
    rows = poincare_loss(o, y)
    assert rows.dtype == torch.float64 and rows.shape == (5,)
    for b in range(5):
        l1 = sum(abs(float(o[b, j])) for j in range(4))
        u = [float(o[b, j]) / l1 for j in range(4)]
        v = [min(1.0, max(0.0, (1.0 if j == int(y[b]) else 0.0) - 1e-4)) for j in range(4)]
        u_sq = sum(x * x for x in u)
        v_sq = sum(x * x for x in v)
        diff_sq = sum((a - c) ** 2 for a, c in zip(u, v, strict=True))
        expected = math.acosh(1 + 2 * diff_sq / ((1 - u_sq) * (1 - v_sq)))
        assert float(rows[b]) == pytest.approx(expected, rel=1e-12)


def test_poincare_loss_is_smaller_when_the_target_logit_dominates():
    o = torch.tensor([[4.0, 0.5, -0.5], [0.5, 4.0, -0.5]], dtype=torch.float64, requires_grad=True)
    rows = poincare_loss(o, torch.tensor([0, 0]))
    assert float(rows[0].detach()) < float(rows[1].detach())
    (grad,) = torch.autograd.grad(rows.sum(), o)
    assert bool(torch.isfinite(grad).all())


# ---------------------------------------------------------------- selection rules


def reference_initial_selection(table: list[list[float]], classes: list[int], k: int) -> list[list[int]]:
    """PPA `attacks/initial_selection.py`, transcribed: per target, k times take the row with the
    highest score for that target and set that score to −1."""
    scores = [row[:] for row in table]
    picked = []
    for c in classes:
        mine = []
        for _ in range(k):
            best = max(range(len(scores)), key=lambda i: scores[i][c])
            mine.append(best)
            scores[best][c] = -1.0
        picked.append(mine)
    return picked


def test_initial_selection_keeps_the_most_confident_latents_per_class():
    table = [
        [0.70, 0.20, 0.10],
        [0.10, 0.80, 0.10],
        [0.40, 0.50, 0.10],
        [0.05, 0.05, 0.90],
        [0.60, 0.10, 0.30],
        [0.30, 0.30, 0.40],
    ]
    chosen = select_top(torch.tensor(table), 2).tolist()
    assert chosen == [[0, 4], [1, 2], [3, 5]]  # worked by hand
    assert chosen == reference_initial_selection(table, [0, 1, 2], 2)
    # A latent may serve two classes: row 2 is the runner-up of class 0 when k = 3, and of class 1.
    three = select_top(torch.tensor(table), 3).tolist()
    assert three == reference_initial_selection(table, [0, 1, 2], 3) == [[0, 4, 2], [1, 2, 5], [3, 5, 4]]


class MeanPixelTarget(nn.Module):
    """Logits (a·m, −a·m, b·m) of the image's mean pixel m: a constant image scores the same
    under every crop, so the transform-averaged confidence is known exactly."""

    def forward(self, x):
        m = x.flatten(1).mean(dim=1)
        return torch.stack([3 * m, -3 * m, 0.5 * m], dim=1)


def test_final_selection_keeps_the_top_samples_per_class_best_first():
    levels = [0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8, 0.6]  # constant images
    images = torch.stack([torch.full((1, 8, 8), v) for v in levels])
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    ctx = AttackContext(
        target=MeanPixelTarget(), data=None, evaluation_model=None, device=torch.device("cpu"), seed=0
    )
    attack = PPA(PPAParams(samples_per_target=2, num_candidates=4, select_iterations=5))
    kept = attack.final_selection(ctx, images, targets).tolist()

    def p(v, c):
        logits = [3 * v, -3 * v, 0.5 * v]
        return math.exp(logits[c]) / sum(math.exp(x) for x in logits)

    by_class = {
        c: sorted((i for i in range(8) if int(targets[i]) == c), key=lambda i: -p(levels[i], c))
        for c in (0, 1)
    }
    assert kept == by_class[0][:2] + by_class[1][:2] == [0, 3, 5, 4]


# ---------------------------------------------------------------- transforms


def ramp(n: int, size: int = 16, axis: int = -1) -> torch.Tensor:
    """Pixel value (index + 0.5) / size along `axis`: a bilinear crop of it is exactly linear."""
    line = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    image = line.view(1, size).expand(size, size) if axis == -1 else line.view(size, 1).expand(size, size)
    return image.expand(n, 1, size, size).clone()


def test_random_resized_crop_is_the_identity_at_full_scale_and_mirrors_with_flips():
    x = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same = random_resized_crop(x, torch.Generator().manual_seed(1), (1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-12)
    flips = random_resized_crop(x, torch.Generator().manual_seed(2), (1.0, 1.0), hflip=True)
    mirrored = [bool(torch.allclose(f, xi.flip(-1), atol=1e-12)) for f, xi in zip(flips, x, strict=True)]
    kept = [bool(torch.allclose(f, xi, atol=1e-12)) for f, xi in zip(flips, x, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and any(mirrored) and any(kept)


def test_random_resized_crop_cuts_the_drawn_area_and_falls_back_to_a_centre_crop():
    # Area 1/4 at ratio 1: a window of half the side, so a ramp spans half its range (pixel
    # centres of the output: 15/16 of the window), less where the window's outer half pixel lies
    # beyond the input's outermost pixel centre (bilinear sampling holds the edge value there).
    out = random_resized_crop(ramp(20), torch.Generator().manual_seed(0), (0.25, 0.25))
    spans = out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))
    exact = 0.5 * 15 / 16
    assert bool((spans <= exact + 1e-12).all()) and bool((spans >= exact - 0.5 / 16 - 1e-12).all())
    assert int((spans - exact).abs().lt(1e-12).sum()) >= 15
    # Aspect 2-3 never fits at area ≥ 0.9: torchvision falls back to the full width and the
    # centred height side / 2 (the largest window with the smallest allowed aspect).
    vertical = random_resized_crop(ramp(3, axis=-2), torch.Generator().manual_seed(0), (0.9, 1.0), (2.0, 3.0))
    assert torch.allclose(
        vertical.amax(dim=(1, 2, 3)) - vertical.amin(dim=(1, 2, 3)),
        torch.full((3,), 0.5 * 15 / 16, dtype=torch.float64),
        atol=1e-12,
    )
    assert torch.allclose(
        vertical.mean(dim=(1, 2, 3)), torch.full((3,), 0.5, dtype=torch.float64), atol=1e-12
    )
    a = random_resized_crop(ramp(4), torch.Generator().manual_seed(9), (0.5, 0.9), (0.8, 1.2))
    b = random_resized_crop(ramp(4), torch.Generator().manual_seed(9), (0.5, 0.9), (0.8, 1.2))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- generators from files


def small_generator(z_dim: int = 8, size: int = 8, width: int = 4) -> Generator:
    torch.manual_seed(5)
    g = Generator(z_dim, 1, size, width)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the buffers must round-trip too
        for buffer in g.buffers():
            if buffer.is_floating_point():
                buffer.copy_(torch.rand(buffer.shape) + 0.5)
    return g.eval()


@pytest.mark.parametrize("prefixed", [False, True], ids=["bare-keys", "generator-prefix"])
def test_generator_round_trips_through_safetensors(tmp_path, prefixed):
    g = small_generator()
    state = model_state(g)
    path = tmp_path / "g.safetensors"
    save_file(state_to_tensors("generator", state) if prefixed else state, str(path))
    loaded = load_generator_file(path, "dcgan", 8, 4, 1, 8)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(z), g(z))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def assert_one_line(excinfo, *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_bad_generator_files_give_one_clear_line(tmp_path):
    with pytest.raises(WorkbenchError) as excinfo:
        load_generator_file(tmp_path / "nowhere.safetensors", "dcgan", 8, 4, 1, 8)
    assert_one_line(excinfo, "nowhere.safetensors", "does not exist")

    pickle_file = tmp_path / "ffhq.pkl"
    pickle_file.write_bytes(b"not read")
    with pytest.raises(WorkbenchError) as excinfo:
        load_generator_file(pickle_file, "dcgan", 8, 4, 1, 8)
    assert_one_line(excinfo, "ffhq.pkl", "pickles are never loaded")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(WorkbenchError) as excinfo:
        load_generator_file(garbage, "dcgan", 8, 4, 1, 8)
    assert_one_line(excinfo, "garbage.safetensors", "cannot be read as safetensors")

    path = tmp_path / "g.safetensors"
    save_file(model_state(small_generator(z_dim=8)), str(path))
    with pytest.raises(WorkbenchError) as excinfo:
        load_generator_file(path, "dcgan", 16, 4, 1, 8)  # the file's z_dim is 8
    assert_one_line(excinfo, "g.safetensors", "project.0.weight", "z_dim = 16", "[64, 8]", "[64, 16]")

    critic = tmp_path / "critic.safetensors"
    save_file(model_state(Critic(1, 8, 4)), str(critic))
    with pytest.raises(WorkbenchError) as excinfo:
        load_generator_file(critic, "dcgan", 8, 4, 1, 8)
    assert_one_line(excinfo, "critic.safetensors", "does not hold a 'dcgan' generator", "is missing")

    nan = small_generator()
    with torch.no_grad():
        nan.to_image.bias.fill_(float("nan"))
    nan_file = tmp_path / "nan.safetensors"
    save_file(model_state(nan), str(nan_file))
    with pytest.raises(WorkbenchError) as excinfo:
        load_generator_file(nan_file, "dcgan", 8, 4, 1, 8)
    assert_one_line(excinfo, "nan.safetensors", "to_image.bias", "NaN")


def test_params_need_the_file_and_consistent_counts():
    with pytest.raises(ValueError, match="generator_file"):
        PPAParams(generator="file")
    with pytest.raises(ValueError, match="samples_per_target"):
        PPAParams(num_candidates=4, samples_per_target=5)
    with pytest.raises(ValueError, match="search_space"):
        PPAParams(search_space=10, num_candidates=20)
    with pytest.raises(ValueError, match="train_crop_scale"):
        PPAParams(train_crop_scale=(1.0, 0.9))
    with pytest.raises(ValueError, match="select_crop_scale"):
        PPAParams(select_crop_scale=(0.0, 0.9))
    with pytest.raises(ValueError, match="select_crop_ratio"):
        PPAParams(select_crop_ratio=(1.2, 0.8))


def test_a_recipe_naming_no_generator_file_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from workbench.cli import main

    recipe = tmp_path / "ppa.toml"
    recipe.write_text(
        TINY_RECIPE
        + '\n[evaluation.backbone]\nuse = "mcnn"\n[attacks.ppa]\nuse = "ppa"\ngenerator = "file"\n'
    )
    monkeypatch.setattr(sys, "argv", ["workbench", "recipes", "validate", str(recipe)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert str(recipe) in lines[0] and "attacks.ppa" in lines[0] and "generator_file" in lines[0]


def test_a_missing_generator_file_stops_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from workbench.cli import main

    missing = tmp_path / "stylegan2_ffhq.safetensors"
    recipe = tmp_path / "ppa.toml"
    recipe.write_text(
        TINY_RECIPE.replace("epochs = 5", "epochs = 1")
        + '\n[evaluation.backbone]\nuse = "mcnn"\nwidth = 4\n[evaluation.train]\nepochs = 1\n'
        + f'[attacks.ppa]\nuse = "ppa"\ngenerator = "file"\ngenerator_file = "{missing}"\n'
    )
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "workbench",
            "run",
            str(recipe),
            "--run-dir",
            str(tmp_path / "run"),
            "--workers",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err  # progress lines, then the error
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert str(missing) in errors[0] and "does not exist" in errors[0]


# ---------------------------------------------------------------- the attack


def tiny_context(tmp_path, evaluation: nn.Module | None = None) -> AttackContext:
    import workbench

    registry = workbench.load_registry()
    gen = torch.Generator().manual_seed(0)
    public = TensorDataset(torch.rand(40, 1, 8, 8, generator=gen), torch.zeros(40))
    private = TensorDataset(torch.rand(4, 1, 8, 8, generator=gen), torch.zeros(4))
    data = DataSplits(train=private, test=private, public=public, num_classes=3, in_channels=1, image_size=8)
    torch.manual_seed(1)
    target = registry.create("backbone", "mcnn", width=4).build(3, 1, 8).eval().requires_grad_(False)
    return AttackContext(
        target=target,
        data=data,
        evaluation_model=evaluation,
        device=torch.device("cpu"),
        seed=0,
        cache=StageCache(tmp_path / "cache"),
    )


def test_the_attack_runs_on_a_generator_file_and_reports_both_sets(registry, tmp_path):
    path = tmp_path / "g.safetensors"
    save_file(model_state(small_generator()), str(path))
    torch.manual_seed(2)
    evaluation = registry.create("backbone", "mcnn", width=4).build(3, 1, 8).eval()
    ctx = tiny_context(tmp_path, evaluation)
    attack = registry.create(
        "attack",
        "ppa",
        generator="file",
        generator_file=str(path),
        z_dim=8,
        gan_width=4,
        search_space=20,
        num_candidates=4,
        samples_per_target=2,
        iterations=3,
        select_iterations=3,
    )
    before = {k: v.clone() for k, v in ctx.target.state_dict().items()}
    result = attack.run(ctx)
    assert result.images.shape == (3 * 2, 1, 8, 8)
    assert result.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
    assert {"top1_unselected", "top5_unselected", "target_confidence"} <= set(result.figures)
    assert (
        0 <= result.figures["top1_unselected"] <= 1 and result.figures["top5_unselected"] == 1.0
    )  # 3 classes
    assert all(torch.equal(v, ctx.target.state_dict()[k]) for k, v in before.items())
    again = attack.run(ctx)
    assert torch.equal(again.images, result.images)
    # Without an evaluation model the attack still runs; the unselected accuracy is left out.
    bare = attack.run(tiny_context(tmp_path))
    assert "top1_unselected" not in bare.figures and torch.equal(bare.images, result.images)


def test_the_gmi_prior_is_shared_with_the_gmi_attack(tmp_path):
    ctx = tiny_context(tmp_path)
    gan = {"z_dim": 8, "gan_width": 4, "gan_steps": 2, "gan_batch_size": 8, "critic_iters": 1}
    GMI(GMIParams(**gan)).prepare(ctx)
    generator, hit = PPA(PPAParams(**gan)).generator_for(ctx)
    assert hit and isinstance(generator, Generator) and not generator.training


def test_the_report_shows_both_sets_with_their_direction():
    from workbench.reporting.report import markdown_table

    results = {
        "variants": [
            {
                "name": "none",
                "utility": {"test_accuracy": 0.99},
                "attacks": {"ppa": {"top1": 0.625, "top1_unselected": 0.4875, "top5_unselected": 1.0}},
            }
        ]
    }
    table = markdown_table(results)
    assert "ppa top-1 ↓" in table and "ppa top-1 unselected ↓" in table and "ppa top-5 unselected ↓" in table
    assert "0.4875" in table


def test_params_document_every_field_with_a_reference(registry):
    schema = registry.get("attack", "ppa").params_schema()
    assert not [k for k, v in schema["properties"].items() if not v.get("description")]
    fields = registry.get("attack", "ppa").params.model_fields
    for field in (
        "search_space",
        "num_candidates",
        "iterations",
        "lr",
        "betas",
        "train_crop_scale",
        "select_iterations",
        "select_crop_scale",
        "select_crop_ratio",
        "samples_per_target",
        "hflip",
    ):
        assert "reference" in fields[field].description.lower(), field


# ---------------------------------------------------------------- end to end (slow)

DIGITS_RECIPE = digits_attack_recipe("PPA on digits", """
[attacks.ppa]
use = "ppa"
""")


@pytest.mark.slow
def test_ppa_recovers_the_private_digits(run_tiny_recipe, shared_trained_stages):
    # Measured with this recipe and the reference networks (issue 26): top-1 0.675 selected, 0.54
    # unselected (seed 0); with the earlier prior 0.60 / 0.47, seeds 1, 2: 0.70 and 0.70 (docs/attacks/ppa.md).
    _, results = run_tiny_recipe(DIGITS_RECIPE, workers=1)
    figures = results["variants"][0]["attacks"]["ppa"]
    assert figures["top1"] >= 0.4, figures  # chance is 0.2
    assert 0.0 <= figures["top1_unselected"] <= 1.0
