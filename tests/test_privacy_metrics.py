"""Privacy metrics against values worked out by hand or by an independent float64 formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.utils.data import TensorDataset

import workbench
from workbench.components.protocols import AttackResult, DataSplits, EvalContext
from workbench.errors import WorkbenchError
from workbench_attacks.privacy import (
    accuracy_over_restarts,
    blas_threads_as_torch,
    feature_statistics,
    frechet_distance,
    knn_distance,
    topk_hits,
)

# ---------------------------------------------------------------- pure functions


def test_topk_hits_on_hand_made_logits():
    logits = torch.tensor(
        [
            [5.0, 1.0, 0.0, 2.0, 3.0, 4.0],  # order: 0, 5, 4, 3, 1, 2
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # order: 5, 4, 3, 2, 1, 0
            [1.0, 9.0, 2.0, 3.0, 4.0, 0.5],  # order: 1, 4, 3, 2, 0, 5
        ]
    )
    targets = torch.tensor([0, 0, 2])
    assert topk_hits(logits, targets, 1).tolist() == [True, False, False]
    assert topk_hits(logits, targets, 5).tolist() == [True, False, True]
    # k larger than the number of classes is every class.
    assert topk_hits(logits[:, :3], torch.tensor([0, 0, 2]), 5).tolist() == [True, True, True]


def test_accuracy_over_restarts_is_mean_and_sample_std_of_per_restart_accuracy():
    hits = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
    restarts = torch.tensor([0, 0, 1, 1, 2, 2])
    mean, std = accuracy_over_restarts(hits, restarts)
    per_restart = [0.5, 1.0, 0.0]
    assert mean == pytest.approx(0.5)
    expected_std = math.sqrt(sum((a - 0.5) ** 2 for a in per_restart) / (len(per_restart) - 1))
    assert std == pytest.approx(expected_std)  # 0.5
    assert accuracy_over_restarts(hits, torch.zeros(6, dtype=torch.long)) == (pytest.approx(0.5), 0.0)
    assert accuracy_over_restarts(hits, None) == (pytest.approx(0.5), 0.0)


def test_knn_distance_on_two_dimensional_points():
    private = torch.tensor([[0.0, 0.0], [4.0, 0.0], [10.0, 10.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    recon = torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 0, 1])
    # (1,1) vs class 0 {(0,0),(4,0)}: min(2, 10) = 2; (3,0): min(9, 1) = 1;
    # (0,0) vs class 1 {(10,10),(0,3)}: min(200, 9) = 9. Mean = 12 / 3 = 4.
    assert knn_distance(recon, targets, private, labels) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="class 2"):
        knn_distance(recon, torch.tensor([0, 0, 2]), private, labels)


def test_frechet_distance_of_diagonal_gaussians_matches_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)
    # Singular covariances (a zero variance) keep the same closed form.
    var1[1] = var2[2] = 0.0
    expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_full_covariances_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_the_frechet_distance_uses_as_many_blas_threads_as_torch(monkeypatch):
    """numpy's BLAS left at one thread per core spins in two worker processes on two cores (a
    256-wide eigh: 1 s of CPU instead of 7 ms); inside the distance it gets torch's thread count."""
    seen = []
    eigh = np.linalg.eigh

    def recording_eigh(matrix):
        seen.extend(_blas_threads())
        return eigh(matrix)

    monkeypatch.setattr(np.linalg, "eigh", recording_eigh)
    before = _blas_threads()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mu, sigma = feature_statistics(np.random.default_rng(0).normal(size=(30, 8)))
        assert frechet_distance(mu, sigma, mu + 1.0, sigma) == pytest.approx(8.0, rel=1e-9)
        with blas_threads_as_torch():
            assert set(_blas_threads()) == {1}
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {1}
    assert _blas_threads() == before  # restored after the block


def test_frechet_distance_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 20))
    mu, sigma = feature_statistics(x)
    assert np.linalg.matrix_rank(sigma) == 5  # singular, still defined
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    shifted = frechet_distance(*feature_statistics(x + 2.0), mu, sigma)
    assert shifted == pytest.approx(20 * 4.0, rel=1e-9)  # same covariance, mean moved by 2 in 20 dims
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))


# ---------------------------------------------------------------- metric components


class PixelEvaluator(nn.Module):
    """E whose penultimate feature is the flattened image and whose logits are fixed per class.

    Class scores are the mean brightness of each of 4 image columns, so hand-made images
    steer its prediction exactly.
    """

    def forward_hidden(self, x):
        flat = x.flatten(1)
        logits = x.mean(dim=(1, 2))  # [n, W]: column means, W = 4 classes
        return logits, [flat]

    def forward(self, x):
        return self.forward_hidden(x)[0]


def column_image(column: int, level: float = 1.0) -> torch.Tensor:
    x = torch.zeros(1, 4, 4)
    x[0, :, column] = level
    return x


@pytest.fixture
def registry():
    return workbench.load_registry()


