"""TL-DMI: transfer learning as a model-inversion defense (Ho et al., *Model Inversion Robustness:
Can Transfer Learning Help?*, CVPR 2024; reference code `hosytuyen/TL-DMI`,
`config/celeba/training_classifiers/classify.json`, `models/classify.py` `VGG16_TL`).

The first layers are learnt on public data and frozen; only the rest is fine-tuned on the
private data. The frozen layers encode no private information, which weakens what an inverter
can pull back through them, at some cost in accuracy.

Pretraining: from a local weights file (`pretrained`, e.g. a timm checkpoint), or, without one,
by training the target's own architecture on the dataset's public split with the one trainer
(a stage cached like the GAN priors: every variant and run with the same backbone, data, seed
and settings pretrains once).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import Dataset

from workbench.api import (
    Defense,
    LossOutput,
    StrictModel,
    WorkbenchError,
    cross_entropy,
    in_data_parallel,
    seeds,
    train_classifier,
    weights_fingerprint,
)


class TLDMIParams(StrictModel):
    freeze: float = Field(0.6, ge=0, le=1)
    """Share of the backbone's weight layers (convolutions and linear layers, the head excluded),
    counted from the input, that stay frozen with their norm layers. Reference: VGG16-BN with
    `freeze_layers = 26`, i.e. `features` children 0–26, which hold 8 of its 13 convolutions
    (0.62); IR152 46, FaceNet64 5. Deviation: a share instead of a child index, so one value
    fits every backbone; MCNN (3 convolutions) freezes round(0.6 · 3) = 2. `freeze = 0` freezes
    nothing, `freeze = 1` every weight layer but the head; the reference's `freeze_layers = 0` is
    the opposite, the whole backbone frozen (TL-DMI `models/classify.py:203-205`), i.e. `freeze = 1`
    here."""
    source: Literal["public", "file", "backbone"] = "public"
    """Where the pretrained layers come from. `public`: train the target's architecture on the
    dataset's public split first (a cached stage; the digits tier's choice). `file`: the local
    weights file `pretrained`. `backbone`: the weights the backbone was built with (its own
    `pretrained_file`, e.g. ImageNet VGG16-BN: the reference's CelebA setting, `resume` =
    VGG16-IN1K)."""
    pretrained: str | None = None
    """For `source = "file"`: a local `.safetensors`, or a PyTorch state dict `.pt/.pth/.bin` (a
    timm checkpoint, say) read with `weights_only`; tensors whose name or shape does not fit (the
    head) are skipped."""

    @model_validator(mode="after")
    def _file_named(self):
        if self.source == "file" and not self.pretrained:
            raise ValueError("source = 'file' needs `pretrained`, the path of a local weights file")
        if self.pretrained and self.source != "file":
            raise ValueError("`pretrained` is read only with source = 'file'")
        return self
    pretrain_epochs: int | None = Field(None, ge=1)
    """Epochs of the public pretraining; unset = the target's `train.epochs`. Optimizer, batch
    size and schedule are the target's."""
    lr_scale: float = Field(1.0, gt=0)
    """Learning rate of the trainable pretrained layers relative to the new head (reference: 1,
    one learning rate for all)."""


class _Relabelled(Dataset):
    """A dataset with its labels mapped to 0..K-1 (public classes are numbered after the private)."""

    def __init__(self, dataset: Dataset, mapping: dict[int, int]):
        self.dataset = dataset
        self.mapping = mapping

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        x, y = self.dataset[index]
        return x, self.mapping[int(y)]


def _labels(dataset: Dataset) -> list[int]:
    for name in ("labels", "targets"):
        found = getattr(dataset, name, None)
        if found is not None:
            return [int(v) for v in found]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _data_fingerprint(dataset: Dataset, labels: list[int]) -> str:
    """Length, every label and the first 256 images: what the cached pretraining is keyed by."""
    digest = hashlib.sha256(f"{len(dataset)}:{labels}".encode())
    for i in range(min(256, len(dataset))):
        digest.update(torch.as_tensor(dataset[i][0]).float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def find_head(model: nn.Module, num_classes: int) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute, module) of the classification head: the last linear layer with
    `num_classes` outputs."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = (name, module)
    if found is None:
        raise WorkbenchError(f"tl-dmi: no linear head with {num_classes} outputs in {type(model).__name__}")
    name, module = found
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else model, attr, module


