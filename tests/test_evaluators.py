"""Several evaluators and the evaluator-free evidence (issue 27): each figure against an
independent computation, and a tiny run that reports them all."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from workbench.components.protocols import AttackResult, DataSplits, EvalContext
from workbench.errors import RecipeError
from workbench.reporting.grids import GROUP_GAP
from workbench.running.evaluators import GRID_COLUMNS, nearest_grid, nearest_indices
from workbench.testing import TINY_RECIPE
from workbench_attacks.evaluators_metrics import (
    PRDC,
    AgreedAccuracy,
    NearestNeighbour,
    PRDCParams,
    false_positive_share,
    psnr_ssim,
)

# ---------------------------------------------------------------- hand-made models and data


class FixedLogits(nn.Module):
    """An evaluator whose logits are looked up by image (the image's first pixel is its row index);
    its penultimate feature is the image's flattened pixels times `scale` (a feature space whose
    nearest neighbours are pixel space's)."""

    def __init__(self, logits: Tensor, scale: float = 1.0):
        super().__init__()
        self.table = logits
        self.scale = scale

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        rows = x[:, 0, 0, 0].round().long()
        return self.table[rows], [x.flatten(1) * self.scale]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_hidden(x)[0]


def _ctx(images, targets, evaluators, data, restarts=None, figures=None) -> EvalContext:
    attack = AttackResult(images=images, targets=targets, restarts=restarts, figures=figures or {})
    return EvalContext(model=nn.Identity(), data=data, device=torch.device("cpu"),
                       evaluation_model=evaluators.get("E"), evaluators=evaluators, attack=attack)


def _image(value: float, size: int = 4) -> Tensor:
    return torch.full((1, size, size), value)


# ---------------------------------------------------------------- agreed top-1


def test_agreed_top1_counts_only_what_every_evaluator_calls_the_target():
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    # Evaluator A is right on images 0-3, B on 0, 2, 4; both only on 0 and 2.
    a = torch.tensor([0, 0, 1, 1, 0, 0])
    b = torch.tensor([0, 1, 1, 0, 2, 0])
    logits = {name: nn.functional.one_hot(pred, 3).float() * 5 for name, pred in (("E", a), ("b", b))}
    images = torch.stack([_image(float(i)) for i in range(6)])
    evaluators = {name: FixedLogits(table) for name, table in logits.items()}
    figures = AgreedAccuracy().evaluate(_ctx(images, targets, evaluators, None))
    assert figures["top1@E"] == pytest.approx(4 / 6)
    assert figures["top1@b"] == pytest.approx(3 / 6)
    assert figures["agreed_top1"] == pytest.approx(2 / 6)
    assert figures["top5@E"] == 1.0  # three classes: the target is always among the top 5


def test_agreed_top1_is_never_above_any_evaluator_top1_per_restart():
    generator = torch.Generator().manual_seed(0)
    n, classes = 120, 5
    targets = torch.randint(0, classes, (n,), generator=generator)
    restarts = torch.arange(n) % 4
    evaluators = {name: FixedLogits(torch.randn(n, classes, generator=generator) + 2 * nn.functional.one_hot(
        targets, classes)) for name in ("E", "b", "c")}
    images = torch.stack([_image(float(i)) for i in range(n)])
    figures = AgreedAccuracy().evaluate(_ctx(images, targets, evaluators, None, restarts=restarts))
    assert 0 < figures["agreed_top1"] <= min(figures[f"top1@{name}"] for name in evaluators)
    # Independent: per restart, the share where all three argmaxes equal the target, then the mean.
    agree = torch.stack([e.table.argmax(1) == targets for e in evaluators.values()]).all(0).double()
    per_restart = [float(agree[restarts == r].mean()) for r in range(4)]
    assert figures["agreed_top1"] == pytest.approx(sum(per_restart) / 4)
    assert figures["agreed_top1_std"] == pytest.approx(float(np.std(per_restart, ddof=1)))


# ---------------------------------------------------------------- nearest neighbours


def test_nearest_indices_match_a_brute_force_search_across_chunks():
    generator = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(17, 3, 5, 5, generator=generator), torch.randn(300, 3, 5, 5, generator=generator)
    expected = [int(np.argmin([np.sum((q.numpy().astype(np.float64) - b.numpy()) ** 2) for b in bank]))
                for q in queries]
    assert nearest_indices(queries, bank, chunk=7).tolist() == expected


def _hand_made_data() -> tuple[DataSplits, Tensor, Tensor]:
    """Private class 0 = images of value 0.1, class 1 = value 0.5; public = value 0.9. Reconstructions:
    near 0.1 (target 0: right), near 0.5 (target 0: wrong class), near 0.9 (target 1: looks public),
    near 0.5 (target 1: right)."""
    private = torch.stack([_image(0.1), _image(0.12), _image(0.5), _image(0.52)])
    private_y = torch.tensor([0, 0, 1, 1])
    public = torch.stack([_image(0.9), _image(0.95)])
    data = DataSplits(train=TensorDataset(private, private_y), test=TensorDataset(private, private_y),
                      public=TensorDataset(public, torch.tensor([5, 6])), num_classes=2, in_channels=1, image_size=4,
                      class_names=["zero", "one"])
    recon = torch.stack([_image(0.11), _image(0.49), _image(0.85), _image(0.53)])
    targets = torch.tensor([0, 0, 1, 1])
    return data, recon, targets


def test_nearest_neighbour_accuracy_looks_public_and_false_positives_on_a_hand_made_set():
    data, recon, targets = _hand_made_data()

    class Judge(nn.Module):  # calls everything below 0.7 class 0 (right on image 0 only), above class 1
        def forward_hidden(self, x):
            mean = x.flatten(1).mean(1)
            logits = torch.stack([(mean < 0.7).float(), (mean >= 0.7).float()], 1)
            return logits, [x.flatten(1)]

    figures = NearestNeighbour().evaluate(_ctx(recon, targets, {"E": Judge()}, data))
    assert figures["nn_top1@pixel"] == pytest.approx(2 / 4)  # images 0 and 3
    assert figures["looks_public@pixel"] == pytest.approx(1 / 4)  # image 2
    assert figures["nn_top1@E"] == figures["nn_top1@pixel"]  # its feature is the pixels
    # Judge's hits: image 0 (target 0, nearest class 0: a true positive), image 1 (target 0, nearest
    # class 1: a false positive) and image 2 (target 1, nearest public: a false positive).
    assert figures["false_positive@E"] == pytest.approx(2 / 3)
    # PSNR against the nearest private image of the target class: 0.1/0.12, 0.12, 0.52, 0.52.
    mse = [(0.11 - 0.1) ** 2, (0.49 - 0.12) ** 2, (0.85 - 0.52) ** 2, (0.53 - 0.52) ** 2]
    assert figures["psnr"] == pytest.approx(np.mean([10 * math.log10(1 / m) for m in mse]), rel=1e-5)


def test_false_positive_share_is_undefined_without_hits():
    assert false_positive_share(torch.tensor([False, False]), torch.tensor([True, False])) is None
    assert false_positive_share(torch.tensor([True, True]), torch.tensor([True, False])) == 0.5


# ---------------------------------------------------------------- PSNR / SSIM closed forms


def test_psnr_of_a_constant_offset_and_ssim_of_identical_images():
    generator = torch.Generator().manual_seed(2)
    real = torch.rand(3, 1, 16, 16, generator=generator, dtype=torch.float64) * 0.5
    # A constant offset d has MSE d², so PSNR = 10 log10(1 / d²) = -20 log10(d).
    psnr, ssim = psnr_ssim(real + 0.1, real)
    assert psnr == pytest.approx(-20 * math.log10(0.1), rel=1e-9)
    assert psnr_ssim(real, real) == (100.0, pytest.approx(1.0))
    # A constant offset c on images of constant value: SSIM's luminance term alone,
    # (2 μx μy + C1) / (μx² + μy² + C1) with C1 = (0.01 · 1)²; contrast and structure are 1.
    flat = torch.full((1, 1, 12, 12), 0.3, dtype=torch.float64)
    c1 = 0.01**2
    assert psnr_ssim(flat + 0.2, flat)[1] == pytest.approx((2 * 0.3 * 0.5 + c1) / (0.3**2 + 0.5**2 + c1), rel=1e-9)
    assert ssim < 1.0


# ---------------------------------------------------------------- PRDC wiring


def test_prdc_uses_the_package_on_the_attacked_classes_private_features_with_k():
    from prdc import compute_prdc

    generator = torch.Generator().manual_seed(3)
    private = torch.rand(40, 1, 4, 4, generator=generator)
    private_y = torch.arange(40) % 4  # classes 0-3; the attack targets 0 and 2 only
    data = DataSplits(train=TensorDataset(private, private_y), test=TensorDataset(private, private_y), public=None,
                      num_classes=4, in_channels=1, image_size=4)
    recon = torch.rand(12, 1, 4, 4, generator=generator)
    targets = torch.tensor([0, 2] * 6)
    scale = 3.0
    table = torch.zeros(2, 4)  # logits unused (pixels in [0, 1] round to row 0 or 1); the feature is 3 × the pixels
    evaluators = {"E": FixedLogits(table, 1.0), "wide": FixedLogits(table, scale)}
    got = PRDC(PRDCParams(nearest_k=3, evaluator="wide")).evaluate(_ctx(recon, targets, evaluators, data))
    real = (private[(private_y == 0) | (private_y == 2)].flatten(1) * scale).double().numpy()
    expected = compute_prdc(real_features=real, fake_features=(recon.flatten(1) * scale).double().numpy(), nearest_k=3)
    assert set(got) == {"precision@wide", "recall@wide", "density@wide", "coverage@wide"}
    for name in ("precision", "recall", "density", "coverage"):
        assert got[f"{name}@wide"] == pytest.approx(float(expected[name]))
    # Independent of the package: precision by its definition (a fake inside some real k-NN ball).
    fake = (recon.flatten(1) * scale).double().numpy()
    radii = np.sort(np.linalg.norm(real[:, None] - real[None], axis=2), axis=1)[:, 3]
    inside = np.linalg.norm(real[:, None] - fake[None], axis=2) < radii[:, None]
    assert got["precision@wide"] == pytest.approx(inside.any(axis=0).mean())
    assert got["density@wide"] == pytest.approx(inside.sum(axis=0).mean() / 3)


def test_prdc_names_an_unknown_evaluator():
    data, recon, targets = _hand_made_data()
    from workbench.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="evaluator 'other' is not one of this run's"):
        PRDC(PRDCParams(nearest_k=1, evaluator="other")).evaluate(_ctx(recon, targets, {"E": FixedLogits(
            torch.zeros(2, 2))}, data))