def eval_context(recon: AttackResult, private_x: torch.Tensor, private_y: torch.Tensor) -> EvalContext:
    data = DataSplits(
        train=TensorDataset(private_x, private_y),
        test=TensorDataset(private_x, private_y),
        public=None,
        num_classes=4,
        in_channels=1,
        image_size=4,
    )
    return EvalContext(
        model=nn.Identity(),
        data=data,
        device=torch.device("cpu"),
        batch_size=3,
        evaluation_model=PixelEvaluator(),
        attack=recon,
    )


def test_attack_accuracy_metric(registry):
    metric = registry.create("metric", "attack-accuracy")
    assert metric.section == "attacks"
    # Restart 0: both images hit their class; restart 1: one hit, one miss.
    images = torch.stack([column_image(0), column_image(1), column_image(2), column_image(0)])
    result = AttackResult(
        images=images, targets=torch.tensor([0, 1, 2, 3]), restarts=torch.tensor([0, 0, 1, 1])
    )
    figures = metric.evaluate(eval_context(result, images, torch.tensor([0, 1, 2, 3])))
    assert figures["top1"] == pytest.approx(0.75)
    assert figures["top1_std"] == pytest.approx(math.sqrt(((1 - 0.75) ** 2 + (0.5 - 0.75) ** 2) / 1))
    assert figures["top5"] == pytest.approx(1.0) and figures["top5_std"] == 0.0