def freeze_front(model: nn.Module, head: nn.Module, share: float) -> list[str]:
    """Freeze the first round(share · n) weight layers (conv/linear, head excluded) and every module
    with parameters before the next weight layer (their norms); returns the frozen names."""
    weight_layers = [name for name, m in model.named_modules()
                     if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and m is not head]
    count = round(share * len(weight_layers))
    if count == 0:
        return []
    stop = weight_layers[count] if count < len(weight_layers) else None
    frozen = []
    for name, module in model.named_modules():
        if name == stop or module is head:
            break
        own = list(module.parameters(recurse=False))
        if own:
            for p in own:
                p.requires_grad_(False)
            frozen.append(name)
    return frozen


def load_weights(model: nn.Module, path: str) -> tuple[int, int]:
    """Copy the fitting tensors of a local weights file into `model`: (loaded, skipped)."""
    file = Path(path).expanduser()
    if not file.exists():
        raise WorkbenchError(f"tl-dmi: pretrained weights {file} not found (a local .safetensors or "
                             ".pt/.pth state dict, e.g. a timm checkpoint)")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    own = model.state_dict()
    fitting = {k.removeprefix("module."): v for k, v in state.items()}
    fitting = {k: v for k, v in fitting.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return len(fitting), len(state) - len(fitting)


class TLDMI(Defense):
    """Pretrain (or load) the backbone, freeze its first layers, fine-tune the rest with plain CE."""

    def __init__(self, params: TLDMIParams):
        self.params = params
        self.head: nn.Module | None = None

    def prepare_model(self, model, num_classes, ctx=None):
        p = self.params
        parent, attr, head = find_head(model, num_classes)
        if p.source == "file":
            loaded, skipped = load_weights(model, p.pretrained)
            message = f"tl-dmi: {loaded} tensors loaded from {p.pretrained} ({skipped} skipped)"
        elif p.source == "backbone":
            message = "tl-dmi: the backbone's own pretrained weights"
        else:
            message = self._pretrain(model, parent, attr, head, num_classes, ctx)
        # A fresh head for the private classes, seeded on its own.
        with seeds.seeded(ctx.seed if ctx else 0, "tl-dmi", "head"):
            new_head = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
        setattr(parent, attr, new_head)
        self.head = new_head
        frozen = freeze_front(model, new_head, p.freeze)
        if ctx is not None:
            ctx.emit("log", level="info", message=f"{message}; frozen: {', '.join(frozen) or 'nothing'}")
        return model

    def _pretrain(self, model, parent, attr, head, num_classes, ctx) -> str:
        if ctx is None or ctx.data is None or ctx.data.public is None:
            raise WorkbenchError("tl-dmi: needs public data to pretrain on (the dataset has no public split), "
                                 "or a local weights file in `pretrained`")
        public = ctx.data.public
        labels = _labels(public)
        classes = sorted(set(labels))
        mapping = {c: i for i, c in enumerate(classes)}
        with seeds.seeded(ctx.seed, "tl-dmi", "public-head"):
            setattr(parent, attr, nn.Linear(head.in_features, len(classes), bias=head.bias is not None))
        config = ctx.train.model_copy(update={"epochs": self.params.pretrain_epochs or ctx.train.epochs,
                                              "balanced_batches": None})
        key = {"init": weights_fingerprint(model), "public": _data_fingerprint(public, labels),
               "train": config.model_dump(mode="json"), "seed": ctx.seed}
        from workbench.api import NoParams
        from workbench_defenses.none import NoDefense

        def pretrain():
            result = train_classifier(model, NoDefense(NoParams()), _Relabelled(public, mapping), config,
                                      device=ctx.device, seed=seeds.derive(ctx.seed, "tl-dmi", "pretrain"),
                                      emit=ctx.emit, stage="tl-dmi-pretrain",
                                      data_parallel=in_data_parallel())  # torchrun: every rank, in lockstep
            return {"history": result.history, "summary": "tl-dmi public pretraining"}

        if ctx.cache is not None:
            meta, hit = ctx.cache.load_or_compute("tl-dmi-pretrain", key, {"model": model}, pretrain,
                                                  what="tl-dmi pretraining")
        else:
            meta, hit = pretrain(), False
        model.to("cpu")
        accuracy = (meta.get("history") or [{}])[-1].get("train_accuracy")
        shown = f", public train accuracy {accuracy:.3f}" if accuracy is not None else ""
        return f"tl-dmi: pretrained on {len(public)} public images of {len(classes)} classes " \
               f"({'from the stage cache' if hit else f'{config.epochs} epochs'}{shown})"

    def param_groups(self, model):
        head = {id(p) for p in self.head.parameters()} if self.head is not None else set()
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) in head]},
                  {"params": [p for p in trainable if id(p) not in head], "lr_scale": self.params.lr_scale}]
        return [g for g in groups if g["params"]]

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        ce = cross_entropy(logits, y)
        return LossOutput(ce, {"ce": float(ce.detach())})
