"""The embedded data: `digits` and the procedural / near-OOD sets, loaded through the registry.

Reference values come from scikit-learn's own `load_digits()` and from closed forms
(uniform variance 1/12, bilinear interpolation written out in float64 numpy).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

import workbench
from workbench.components.protocols import DataSplits
from workbench.errors import WorkbenchError


@pytest.fixture(scope="module")
def registry():
    return workbench.load_registry()


@pytest.fixture(scope="module")
def sklearn_digits():
    bunch = load_digits()
    return bunch.data.astype(np.float64) / 16.0, bunch.target.astype(np.int64)


def tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def sklearn_index(images: torch.Tensor, sklearn_data: np.ndarray) -> np.ndarray:
    """Which load_digits() row each 8x8 image is (the 1797 images are all distinct)."""
    lookup = {row.tobytes(): i for i, row in enumerate(np.round(sklearn_data * 16).astype(np.int8))}
    keys = np.round(images.reshape(len(images), -1).double().numpy() * 16).astype(np.int8)
    return np.array([lookup[row.tobytes()] for row in keys])


def bilinear_upsample_reference(image: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize (align_corners=False), written out in float64."""
    height, width = image.shape
    out = np.empty((size, size))
    for i in range(size):
        y = max((i + 0.5) * height / size - 0.5, 0.0)
        y0 = min(int(np.floor(y)), height - 1)
        y1, wy = min(y0 + 1, height - 1), y - y0
        for j in range(size):
            x = max((j + 0.5) * width / size - 0.5, 0.0)
            x0 = min(int(np.floor(x)), width - 1)
            x1, wx = min(x0 + 1, width - 1), x - x0
            top = image[y0, x0] * (1 - wx) + image[y0, x1] * wx
            bottom = image[y1, x0] * (1 - wx) + image[y1, x1] * wx
            out[i, j] = top * (1 - wy) + bottom * wy
    return out


# ---------------------------------------------------------------- digits


def test_digits_split_matches_bido_protocol(registry, sklearn_digits):
    data, target = sklearn_digits
    splits: DataSplits = registry.create("dataset", "digits", image_size=8).load(seed=0)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (5, 1, 8)
    assert splits.class_names == ["0", "1", "2", "3", "4"]
    assert splits.evaluation_num_classes == 10

    train_x, train_y = tensors(splits.train)
    test_x, test_y = tensors(splits.test)
    public_x, public_y = tensors(splits.public)
    eval_train_x, eval_train_y = tensors(splits.evaluation_train)
    eval_test_x, eval_test_y = tensors(splits.evaluation_test)
    assert train_x.shape[1:] == (1, 8, 8) and train_x.dtype == torch.float32
    assert set(train_y.tolist()) == set(test_y.tolist()) == {0, 1, 2, 3, 4}
    assert set(public_y.tolist()) == {5, 6, 7, 8, 9}
    assert set(eval_train_y.tolist()) == set(eval_test_y.tolist()) == set(range(10))

    # Each image is the sklearn row it claims to be, with sklearn's label.
    for images, labels in (
        (train_x, train_y),
        (test_x, test_y),
        (public_x, public_y),
        (eval_train_x, eval_train_y),
    ):
        rows = sklearn_index(images, data)
        np.testing.assert_array_equal(target[rows], labels.numpy())
        np.testing.assert_allclose(images.reshape(len(images), -1).numpy(), data[rows], atol=1e-7)

    # The evaluation split partitions all 1797 digits; the private splits are its 0-4 part.
    eval_train, eval_test = sklearn_index(eval_train_x, data), sklearn_index(eval_test_x, data)
    assert not set(eval_train) & set(eval_test)
    assert sorted(np.concatenate([eval_train, eval_test])) == list(range(len(data)))
    assert set(sklearn_index(train_x, data)) == {i for i in eval_train if target[i] < 5}
    assert set(sklearn_index(test_x, data)) == {i for i in eval_test if target[i] < 5}
    assert sorted(sklearn_index(public_x, data)) == list(np.flatnonzero(target >= 5))
    # Stratified: every digit puts round(n * 0.2) images on the test side.
    for digit in range(10):
        n = int((target == digit).sum())
        assert int((eval_test_y == digit).sum()) == round(n * 0.2)