# ---------------------------------------------------------------- the grid


def test_nearest_grid_puts_each_reconstruction_beside_its_nearest_private_and_public_image():
    data, recon, targets = _hand_made_data()
    grid = nearest_grid(AttackResult(images=recon, targets=targets), data, per_class=2)
    assert GRID_COLUMNS == ("recon", "private", "public")
    pixels = np.asarray(grid.convert("L"), dtype=np.float64)
    pad, cell = 2, 64  # tiles: 4 px images enlarged 64 // 4 = 16 times
    label_width = grid.width - (pad + 6 * (cell + pad) + GROUP_GAP)  # two groups of three columns
    header = grid.height - (pad + 2 * (cell + pad))  # group titles and column labels

    def tile(row: int, col: int) -> float:
        x0 = label_width + pad + col * (cell + pad) + GROUP_GAP * (col // 3)
        y0 = header + pad + row * (cell + pad)
        return pixels[y0 + 8, x0 + 8] / 255

    # Row "zero": reconstruction 0.11 -> private 0.1, public 0.9; reconstruction 0.49 -> private 0.12.
    assert [round(tile(0, c), 1) for c in range(6)] == [0.1, 0.1, 0.9, 0.5, 0.1, 0.9]
    # Row "one": 0.85 -> private 0.52 (nearest of class 1), public 0.9; 0.53 -> 0.52, 0.9.
    assert [round(tile(1, c), 1) for c in range(6)] == [0.9, 0.5, 0.9, 0.5, 0.5, 0.9]
    assert isinstance(grid, Image.Image) and header > 0 and label_width > 0


# ---------------------------------------------------------------- recipe and run


def test_an_evaluator_may_not_be_called_e_or_pixel(tmp_path):
    from workbench.components.registry import load_registry
    from workbench.recipe.load import load_recipe

    for name in ("E", "pixel"):
        path = tmp_path / f"{name}.toml"
        path.write_text(TINY_RECIPE + f"\n[evaluation.backbone]\nuse = 'scnn'\n\n[evaluators.{name}.backbone]\n"
                        "use = 'mcnn'\n")
        with pytest.raises(RecipeError, match="E` and `pixel` name E and pixel space"):
            load_recipe(path, registry=load_registry())


EVALUATORS_RECIPE = TINY_RECIPE + """
[[metrics]]
use = "attack-accuracy"

[[metrics]]
use = "agreed-accuracy"

[[metrics]]
use = "nearest-neighbour"

[[metrics]]
use = "prdc"
evaluator = "wide"

[evaluation.backbone]
use = "scnn"
width = 8

[evaluation.train]
epochs = 2

[evaluators.wide.backbone]
use = "mcnn"
width = 8

[evaluators.wide.train]
epochs = 2
optimizer = { name = "sgd", lr = 0.05 }

[attacks.gmi]
use = "gmi"
gan_steps = 2
critic_iters = 1
iterations = 3
restarts = 2
samples_per_class = 4
"""


def test_a_run_reports_every_evaluator_the_agreement_and_the_nearest_image_grid(run_tiny_recipe, isolated_cache):
    run_dir, results = run_tiny_recipe(EVALUATORS_RECIPE, workers=1)
    figures = results["variants"][0]["attacks"]["gmi"]
    assert figures["top1@E"] == pytest.approx(figures["top1"])
    assert figures["agreed_top1"] <= min(figures["top1@E"], figures["top1@wide"])
    for key in ("nn_top1@pixel", "looks_public@pixel", "nn_top1@E", "looks_public@wide", "psnr", "ssim",
                "precision@wide", "coverage@wide"):
        assert key in figures, key
    assert set(results["evaluation_model"]["evaluators"]) == {"wide"}
    assert 0 <= results["evaluation_model"]["evaluators"]["wide"]["test_accuracy"] <= 1
    assert (run_dir / "none" / "reconstructions" / "gmi.nearest.png").is_file()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e.get("section") == "evaluator/wide" for e in events if e["type"] == "result")
    # A second run (another variant name, same data and seed) trains no evaluator again.
    _, again = run_tiny_recipe(EVALUATORS_RECIPE.replace('name = "none"', 'name = "again"'), workers=1)
    assert again["evaluation_model"]["cached"] and again["evaluation_model"]["evaluators"]["wide"]["cached"]