def test_knn_and_fid_metrics_use_e_features_of_the_attacked_classes(registry):
    gen = torch.Generator().manual_seed(0)
    private_x = torch.rand(12, 1, 4, 4, generator=gen)
    private_y = torch.arange(12) % 4
    recon_x = torch.rand(6, 1, 4, 4, generator=gen)
    recon_t = torch.tensor([0, 0, 2, 2, 2, 0])
    result = AttackResult(images=recon_x, targets=recon_t, restarts=torch.zeros(6, dtype=torch.long))
    ctx = eval_context(result, private_x, private_y)

    # Independent float64 computation on the pixels (E's features here).
    r, p = recon_x.flatten(1).double().numpy(), private_x.flatten(1).double().numpy()
    nearest = [
        min(((r[i] - p[j]) ** 2).sum() for j in range(12) if private_y[j] == recon_t[i]) for i in range(6)
    ]
    assert registry.create("metric", "knn-dist").evaluate(ctx)["knn_dist"] == pytest.approx(
        np.mean(nearest), rel=1e-6
    )

    attacked = np.isin(private_y.numpy(), [0, 2])
    p_att = p[attacked]
    s1, s2 = np.cov(r, rowvar=False), np.cov(p_att, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    expected = (
        ((r.mean(0) - p_att.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    )
    fid = registry.create("metric", "fid").evaluate(ctx)["fid"]
    assert fid == pytest.approx(expected, rel=1e-4)

    # Reconstructions that are exactly the private images of the attacked classes: FID ~ 0.
    same = AttackResult(images=private_x[attacked], targets=private_y[attacked])
    assert registry.create("metric", "fid").evaluate(eval_context(same, private_x, private_y))["fid"] < 1e-6
    assert (
        registry.create("metric", "knn-dist").evaluate(eval_context(same, private_x, private_y))["knn_dist"]
        < 1e-10
    )


def reference_fid(r: np.ndarray, p: np.ndarray) -> float:
    s1, s2 = np.cov(r, rowvar=False), np.cov(p, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(
        ((r.mean(0) - p.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    )


def test_fid_conventions_cap_the_private_side_and_keep_successful_reconstructions(registry):
    gen = torch.Generator().manual_seed(1)
    private_y = torch.arange(24) % 2  # classes 0 and 1, twelve images each
    private_x = torch.rand(24, 1, 4, 4, generator=gen)
    # Reconstructions: PixelEvaluator predicts the brightest column, so these steer E exactly.
    recon_x = torch.rand(8, 1, 4, 4, generator=gen) * 0.5
    recon_t = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    hit_column = torch.tensor([0, 1, 0, 3, 0, 1, 2, 1])  # rows 3 and 6 miss
    for i, c in enumerate(hit_column.tolist()):
        recon_x[i, 0, :, c] += 1.0
    ctx = eval_context(AttackResult(images=recon_x, targets=recon_t), private_x, private_y)
    r, p = recon_x.flatten(1).double().numpy(), private_x.flatten(1).double().numpy()

    # BiDO: all reconstructions against the first 5 private images of each attacked class.
    first5 = np.concatenate([np.flatnonzero(private_y.numpy() == k)[:5] for k in (0, 1)])
    capped = registry.create("metric", "fid", private_per_class=5).evaluate(ctx)["fid"]
    assert capped == pytest.approx(reference_fid(r, p[np.sort(first5)]), rel=1e-4)
    assert registry.create("metric", "fid").evaluate(ctx)["fid"] == pytest.approx(
        reference_fid(r, p), rel=1e-4
    )

    # LOMMA / PLG-MI: only reconstructions E gets right.
    ok = (hit_column == recon_t).numpy()
    figures = registry.create("metric", "fid", successful_only=True).evaluate(ctx)
    assert figures["fid"] == pytest.approx(reference_fid(r[ok], p), rel=1e-4)
    assert figures["fid_successes"] == 6
    # A defense so strong that fewer than two succeed: no distance, the count only.
    none_hit = AttackResult(images=recon_x[[3, 6]], targets=recon_t[[3, 6]])
    assert registry.create("metric", "fid", successful_only=True).evaluate(
        eval_context(none_hit, private_x, private_y)
    ) == {"fid_successes": 0.0}
    with pytest.raises(WorkbenchError, match="convention"):
        registry.create("metric", "fid", convention="lomma")


def test_metrics_report_user_errors(registry):
    images = torch.stack([column_image(0), column_image(1)])
    result = AttackResult(images=images, targets=torch.tensor([0, 3]))
    ctx = eval_context(result, images, torch.tensor([0, 1]))
    with pytest.raises(WorkbenchError, match=r"no image of attacked classes \[3\]"):
        registry.create("metric", "knn-dist").evaluate(ctx)
    ctx.evaluation_model = None
    with pytest.raises(WorkbenchError, match="evaluation model"):
        registry.create("metric", "attack-accuracy").evaluate(ctx)
    one = AttackResult(images=images[:1], targets=torch.tensor([0]))
    with pytest.raises(WorkbenchError, match="at least 2 reconstructions"):
        registry.create("metric", "fid").evaluate(eval_context(one, images, torch.tensor([0, 0])))
    with pytest.raises(WorkbenchError, match="no-such-inception.pt"):
        registry.create("metric", "fid-inception", weights_file="/nowhere/no-such-inception.pt")
    with pytest.raises(WorkbenchError, match="weights_file"):
        registry.create("metric", "fid-inception")


def test_prdc_figures_compute_their_distances_in_one_job(monkeypatch):
    """The prdc package asks scikit-learn for n_jobs=8 (eight threads polling on two cores in the
    main process, a warning per call in a worker); prdc_figures runs it in one job, same figures."""
    import sklearn.metrics.pairwise
    from prdc import compute_prdc

    from workbench_attacks.evaluators_metrics import prdc_figures

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) + 0.5
    expected = {k: float(v) for k, v in compute_prdc(real, fake, 3).items()}

    def no_pool(*args, **kwargs):
        raise AssertionError("a joblib pool was started")

    monkeypatch.setattr(sklearn.metrics.pairwise, "Parallel", no_pool)
    assert prdc_figures(torch.tensor(real), torch.tensor(fake), 3) == expected


class CountingEvaluator(torch.nn.Module):
    """forward_hidden counts its images; logits are a fixed linear map of the pixels."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.images_seen = 0

    def forward_hidden(self, x):
        self.images_seen += len(x)
        features = x.flatten(1)
        return self.linear(features), [features]


def test_model_outputs_runs_a_model_once_per_images_and_weights():
    from workbench_attacks.privacy import model_outputs

    torch.manual_seed(0)
    model, images = CountingEvaluator(), torch.rand(10, 1, 2, 2)
    logits, features = model_outputs(model, images, torch.device("cpu"), 4)
    expected = images.flatten(1).double() @ model.linear.weight.double().T + model.linear.bias.double()
    torch.testing.assert_close(logits.double(), expected, rtol=1e-6, atol=1e-6)
    assert model.images_seen == 10
    again, _ = model_outputs(model, images.clone(), torch.device("cpu"), 4)  # same content, another tensor
    assert model.images_seen == 10 and torch.equal(again, logits)
    again[:] = 0  # a caller's change never reaches the next caller
    assert torch.equal(model_outputs(model, images, torch.device("cpu"), 4)[0], logits)
    model_outputs(model, images + 1e-3, torch.device("cpu"), 4)  # other images
    assert model.images_seen == 20
    with torch.no_grad():
        model.linear.bias += 1  # new weights: run again, new figures
    moved, _ = model_outputs(model, images, torch.device("cpu"), 4)
    assert model.images_seen == 30
    torch.testing.assert_close(moved, logits + 1)
    model_outputs(CountingEvaluator(), images, torch.device("cpu"), 4)  # another model
    assert model.images_seen == 30


def test_model_outputs_keeps_at_most_its_byte_budget(monkeypatch):
    from workbench_attacks import privacy

    model = CountingEvaluator()
    images = [torch.full((10, 1, 2, 2), float(i)) for i in range(3)]
    one_entry = 10 * 3 * 4 + 10 * 4 * 4  # logits [10, 3] and features [10, 4], float32
    monkeypatch.setattr(privacy, "_OUTPUTS_BYTES", 2 * one_entry)
    monkeypatch.setattr(privacy, "_OUTPUTS", privacy.OrderedDict())
    for x in images:
        privacy.model_outputs(model, x, torch.device("cpu"), 4)
    assert len(privacy._OUTPUTS) == 2 and model.images_seen == 30
    privacy.model_outputs(model, images[2], torch.device("cpu"), 4)  # kept: the newest two
    assert model.images_seen == 30
    privacy.model_outputs(model, images[0], torch.device("cpu"), 4)  # dropped first: run again
    assert model.images_seen == 40
