"""Real-data components on tiny files written here in each format (IDX, CIFAR pickles, .mat,
CelebA layout, image folders, .npy), loaded through the registry; and every bad-input error."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import workbench
from workbench.errors import WorkbenchError


@pytest.fixture(scope="module")
def registry():
    return workbench.load_registry()


def stack(dataset) -> tuple[torch.Tensor, list[int]]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([image for image, _ in items]), [label for _, label in items]


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: two zero bytes, type 0x08 (uint8), number of dims, big-endian dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_images(labels: list[int], offset: int) -> np.ndarray:
    """Each image is constant: value 8 * index + offset, so images are recognisable after loading."""
    return np.stack([np.full((28, 28), 8 * i + offset, dtype=np.uint8) for i in range(len(labels))])


TRAIN_LABELS = [d for d in range(10) for _ in range(3)]
TEST_LABELS = [d for d in range(10) for _ in range(2)]


def make_mnist(root: Path, folder: str = "MNIST", test_labels: list[int] = TEST_LABELS) -> Path:
    raw = root / folder / "raw"
    write_idx(raw / "train-images-idx3-ubyte", mnist_images(TRAIN_LABELS, 1))
    write_idx(raw / "train-labels-idx1-ubyte", np.array(TRAIN_LABELS))
    write_idx(raw / "t10k-images-idx3-ubyte", mnist_images(test_labels, 3))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array(test_labels))
    return root


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_formats_split_private_public(registry, tmp_path, name, folder):
    make_mnist(tmp_path, folder)
    component = registry.create("dataset", name, root=str(tmp_path), image_size=28)
    assert component.missing() == []
    splits = component.load(seed=0)
    train_x, train_y = stack(splits.train)
    test_x, test_y = stack(splits.test)
    public_x, public_y = stack(splits.public)
    assert train_x.shape == (15, 1, 28, 28)
    assert sorted(set(train_y)) == [0, 1, 2, 3, 4] and sorted(set(test_y)) == [0, 1, 2, 3, 4]
    assert sorted(set(public_y)) == [5, 6, 7, 8, 9] and len(public_y) == 15
    assert len(splits.evaluation_train) == 30 and len(splits.evaluation_test) == 20
    assert splits.evaluation_num_classes == 10 and splits.num_classes == 5
    # Image i of the training file is the constant 8*i+1, and keeps its label.
    expected_train = [(8 * i + 1) / 255 for i, label in enumerate(TRAIN_LABELS) if label < 5]
    assert torch.allclose(train_x.amax(dim=(1, 2, 3)), torch.tensor(expected_train))
    assert torch.allclose(train_x.amin(dim=(1, 2, 3)), torch.tensor(expected_train))
    assert train_y == [label for label in TRAIN_LABELS if label < 5]
    # Train and test images never coincide (their files use different constants).
    assert not set(train_x[:, 0, 0, 0].tolist()) & set(test_x[:, 0, 0, 0].tolist())
    if name == "fashion-mnist":
        assert splits.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    resized = registry.create("dataset", name, root=str(tmp_path)).load(0)
    assert resized.train[0][0].shape == (1, 32, 32) and resized.image_size == 32


def test_mnist_missing_root(registry, tmp_path):
    with pytest.raises(
        WorkbenchError, match=r"mnist: root '.*nowhere' does not exist; expected .*train-images-idx3-ubyte"
    ):
        registry.create("dataset", "mnist", root=str(tmp_path / "nowhere")).load(0)


def test_mnist_missing_file_is_named_with_what_it_is(registry, tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    component = registry.create("dataset", "mnist", root=str(tmp_path))
    assert component.missing() == ["MNIST/raw/t10k-labels-idx1-ubyte"]
    with pytest.raises(
        WorkbenchError, match=r"missing .*MNIST/raw/t10k-labels-idx1-ubyte \(test labels.*source: http"
    ):
        component.load(0)


def test_mnist_truncated_file_is_named(registry, tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "MNIST/raw/train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WorkbenchError, match=r"train-images-idx3-ubyte holds \d+ bytes .* truncated"):
        registry.create("dataset", "mnist", root=str(tmp_path)).load(0)


def test_mnist_empty_private_class_is_named(registry, tmp_path):
    make_mnist(tmp_path, test_labels=[d for d in range(10) if d != 3 for _ in range(2)])
    with pytest.raises(WorkbenchError, match=r"class '3' has no images in the test split"):
        registry.create("dataset", "mnist", root=str(tmp_path)).load(0)


def test_download_is_off_by_default(registry, tmp_path):
    assert registry.create("dataset", "mnist", root=str(tmp_path)).params.download is False


# ---------------------------------------------------------------- CIFAR-10 (python batches)

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_rows(labels: list[int]) -> np.ndarray:
    """Rows of 3072 bytes, channel-major (R plane, G plane, B plane): class c is pure red at 25*c."""
    rows = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        rows[i, 0] = 25 * label
        rows[i, 2] = 200  # blue plane constant, green zero
    return rows.reshape(len(labels), -1)


def make_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for batch in range(1, 6):
        labels = list(range(10))
        with open(folder / f"data_batch_{batch}", "wb") as handle:
            pickle.dump({"data": cifar_rows(labels), "labels": labels}, handle)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"data": cifar_rows(list(range(10))), "labels": list(range(10))}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": CIFAR_NAMES}, handle)
    return root


def bless_as_official(monkeypatch, root: Path) -> None:
    """Make torchvision's list of official md5s name these tiny files (the real ones are 160 MB)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import calculate_md5

    folder = root / "cifar-10-batches-py"
    monkeypatch.setattr(CIFAR10, "train_list", [[f, calculate_md5(str(folder / f))] for f, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[f, calculate_md5(str(folder / f))] for f, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": calculate_md5(str(folder / "batches.meta"))})


def test_cifar10_official_batches_load(registry, tmp_path, monkeypatch):
    make_cifar(tmp_path)
    bless_as_official(monkeypatch, tmp_path)
    splits = registry.create("dataset", "cifar10", root=str(tmp_path)).load(0)
    assert splits.class_names == CIFAR_NAMES[:5] and splits.num_classes == 5
    assert splits.evaluation_num_classes == 10
    train_x, train_y = stack(splits.train)
    public_x, public_y = stack(splits.public)
    assert train_x.shape == (25, 3, 32, 32) and len(splits.test) == 5
    assert sorted(set(train_y)) == [0, 1, 2, 3, 4] and sorted(set(public_y)) == [5, 6, 7, 8, 9]
    # Channel order survives: red = 25*label/255, green 0, blue 200/255.
    for image, label in zip(train_x, train_y, strict=True):
        assert torch.allclose(image[0], torch.full((32, 32), 25 * label / 255))
        assert torch.all(image[1] == 0)
        assert torch.allclose(image[2], torch.full((32, 32), 200 / 255))


class Payload:
    """Unpickling this runs code: what a planted batch would do."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["WORKBENCH_TEST_PAYLOAD"]),))


def test_cifar10_planted_pickle_is_refused_before_it_is_unpickled(registry, tmp_path, monkeypatch):
    make_cifar(tmp_path)
    bless_as_official(monkeypatch, tmp_path)
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("WORKBENCH_TEST_PAYLOAD", str(marker))
    batch = tmp_path / "cifar-10-batches-py/data_batch_3"
    with open(batch, "wb") as handle:
        pickle.dump({"data": cifar_rows(list(range(10))), "labels": list(range(10)), "x": Payload()}, handle)
    with pytest.raises(WorkbenchError, match=r"data_batch_3 is not the official CIFAR-10 file.*can run code"):
        registry.create("dataset", "cifar10", root=str(tmp_path)).load(0)
    assert not marker.exists()


def test_cifar10_damaged_batch_is_reported(registry, tmp_path, monkeypatch):
    make_cifar(tmp_path)
    bless_as_official(monkeypatch, tmp_path)
    (tmp_path / "cifar-10-batches-py/data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(WorkbenchError, match=r"cifar10: .*data_batch_3 is not the official CIFAR-10 file"):
        registry.create("dataset", "cifar10", root=str(tmp_path)).load(0)


def test_cifar10_missing_meta_is_named(registry, tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py/batches.meta").unlink()
    with pytest.raises(WorkbenchError, match=r"missing .*batches.meta \(class names"):
        registry.create("dataset", "cifar10", root=str(tmp_path)).load(0)


# ---------------------------------------------------------------- SVHN (.mat)


def test_svhn_test_split(registry, tmp_path):
    from scipy.io import savemat

    images = np.zeros((32, 32, 3, 6), dtype=np.uint8)
    images[:, :, 1, :] = np.arange(6, dtype=np.uint8) * 40  # green channel encodes the index
    savemat(tmp_path / "test_32x32.mat", {"X": images, "y": np.arange(1, 7).reshape(-1, 1)})
    dataset = registry.create("ood_dataset", "svhn", root=str(tmp_path)).load(
        image_size=16, in_channels=3, seed=0
    )
    x, labels = stack(dataset)
    assert x.shape == (6, 3, 16, 16) and set(labels) == {-1}
    assert torch.allclose(x[:, 1].mean(dim=(1, 2)), torch.arange(6) * 40 / 255, atol=1e-6)
    assert torch.all(x[:, 0] == 0)
    gray = registry.create("ood_dataset", "svhn", root=str(tmp_path), size=4).load(16, 1, seed=0)
    assert len(gray) == 4 and gray[0][0].shape == (1, 16, 16)


# ---------------------------------------------------------------- CelebA layout

# identity -> number of images; ranked by count, ties by identity: 3, 7, 5, 9, 11, 12
CELEBA_COUNTS = {7: 4, 3: 4, 5: 3, 9: 2, 11: 2, 12: 1}


def celeba_image(marked: bool = True) -> Image.Image:
    """178x218 black image. White: a stripe above the crop box, one left of it, and a square
    in the crop box's top-left quarter (rows 55..82, cols 35..62)."""
    array = np.zeros((218, 178, 3), dtype=np.uint8)
    array[:45] = 255  # above the crop box (top = 55)
    array[:, :25] = 255  # left of it (left = 35)
    if marked:
        array[55 : 55 + 27, 35 : 35 + 27] = 255
    return Image.fromarray(array)


def make_celeba(root: Path, counts: dict[int, int] = CELEBA_COUNTS) -> Path:
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    lines, number = [], 0
    for identity, count in counts.items():
        for _ in range(count):
            number += 1
            name = f"{number:06d}.jpg"
            celeba_image().save(folder / name, quality=95)
            lines.append(f"{name} {identity}")
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return root


def test_celeba_top_identities_split_and_crop(registry, tmp_path):
    make_celeba(tmp_path)
    component = registry.create(
        "dataset", "celeba", root=str(tmp_path), private_identities=2, test_fraction=0.25
    )
    assert component.missing() == []
    splits = component.load(seed=0)
    assert splits.class_names == ["3", "7"] and splits.num_classes == 2
    train_x, train_y = stack(splits.train)
    test_x, test_y = stack(splits.test)
    assert sorted(train_y) == [0, 0, 0, 1, 1, 1] and sorted(test_y) == [0, 1]
    assert not set(splits.train.paths) & set(splits.test.paths)
    assert len(splits.public) == 3 + 2 + 2 + 1
    assert set(splits.public.labels) == {-1}
    assert train_x.shape == (6, 3, 64, 64)
    # The crop box (35, 55, 143, 163): the marked quarter fills the top-left 16x16 of the output,
    # and the white stripes outside the box never enter it.
    image = train_x[0].mean(dim=0)
    assert float(image[1:14, 1:14].min()) > 0.85
    assert float(image[20:, :].max()) < 0.15 and float(image[:, 20:].max()) < 0.15
    again = registry.create(
        "dataset", "celeba", root=str(tmp_path), private_identities=2, test_fraction=0.25
    ).load(0)
    assert again.test.paths == splits.test.paths


def test_celeba_split_seeded_per_identity(registry, tmp_path):
    make_celeba(tmp_path)
    component = registry.create(
        "dataset", "celeba", root=str(tmp_path), private_identities=3, test_fraction=0.34
    )
    tests = {tuple(component.load(seed).test.paths) for seed in range(6)}
    assert len(tests) > 1
    for seed in range(3):
        splits = component.load(seed)
        assert sorted(splits.test.labels) == [0, 1, 2]  # one test image per identity, every seed


def test_celeba_identities_rank_range(registry, tmp_path):
    make_celeba(tmp_path)
    component = registry.create(
        "ood_dataset",
        "celeba-identities",
        root=str(tmp_path),
        private_identities=2,
        rank_start=2,
        rank_stop=4,
    )
    dataset = component.load(image_size=32, in_channels=3, seed=0)
    assert len(dataset) == 3 + 2  # identities 5 and 9
    assert dataset[0][0].shape == (3, 32, 32) and set(dataset.labels) == {-1}
    splits = registry.create(
        "dataset", "celeba", root=str(tmp_path), private_identities=2, test_fraction=0.25
    ).load(0)
    component.check_disjoint(splits)
    aux_paths = set(dataset.paths)
    assert not aux_paths & (set(splits.train.paths) | set(splits.test.paths))
    held_out = registry.create(
        "ood_dataset",
        "celeba-identities",
        root=str(tmp_path),
        private_identities=2,
        rank_start=4,
        rank_stop=6,
    ).load(32, 3, 0)
    assert not aux_paths & set(held_out.paths)


def test_celeba_identities_overlapping_private_ranks_is_refused(registry, tmp_path):
    with pytest.raises(
        WorkbenchError,
        match=r"rank_start: .*rank_start=500 overlaps the 1000 private identities \(ranks 0-999\); expected rank_start >= 1000",
    ):
        registry.create(
            "ood_dataset", "celeba-identities", root=str(tmp_path), rank_start=500, rank_stop=2000
        )
    make_celeba(tmp_path)
    wider = registry.create(
        "dataset", "celeba", root=str(tmp_path), private_identities=3, test_fraction=0.34
    ).load(0)
    narrow = registry.create(
        "ood_dataset",
        "celeba-identities",
        root=str(tmp_path),
        private_identities=2,
        rank_start=2,
        rank_stop=4,
    )
    with pytest.raises(WorkbenchError, match=r"identity 5 \(rank 2\) is a private class"):
        narrow.check_disjoint(wider)


def test_celeba_missing_root_and_files(registry, tmp_path):
    with pytest.raises(
        WorkbenchError, match=r"celeba: root '.*absent' does not exist; expected .*identity_CelebA.txt"
    ):
        registry.create("dataset", "celeba", root=str(tmp_path / "absent")).load(0)
    (tmp_path / "img_align_celeba").mkdir()
    component = registry.create("dataset", "celeba", root=str(tmp_path))
    assert component.missing() == ["identity_CelebA.txt"]
    with pytest.raises(WorkbenchError, match=r"missing .*identity_CelebA.txt \(one line per image"):
        component.load(0)


def test_celeba_listed_image_missing_is_named(registry, tmp_path):
    make_celeba(tmp_path)
    (tmp_path / "img_align_celeba/000002.jpg").unlink()
    with pytest.raises(
        WorkbenchError, match=r"img_align_celeba/000002.jpg is listed in .*identity_CelebA.txt but missing"
    ):
        registry.create("dataset", "celeba", root=str(tmp_path), private_identities=2).load(0)


def test_celeba_truncated_image_names_the_path(registry, tmp_path):
    make_celeba(tmp_path)
    path = tmp_path / "img_align_celeba/000001.jpg"
    path.write_bytes(path.read_bytes()[:300])
    splits = registry.create(
        "dataset", "celeba", root=str(tmp_path), private_identities=2, test_fraction=0.25
    ).load(0)
    dataset = splits.train if path in splits.train.paths else splits.test
    with pytest.raises(WorkbenchError, match=r"cannot read image .*000001.jpg"):
        dataset[dataset.paths.index(path)]


def test_celeba_identity_too_small_to_split_is_named(registry, tmp_path):
    make_celeba(tmp_path, {4: 3, 8: 1, 2: 1})
    with pytest.raises(WorkbenchError, match=r"class 'identity 2' has 1 image\(s\)"):
        registry.create(
            "dataset", "celeba", root=str(tmp_path), private_identities=2, test_fraction=0.5
        ).load(0)


def test_celeba_malformed_identity_line(registry, tmp_path):
    make_celeba(tmp_path)
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 7\n\n000002.jpg\n")
    with pytest.raises(WorkbenchError, match=r"identity_CelebA.txt line 3: expected 'FILENAME IDENTITY'"):
        registry.create("dataset", "celeba", root=str(tmp_path), private_identities=2).load(0)


# ---------------------------------------------------------------- image folders


def make_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (20, 12)) -> Path:
    for k, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", size, (10 * k, 100 + i, 50)).save(root / name / f"{i}.png")
    return root


def test_image_folder_private_by_name_and_by_count(registry, tmp_path):
    make_folder(tmp_path, {"bird": 4, "cat": 5, "dog": 5, "fish": 3})
    splits = registry.create(
        "dataset", "image-folder", root=str(tmp_path), private_classes=["dog", "cat"], image_size=16
    ).load(0)
    assert splits.class_names == ["dog", "cat"]
    assert all(
        path.parent.name == ["dog", "cat"][label]
        for path, label in zip(splits.train.paths, splits.train.labels, strict=True)
    )
    assert len(splits.train) + len(splits.test) == 10 and sorted(splits.test.labels) == [0, 1]
    assert {p.parent.name for p in splits.public.paths} == {"bird", "fish"}
    assert min(splits.public.labels) >= 2
    image, _ = splits.train[0]
    assert image.shape == (3, 16, 16)
    by_count = registry.create(
        "dataset", "image-folder", root=str(tmp_path), private_classes=2, in_channels=1
    ).load(0)
    assert by_count.class_names == ["bird", "cat"] and by_count.train[0][0].shape == (1, 64, 64)
    everything = registry.create("dataset", "image-folder", root=str(tmp_path)).load(0)
    assert everything.num_classes == 4 and everything.public is None


def test_image_folder_unknown_private_class(registry, tmp_path):
    make_folder(tmp_path, {"cat": 3, "dog": 3})
    with pytest.raises(WorkbenchError, match=r"private class 'dgo' has no folder .*did you mean \"dog\""):
        registry.create("dataset", "image-folder", root=str(tmp_path), private_classes=["dgo"]).load(0)


def test_image_folder_empty_class_is_named(registry, tmp_path):
    make_folder(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "owl").mkdir()
    with pytest.raises(WorkbenchError, match=r"class 'owl' .* holds no images"):
        registry.create("dataset", "image-folder", root=str(tmp_path)).load(0)


def test_image_folder_unreadable_image_names_the_path(registry, tmp_path):
    make_folder(tmp_path, {"cat": 2, "dog": 2})
    (tmp_path / "cat" / "0.png").write_bytes(b"not an image at all")
    splits = registry.create("dataset", "image-folder", root=str(tmp_path), test_fraction=0.5).load(0)
    bad = tmp_path / "cat" / "0.png"
    dataset = splits.train if bad in splits.train.paths else splits.test
    with pytest.raises(WorkbenchError, match=r"cannot read image .*cat/0.png"):
        dataset[dataset.paths.index(bad)]


def test_folder_ood_reads_all_images_and_crops(registry, tmp_path):
    root = tmp_path / "dtd"
    make_folder(root / "images", {"banded": 3, "zigzag": 2}, size=(40, 40))
    dataset = registry.create("ood_dataset", "textures", root=str(root)).load(
        image_size=8, in_channels=3, seed=0
    )
    assert len(dataset) == 5 and set(dataset.labels) == {-1}
    assert dataset[0][0].shape == (3, 8, 8)
    subset = registry.create("ood_dataset", "textures", root=str(root), size=2).load(8, 1, seed=1)
    assert len(subset) == 2 and subset[0][0].shape == (1, 8, 8)
    # ffhq crops the centre 88/128 before resizing: a border frame disappears.
    face = np.full((128, 128, 3), 255, dtype=np.uint8)
    face[:20] = face[-20:] = face[:, :20] = face[:, -20:] = 0
    (tmp_path / "ffhq" / "00000").mkdir(parents=True)
    Image.fromarray(face).save(tmp_path / "ffhq" / "00000" / "00001.png")
    cropped = registry.create("ood_dataset", "ffhq", root=str(tmp_path / "ffhq")).load(16, 3, 0)[0][0]
    assert float(cropped.min()) > 0.95


def test_folder_ood_overlapping_private_class_is_refused(registry, tmp_path):
    make_folder(tmp_path / "private", {"alice": 2, "bob": 2})
    make_folder(tmp_path / "faces" / "actors", {"bob": 2, "carol": 2})
    splits = registry.create(
        "dataset", "image-folder", root=str(tmp_path / "private"), test_fraction=0.5
    ).load(0)
    facescrub = registry.create("ood_dataset", "facescrub", root=str(tmp_path / "faces"))
    with pytest.raises(WorkbenchError, match=r"folder .*actors/bob is named like the private class 'bob'"):
        facescrub.check_disjoint(splits)


def test_folder_ood_without_images(registry, tmp_path):
    (tmp_path / "empty").mkdir()
    component = registry.create("ood_dataset", "places365", root=str(tmp_path / "empty"))
    assert component.missing() == [component.describe().files[0].path]
    with pytest.raises(WorkbenchError, match=r"places365: no images under .*empty"):
        component.load(32, 3, 0)


def test_symlink_loop_loads_each_image_once(registry, tmp_path):
    """A loop (cat/loop -> ..) used to turn 12 images into hundreds, with copies of one image
    on both sides of the split; now each real file counts once, wherever links lead."""
    root = make_folder(tmp_path / "data", {"cat": 6, "dog": 6})
    os.symlink("..", root / "cat" / "loop")
    os.symlink(root / "dog" / "0.png", root / "cat" / "same-as-dog-0.png")
    splits = registry.create("dataset", "image-folder", root=str(root), test_fraction=0.5).load(0)
    paths = [p.resolve() for p in splits.train.paths + splits.test.paths]
    assert len(paths) == 12 and len(set(paths)) == 12
    assert not set(splits.train.paths) & set(splits.test.paths)
    ood = registry.create("ood_dataset", "textures", root=str(root)).load(16, 3, 0)
    assert len(ood) == 12 and len({p.resolve() for p in ood.paths}) == 12
    # A symlinked class folder (a common way to assemble a dataset) is followed.
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(root / "cat", linked / "cat")
    os.symlink(root / "dog", linked / "dog")
    assert registry.create("dataset", "image-folder", root=str(linked), test_fraction=0.5).load(0).num_classes == 2


def test_16_bit_png_keeps_its_intensities(registry, tmp_path):
    """PIL's 8-bit conversion clips 16-bit values: a 16-bit PNG read as 97 % white."""
    ramp = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(ramp).save(tmp_path / name / f"{i}.png")
    assert Image.open(tmp_path / "a" / "0.png").mode.startswith("I")
    splits = registry.create("dataset", "image-folder", root=str(tmp_path), image_size=32, in_channels=1,
                             test_fraction=0.5).load(0)
    image, _ = splits.train[0]
    expected = torch.from_numpy(ramp.astype(np.float32) / 65535)
    assert torch.allclose(image[0], expected, atol=1e-6)
    assert float((image >= 0.999).float().mean()) < 0.01 and abs(float(image.mean()) - 0.5) < 0.01
    rgb, _ = registry.create("dataset", "image-folder", root=str(tmp_path), image_size=16,
                             test_fraction=0.5).load(0).train[0]
    assert rgb.shape == (3, 16, 16) and abs(float(rgb.mean()) - 0.5) < 0.02


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A small PNG whose header claims width x height (what a decompression bomb looks like)."""
    import zlib

    Image.new("L", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))


def test_a_196_megapixel_png_is_one_clear_error(registry, tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    bomb = tmp_path / "a" / "0.png"
    _png_claiming(bomb, 14000, 14000)
    splits = registry.create("dataset", "image-folder", root=str(tmp_path), test_fraction=0.5).load(0)
    index = [i for i, p in enumerate(splits.train.paths + splits.test.paths) if p == bomb][0]
    dataset, i = (splits.train, index) if index < len(splits.train) else (splits.test, index - len(splits.train))
    with pytest.raises(WorkbenchError) as info:
        dataset[i]
    message = str(info.value)
    assert str(bomb) in message and "too large to decode safely" in message and "\n" not in message


# ---------------------------------------------------------------- 300K tiny images (.npy)


def test_tinyimages_memory_mapped(registry, tmp_path):
    array = np.zeros((20, 32, 32, 3), dtype=np.uint8)
    array[..., 2] = np.arange(20, dtype=np.uint8)[:, None, None] * 10
    np.save(tmp_path / "300K_random_images.npy", array)
    component = registry.create("ood_dataset", "tinyimages-300k", root=str(tmp_path), size=8)
    dataset = component.load(image_size=32, in_channels=3, seed=0)
    assert isinstance(dataset.images, np.memmap)
    x, labels = stack(dataset)
    assert x.shape == (8, 3, 32, 32) and set(labels) == {-1}
    blue = x[:, 2, 0, 0] * 255 / 10
    assert torch.allclose(blue, blue.round(), atol=1e-4) and len(set(blue.round().tolist())) == 8
    assert torch.all(x[:, :2] == 0)


def test_tinyimages_wrong_shape_and_truncated(registry, tmp_path):
    np.save(tmp_path / "300K_random_images.npy", np.zeros((4, 32, 32), dtype=np.uint8))
    with pytest.raises(
        WorkbenchError,
        match=r"300K_random_images.npy holds uint8 \[4, 32, 32\]; expected uint8 \[N, H, W, 3\]",
    ):
        registry.create("ood_dataset", "tinyimages-300k", root=str(tmp_path)).load(32, 3, 0)
    np.save(tmp_path / "300K_random_images.npy", np.zeros((40, 32, 32, 3), dtype=np.uint8))
    path = tmp_path / "300K_random_images.npy"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WorkbenchError, match=r"cannot read .*300K_random_images.npy"):
        registry.create("ood_dataset", "tinyimages-300k", root=str(tmp_path)).load(32, 3, 0)


def test_describe_lists_files_and_source(registry, tmp_path):
    component = registry.create("dataset", "mnist", root=str(tmp_path))
    description = component.describe()
    assert not description.embedded and description.root == tmp_path
    assert "yann.lecun.com" in description.source
    assert component.missing() == [f.path for f in description.files] and len(description.files) == 4
    make_mnist(tmp_path)
    assert component.missing() == []
