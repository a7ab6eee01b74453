"""Shared pieces: image conversion, seeded splits, lazy datasets and the errors users see."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from workbench.api import StrictModel, WorkbenchError

from .description import DataDescription, ExpectedFile

OOD_LABEL = -1
"""Label carried by OOD images; it is never used for training."""

OODRole = Literal["auxiliary", "test"]

# ---------------------------------------------------------------- params shared by many components


class OODSizeParams(StrictModel):
    size: int | None = Field(None, ge=1)
    """Use at most this many images (a seeded random subset); empty = all of them."""


# ---------------------------------------------------------------- tensors and images


def resize_batch(images: Tensor, image_size: int) -> Tensor:
    """Bilinear resize of `[N, C, H, W]` floats; antialiased so downsampling does not alias."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    resized = F.interpolate(
        images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.clamp_(0.0, 1.0)


def convert_channels(images: Tensor, in_channels: int) -> Tensor:
    """Grayscale <-> RGB on `[N, C, H, W]` (ITU-R 601 luma, as PIL's 'L' mode uses)."""
    channels = images.shape[1]
    if channels == in_channels:
        return images
    if channels == 1 and in_channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 3 and in_channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    raise WorkbenchError(
        f"cannot convert {channels}-channel images to {in_channels} channels; expected 1 or 3"
    )


def check_in_channels(in_channels: int, where: str) -> None:
    if in_channels not in (1, 3):
        raise WorkbenchError(
            f"{where}: in_channels={in_channels} is not supported; expected 1 (grayscale) or 3 (RGB)"
        )


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, naming the file when it is missing, unreadable or truncated."""
    try:
        with Image.open(path) as image:
            image.load()  # decoding here is what exposes truncated files
            return image.copy()
    except FileNotFoundError:
        raise WorkbenchError(f"image {path} does not exist; expected an image file at that path") from None
    except Image.DecompressionBombError as exc:
        raise WorkbenchError(
            f"image {path} is too large to decode safely ({exc}); expected ordinary photos "
            "(downscale it or remove it)"
        ) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise WorkbenchError(
            f"cannot read image {path}: {exc}; expected a complete image file (re-extract or remove it)"
        ) from None


def center_crop_box(width: int, height: int, side: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a centred `side` square; CelebA's 178x218 with 108 gives (35, 55, 143, 163)."""
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def pil_to_float(
    image: Image.Image,
    image_size: int,
    in_channels: int,
    center_crop_size: int | None = None,
    center_crop_fraction: float = 1.0,
    path: Path | str = "",
) -> Tensor:
    """PIL image -> `[C, H, W]` float in [0, 1]: optional centred crop, resize, channel conversion.

    16-bit (and 32-bit integer or float) images are scaled by their bit depth, not clipped to
    8 bits: PIL's `convert("L")` would turn a 16-bit PNG almost entirely white.
    """
    high = high_depth_to_float(image, path)
    image = high if high is not None else image.convert("L" if in_channels == 1 else "RGB")
    if center_crop_size is not None:
        if min(image.size) < center_crop_size:
            raise WorkbenchError(
                f"image {path} is {image.width}x{image.height}, smaller than the {center_crop_size} px centre crop; "
                "expected the aligned images (178x218 for CelebA) or a smaller crop_size"
            )
        image = image.crop(center_crop_box(image.width, image.height, center_crop_size))
    elif center_crop_fraction < 1.0:
        side = max(1, round(min(image.size) * center_crop_fraction))
        left = (image.width - side) // 2
        top = (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    if image.mode == "F":
        tensor = torch.from_numpy(np.array(image, dtype=np.float32))[None].clamp_(0.0, 1.0)
        return convert_channels(tensor[None], in_channels)[0]
    return pil_to_tensor(image).float().div_(255.0)


# PIL modes of more than 8 bits a channel, and the value that is full intensity in each.
HIGH_DEPTH_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0}


def high_depth_to_float(image: Image.Image, path: Path | str = "") -> Image.Image | None:
    """A single-channel image of more than 8 bits as a PIL 'F' image in [0, 1]; None for others.

    PNG keeps 16-bit grayscale as 'I;16' (or 'I'); 16-bit RGB PNGs are already reduced to 8 bits
    a channel by PIL. 'I' holds 32-bit integers: 16-bit data when no value passes 65535.
    """
    mode = image.mode
    if mode not in HIGH_DEPTH_MODES and mode not in ("I", "F"):
        return None
    array = np.asarray(image, dtype=np.float64)
    if mode in HIGH_DEPTH_MODES:
        scale = HIGH_DEPTH_MODES[mode]
    elif mode == "I":
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0 or high > 65535:
            raise WorkbenchError(
                f"image {path} holds 32-bit integers from {low:g} to {high:g}; expected 8- or 16-bit images"
            )
        scale = 255.0 if high <= 255 and image.format not in ("PNG", "TIFF") else 65535.0
    else:  # "F": floating point (TIFF); [0, 1] or [0, 255]
        high = float(np.nanmax(array)) if array.size else 0.0
        if not np.all(np.isfinite(array)) or array.min() < 0 or high > 255:
            raise WorkbenchError(
                f"image {path} is floating point with values outside [0, 255] or not finite; "
                "expected intensities in [0, 1] or [0, 255]"
            )
        scale = 1.0 if high <= 1.0 else 255.0
    return Image.fromarray((array / scale).astype(np.float32))