def test_digits_upsampling_is_bilinear(registry, sklearn_digits):
    data, _ = sklearn_digits
    splits = registry.create("dataset", "digits", image_size=16).load(seed=3)
    small = registry.create("dataset", "digits", image_size=8).load(seed=3)
    big_x, _ = tensors(splits.public)
    small_x, _ = tensors(small.public)
    rows = sklearn_index(small_x[:5], data)
    for k, row in enumerate(rows):
        expected = bilinear_upsample_reference(data[row].reshape(8, 8), 16)
        np.testing.assert_allclose(big_x[k, 0].numpy(), expected, atol=1e-5)
    assert float(big_x.min()) >= 0.0 and float(big_x.max()) <= 1.0


def test_digits_seeded_and_different_seeds_differ(registry):
    component = registry.create("dataset", "digits")
    first, again, other = component.load(0), component.load(0), component.load(1)
    assert torch.equal(first.train.tensors[0], again.train.tensors[0])
    assert torch.equal(first.test.tensors[1], again.test.tensors[1])
    assert first.train.tensors[0].shape == other.train.tensors[0].shape  # same per-class counts
    assert not torch.equal(first.train.tensors[0], other.train.tensors[0])


def test_digits_describe_and_missing(registry):
    component = registry.create("dataset", "digits")
    description = component.describe()
    assert description.embedded and description.kind == "dataset" and description.name == "digits"
    assert "load_digits" in description.source
    assert component.missing() == []


def test_digits_split_that_empties_a_class_names_it(registry):
    with pytest.raises(WorkbenchError, match=r"class '0' has \d+ image\(s\).*train split empty"):
        registry.create("dataset", "digits", test_fraction=0.999).load(0)


def test_digits_rejects_bad_params(registry):
    with pytest.raises(WorkbenchError, match="image_size"):
        registry.create("dataset", "digits", image_size=4)
    with pytest.raises(WorkbenchError, match="unknown key 'root'"):
        registry.create("dataset", "digits", root="/tmp")


# ---------------------------------------------------------------- procedural OOD


PROCEDURAL = ["letters", "noise", "shapes", "digits-public"]


@pytest.mark.parametrize("name", PROCEDURAL)
@pytest.mark.parametrize(("image_size", "in_channels"), [(16, 1), (32, 3)])
def test_ood_shapes_ranges_and_labels(registry, name, image_size, in_channels):
    params = {} if name == "digits-public" else {"size": 40}
    dataset = registry.create("ood_dataset", name, **params).load(
        image_size=image_size, in_channels=in_channels, seed=0
    )
    images, labels = tensors(dataset)
    assert images.shape[1:] == (in_channels, image_size, image_size)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert set(labels.tolist()) == {-1}
    if name != "digits-public":
        assert len(dataset) == 40
    assert images.std() > 0.05  # not blank
    component = registry.create("ood_dataset", name, **params)
    assert component.describe().embedded and component.missing() == []


@pytest.mark.parametrize("name", ["letters", "noise", "shapes"])
def test_ood_deterministic_by_seed(registry, name):
    component = registry.create("ood_dataset", name, size=30)
    first = component.load(16, 1, seed=7).tensors[0]
    assert torch.equal(first, component.load(16, 1, seed=7).tensors[0])
    assert not torch.equal(first, component.load(16, 1, seed=8).tensors[0])


def image_keys(images: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in images.reshape(len(images), -1).numpy()}


@pytest.mark.parametrize(
    ("auxiliary", "test"),
    [
        (("letters", {"role": "auxiliary"}), ("letters", {})),
        (("shapes", {"role": "auxiliary"}), ("shapes", {})),
        (("noise", {"role": "auxiliary"}), ("noise", {})),
        (("letters", {"role": "auxiliary", "glyphs": "XYZ"}), ("letters", {"glyphs": "XYZ"})),
        (("shapes", {"role": "auxiliary"}), ("letters", {})),
    ],
)
def test_auxiliary_and_test_sets_never_share_an_image(registry, auxiliary, test):
    aux = (
        registry.create("ood_dataset", auxiliary[0], size=200, **auxiliary[1]).load(16, 1, seed=0).tensors[0]
    )
    held_out = registry.create("ood_dataset", test[0], size=200, **test[1]).load(16, 1, seed=0).tensors[0]
    assert not image_keys(aux) & image_keys(held_out)


