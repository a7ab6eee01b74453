"""Random erasing as a model-inversion defense (MIDRE: *Random Erasing vs. Model Inversion: A
Promising Defense or a False Hope?*, TMLR 2025; reference code `ngoc-nguyen-0/MIDRE_TMLR`,
`configs/training/targets/ResNet18_FaceScrub_midre_0.4.yaml:27-31`; normalisation before it:
`utils/training_config_parser.py:138-140`).

Every training image gets one square patch, at a random location, filled with a constant: the
model never sees a whole private face, so what an inverter recovers is less identifying. A
wrapper: it erases, then hands the batch to the defense it holds (`defense = { use = "bido", ...
}`), which supplies the loss, so random erasing composes with any other defense.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator
from torch import Tensor

from workbench.api import ComponentTable, Defense, DefenseCapabilities, StrictModel, seeds

DefenseTable = ComponentTable.of("defense")


class RandomErasingParams(StrictModel):
    defense: DefenseTable = DefenseTable(use="none")
    """The defense that trains on the erased images and supplies the loss (`none`: MIDRE alone;
    `bido`, `mid`, `negls`, `trap-mid`... to combine)."""
    probability: float = Field(1.0, ge=0, le=1)
    """Share of training images erased (reference: `RandomErasing.p = 1.0`,
    `ResNet18_FaceScrub_midre_0.4.yaml:28`)."""
    scale: tuple[float, float] = (0.1, 0.4)
    """Range of the erased area as a fraction of the image (reference: (0.1, 0.4); the paper's
    stronger setting (0.1, 0.8) is `configs/training/targets/ResNet18_FaceScrub_midre_0.8.yaml`)."""
    ratio: tuple[float, float] = (1.0, 1.0)
    """Range of the patch's aspect ratio h/w, drawn log-uniformly (reference: (1, 1), square)."""
    value: list[float] = [0.7425, 0.728, 0.703]
    """Fill value per channel in [0, 1] pixel space. Reference: `value = [0.485, 0.456, 0.406]`
    applied *after* normalising with mean 0.5, std 0.5 (`utils/training_config_parser.py:138-140` puts
    `get_normalization()` before RandomErasing), i.e. 0.5 + 0.5·v in pixels. Deviation: an image
    with a different number of channels gets the mean of these values in every channel (0.7245
    for grayscale digits)."""

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("needs 0 < low <= high")
        return value


def erase_boxes(shape: tuple[int, int], count: int, scale: tuple[float, float], ratio: tuple[float, float],
                probability: float, generator: torch.Generator) -> list[tuple[int, int, int, int] | None]:
    """One (top, left, h, w) box per image, or None: torchvision's RandomErasing rule (area drawn
    uniformly in `scale`, aspect log-uniformly in `ratio`, up to 10 tries for a box that fits,
    top-left corner uniform over the positions where it fits)."""
    height, width = shape
    boxes: list[tuple[int, int, int, int] | None] = []
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(count):
        box = None
        if float(torch.rand((), generator=generator)) < probability:
            for _try in range(10):
                area = height * width * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=generator)))
                aspect = math.exp(log_lo + (log_hi - log_lo) * float(torch.rand((), generator=generator)))
                h = round(math.sqrt(area * aspect))
                w = round(math.sqrt(area / aspect))
                if 0 < h < height and 0 < w < width:
                    top = int(torch.randint(0, height - h + 1, (), generator=generator))
                    left = int(torch.randint(0, width - w + 1, (), generator=generator))
                    box = (top, left, h, w)
                    break
        boxes.append(box)
    return boxes


class RandomErasing(Defense):
    """Erase a random patch of every training image, then defer to the held defense."""

    def __init__(self, params: RandomErasingParams):
        self.params = params
        self.inner: Defense = params.defense.instance
        # As the held defense declares (around Gaussian noise: post-hoc, trained with erasing, then wrapped).
        self.capabilities = getattr(self.inner, "capabilities", None) or DefenseCapabilities()
        self.seed = 0

    @property
    def report_keys(self) -> tuple[str, ...]:  # what the held defense reports (DP's epsilon, say)
        return tuple(getattr(self.inner, "report_keys", ()))

    @property
    def data_parallel(self) -> bool:  # as the held defense (random erasing around DP-SGD stays one process)
        return getattr(self.inner, "data_parallel", True)

    def erase(self, x: Tensor, generator: torch.Generator) -> Tensor:
        p = self.params
        channels = x.shape[1]
        fill = p.value if len(p.value) == channels else [sum(p.value) / len(p.value)] * channels
        fill_t = torch.tensor(fill, dtype=x.dtype, device=x.device).view(channels, 1, 1)
        out = x.clone()
        for index, box in enumerate(erase_boxes(tuple(x.shape[-2:]), len(x), p.scale, p.ratio, p.probability,
                                                generator)):
            if box is not None:
                top, left, h, w = box
                out[index, :, top:top + h, left:left + w] = fill_t
        return out

    # Every hook goes to the held defense; `transform` erases first.
    def prepare_model(self, model, num_classes, ctx=None):
        return self.inner.prepare_model(model, num_classes, ctx)

    def param_groups(self, model):
        return self.inner.param_groups(model)

    def start_training(self, model, optimizer, setup):
        self.seed = setup.seed
        return self.inner.start_training(model, optimizer, setup)

    def start_epoch(self, epoch, epochs):
        self.inner.start_epoch(epoch, epochs)

    def transform(self, x, y, *, model, epoch, step):
        erased = self.erase(x, seeds.generator(self.seed, "random-erasing", epoch, step))
        return self.inner.transform(erased, y, model=model, epoch=epoch, step=step)

    def loss(self, *, x, y, logits, hiddens, model):
        return self.inner.loss(x=x, y=y, logits=logits, hiddens=hiddens, model=model)

    def epoch_figures(self):
        return self.inner.epoch_figures()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)

    def finish_training(self, model):
        self.inner.finish_training(model)