def uint8_to_float(images: Tensor | np.ndarray, image_size: int, in_channels: int) -> Tensor:
    """`[N, C, H, W]` uint8 -> float in [0, 1], resized and channel-converted."""
    tensor = torch.as_tensor(np.asarray(images)).float().div_(255.0)
    return resize_batch(convert_channels(tensor, in_channels), image_size)


# ---------------------------------------------------------------- datasets


class ImageFileDataset(Dataset):
    """Images read from disk in `__getitem__` (CelebA alone is 200k files, so nothing is preloaded)."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        image_size: int,
        in_channels: int,
        center_crop_size: int | None = None,
        center_crop_fraction: float = 1.0,
    ):
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths = list(paths)
        self.labels = [int(label) for label in labels]
        self.image_size = image_size
        self.in_channels = in_channels
        self.center_crop_size = center_crop_size
        self.center_crop_fraction = center_crop_fraction

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = open_image(self.paths[index])
        tensor = pil_to_float(
            image,
            self.image_size,
            self.in_channels,
            self.center_crop_size,
            self.center_crop_fraction,
            self.paths[index],
        )
        return tensor, self.labels[index]


class UInt8ArrayDataset(Dataset):
    """`[N, C, H, W]` uint8 images (in memory or memory-mapped) converted one at a time.

    Converting lazily keeps MNIST-sized sets at 1 byte a pixel instead of 4 (plus resizing).
    `layout` says how the source array is laid out: "NCHW", "NHWC" or "NHW".
    """

    def __init__(
        self,
        images: Any,
        labels: Sequence[int] | np.ndarray,
        image_size: int,
        in_channels: int,
        layout: Literal["NCHW", "NHWC", "NHW"] = "NCHW",
        indices: Sequence[int] | np.ndarray | None = None,
    ):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.arange(len(self.labels)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.image_size = image_size
        self.in_channels = in_channels
        self.layout = layout

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        source = int(self.indices[index])
        array = np.asarray(self.images[source])
        if self.layout == "NHW":
            array = array[None]
        elif self.layout == "NHWC":
            array = array.transpose(2, 0, 1)
        image = uint8_to_float(np.ascontiguousarray(array)[None], self.image_size, self.in_channels)[0]
        return image, int(self.labels[source])


# ---------------------------------------------------------------- splits and checks


def split_per_class(
    labels: np.ndarray, test_fraction: float, seed: int, class_name: Callable[[int], str], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: each class gives `round(n * test_fraction)` images to the test side.

    Done per class (not with one global shuffle) so every class keeps at least one image on
    each side, and a class that cannot is named in the error instead of silently vanishing.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * test_fraction))
        if n_test == 0 or n_test == len(members):
            side = "test" if n_test == 0 else "train"
            raise WorkbenchError(
                f"{where}: class {class_name(int(label))!r} has {len(members)} image(s), so test_fraction="
                f"{test_fraction} leaves its {side} split empty; expected at least one image on each side "
                "(change test_fraction or drop the class)"
            )
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def require_classes(
    labels: np.ndarray, wanted: Sequence[int], class_name: Callable[[int], str], where: str, split: str
) -> None:
    """Every class in `wanted` has at least one image in `labels`, else name the empty class."""
    present = set(np.unique(labels).tolist())
    for label in wanted:
        if label not in present:
            raise WorkbenchError(
                f"{where}: class {class_name(label)!r} has no images in the {split} split; "
                "expected every private class to have images"
            )


def require_root(description: DataDescription) -> Path:
    """The root folder, or one error line saying what belongs there and where it comes from."""
    root = description.root
    if root is None or not root.is_dir():
        expected = ", ".join(f.path for f in description.files)
        state = "is not a folder" if root is not None and root.exists() else "does not exist"
        raise WorkbenchError(
            f"{description.name}: root '{root}' {state}; expected a folder holding {expected} "
            f"(source: {description.source})"
        )
    return root


def require_files(description: DataDescription) -> Path:
    """Root plus every expected file; names the first missing one, what it is, and its source."""
    root = require_root(description)
    for expected in description.files:
        if not expected.present(root):
            shown = f"no images under {root}" if expected.any_image else f"missing {root / expected.path}"
            raise WorkbenchError(
                f"{description.name}: {shown} ({expected.what}); source: {description.source}"
            )
    return root


def seeded_subset(count: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of `size` out of `count` (all when size is None)."""
    if size is None or size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))


def describe_files(*pairs: tuple[str, str]) -> list[ExpectedFile]:
    return [ExpectedFile(path, what) for path, what in pairs]