def test_a_sweep_pins_every_evaluator_to_the_recipe_seed_so_its_runs_share_them(tmp_path):
    from workbench.components.registry import load_registry
    from workbench.recipe.load import load_recipe
    from workbench.sweeps.spec import shared_stage_overrides

    registry = load_registry()
    path = tmp_path / "recipe.toml"
    path.write_text(EVALUATORS_RECIPE.replace("seed = 0", "seed = 3") + "\n[evaluators.own.backbone]\nuse = 'mcnn'\n"
                    "[evaluators.own]\nseed = 9\n")
    recipe = load_recipe(path, registry=registry)
    import tomllib

    overrides = shared_stage_overrides(recipe, tomllib.loads(path.read_text()), registry)
    assert "evaluation.seed=3" in overrides and "evaluators.wide.seed=3" in overrides
    assert not any(o.startswith("evaluators.own.") for o in overrides)  # its own seed stays


def test_a_rerun_loads_the_judged_figures_instead_of_computing_the_metrics_again(run_tiny_recipe, isolated_cache,
                                                                                 monkeypatch):
    from workbench_attacks import evaluators_metrics, privacy

    _, first = run_tiny_recipe(EVALUATORS_RECIPE, workers=1)
    calls = []

    def refuse(self, ctx):
        calls.append(type(self).__name__)
        raise AssertionError("judged again")

    for metric in (privacy.AttackAccuracy, evaluators_metrics.AgreedAccuracy, evaluators_metrics.NearestNeighbour,
                   evaluators_metrics.PRDC):
        monkeypatch.setattr(metric, "evaluate", refuse)
    run_dir, again = run_tiny_recipe(EVALUATORS_RECIPE, workers=1)
    assert not calls
    # The same figures, in the same order, as the run that computed them; the picture is drawn again.
    assert json.dumps(again["variants"]) == json.dumps(first["variants"])
    assert (run_dir / "none" / "reconstructions" / "gmi.nearest.png").is_file()
    assert list((isolated_cache / "judgement").glob("*.safetensors"))
    # Another metric setting is another judgement: computed, not loaded.
    with pytest.raises(Exception, match="judged again"):
        run_tiny_recipe(EVALUATORS_RECIPE.replace('evaluator = "wide"', 'evaluator = "wide"\nnearest_k = 3'), workers=1)
    assert calls


@pytest.mark.slow
def test_the_evaluators_train_as_separate_worker_jobs_to_the_same_models(run_tiny_recipe, tmp_path):
    two_variants = EVALUATORS_RECIPE + '\n[[variants]]\nname = "mid"\ndefense = { use = "mid", beta = 0.01 }\n'
    _, inline = run_tiny_recipe(two_variants, workers=1, cache_dir=tmp_path / "cache-1")
    run_dir, parallel = run_tiny_recipe(two_variants, workers=2, cache_dir=tmp_path / "cache-2")
    assert json.dumps(parallel["evaluation_model"]) == json.dumps(inline["evaluation_model"])
    assert parallel["evaluation_model"]["cached"] is False and parallel["evaluation_model"]["evaluators"]["wide"]["cached"] is False
    assert json.dumps(parallel["variants"]) == json.dumps(inline["variants"])
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    trained = [e["stage"] for e in events if e["type"] == "stage_finished" and e["variant"] is None]
    assert trained.count("evaluator:E") == 1 and trained.count("evaluator:wide") == 1 and trained.count("prior:gmi") == 1
    assert "training 3 shared stages in 2 worker processes" in [e["message"] for e in events if e["type"] == "log"]