def test_letters_default_glyphs_split_by_role(registry):
    aux = registry.create("ood_dataset", "letters", role="auxiliary")
    held_out = registry.create("ood_dataset", "letters")
    assert set(aux.glyphs).isdisjoint(held_out.glyphs)
    assert len(aux.glyphs) == len(held_out.glyphs) == 12


@pytest.mark.parametrize(("glyphs", "message"), [("AB3", "digit '3'"), ("", "empty"), ("A B", "whitespace")])
def test_letters_rejects_bad_glyphs(registry, glyphs, message):
    with pytest.raises(WorkbenchError, match=message):
        registry.create("ood_dataset", "letters", glyphs=glyphs)


def test_noise_statistics_match_closed_forms(registry):
    uniform = (
        registry.create("ood_dataset", "noise", distribution="uniform", size=400).load(16, 1, 0).tensors[0]
    )
    assert abs(float(uniform.mean()) - 0.5) < 0.01
    assert abs(float(uniform.var()) - 1 / 12) < 0.003  # variance of U(0, 1)
    gaussian = registry.create("ood_dataset", "noise", std=0.1, size=400).load(16, 1, 0).tensors[0].double()
    assert abs(float(gaussian.mean()) - 0.5) < 0.01
    assert abs(float(gaussian.std()) - 0.1) < 0.005  # clipping at 5 sigma is negligible


def neighbour_correlation(images: torch.Tensor) -> float:
    left, right = images[..., :-1].flatten().double(), images[..., 1:].flatten().double()
    return float(torch.corrcoef(torch.stack([left, right]))[0, 1])


def test_noise_blur_makes_smooth_images(registry):
    white = registry.create("ood_dataset", "noise", size=100).load(16, 1, 0).tensors[0]
    smooth = registry.create("ood_dataset", "noise", size=100, blur=2.0).load(16, 1, 0).tensors[0]
    assert abs(neighbour_correlation(white)) < 0.05
    assert neighbour_correlation(smooth) > 0.8
    # Stretched back to the full range after blurring.
    assert torch.allclose(smooth.amin(dim=(1, 2, 3)), torch.zeros(100), atol=1e-6)
    assert torch.allclose(smooth.amax(dim=(1, 2, 3)), torch.ones(100), atol=1e-6)


def test_grayscale_sets_become_rgb_by_repetition(registry):
    rgb = registry.create("ood_dataset", "letters", size=10).load(16, 3, 0).tensors[0]
    gray = registry.create("ood_dataset", "letters", size=10).load(16, 1, 0).tensors[0]
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])
    assert torch.allclose(rgb[:, :1], gray, atol=1e-6)


def test_rgb_shapes_become_luma_for_grayscale(registry):
    # Shapes are drawn in colour for RGB data; for grayscale they are drawn in 'L' mode directly,
    # so check the tensor conversion on its own against ITU-R 601 weights.
    from workbench_data.common import convert_channels

    rgb = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    expected = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    torch.testing.assert_close(convert_channels(rgb, 1)[:, 0], expected)


def test_digits_public_is_the_public_digits(registry, sklearn_digits):
    data, target = sklearn_digits
    dataset = registry.create("ood_dataset", "digits-public").load(image_size=8, in_channels=1, seed=0)
    rows = sklearn_index(dataset.tensors[0], data)
    assert sorted(rows) == list(np.flatnonzero(target >= 5))
    subset = registry.create("ood_dataset", "digits-public", size=50).load(8, 1, seed=0)
    assert len(subset) == 50


def test_digits_public_refuses_overlap_with_private_digits(registry):
    splits = registry.create("dataset", "digits", private_classes=6).load(0)
    with pytest.raises(WorkbenchError, match="digit '5' is a private class"):
        registry.create("ood_dataset", "digits-public").check_disjoint(splits)
    registry.create("ood_dataset", "digits-public", private_classes=6).check_disjoint(splits)


def test_in_channels_must_be_one_or_three(registry):
    with pytest.raises(WorkbenchError, match="in_channels=2"):
        registry.create("ood_dataset", "noise", size=5).load(16, 2, 0)
