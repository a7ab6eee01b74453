"""Any timm model as a backbone, with hiddens from timm's own `forward_intermediates`.

One forward pass gives everything: `forward_intermediates` runs the trunk and returns the chosen
intermediate maps plus the final features; `forward_head(final, pre_logits=True)` is the
penultimate feature, and the classifier applied to it gives the logits, so dropout in the head
sees one sample for both. timm is imported lazily so listing plugins stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from workbench.api import StrictModel, WorkbenchError, did_you_mean

from ._common import (
    HiddenClassifier,
    check_build_args,
    load_checked,
    read_state_dict,
    require_file,
)

OWNER = "backbone 'timm'"
# create_model arguments the backbone sets itself: classes and channels come from the dataset,
# weights only from `pretrained_file` (a download must never happen behind the user's back).
_RESERVED_KWARGS = {
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
    "cache_dir",
    "num_classes",
    "in_chans",
}


class TimmParams(StrictModel):
    """Any timm model (`timm.list_models()`), never downloading weights."""

    model_name: str
    """timm model name, e.g. `resnet18`, `vit_tiny_patch16_224`, `convnext_atto` (see `timm.list_models()`)."""
    feature_indices: int | list[int] | None = None
    """Which intermediate outputs become hiddens (timm's `indices`): a list of levels (negative counts
    from the end), a number n for the last n, or unset for all. The penultimate feature is always
    added last."""
    pretrained_file: Path | None = None
    """Local weights for the timm model (safetensors or a torch state dict). A classifier whose shape
    differs (other number of classes) stays freshly initialised; any other mismatch is an error."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for `timm.create_model`, e.g. `{ drop_rate = 0.2, drop_path_rate = 0.1 }`."""

    @field_validator("model_name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        import timm

        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}{did_you_mean(name, timm.list_models())}")
        return name

    @field_validator("feature_indices")
    @classmethod
    def _sensible_indices(cls, indices: int | list[int] | None) -> int | list[int] | None:
        if isinstance(indices, int) and indices < 1:
            raise ValueError("a number of levels must be at least 1")
        if isinstance(indices, list) and not indices:
            raise ValueError("give at least one level, or leave unset for all")
        return indices

    @field_validator("model_kwargs")
    @classmethod
    def _no_reserved(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(kwargs) & _RESERVED_KWARGS)
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} cannot be set here: classes and channels come from the dataset, "
                "weights from pretrained_file"
            )
        return kwargs


def _resolve_indices(model_name: str, indices: int | list[int] | None, levels: int) -> list[int]:
    """Level numbers in ascending order, the order timm returns the intermediates in."""
    if indices is None:
        return list(range(levels))
    if isinstance(indices, int):
        if indices > levels:
            raise WorkbenchError(
                f"{OWNER}: feature_indices = {indices} but timm model {model_name!r} has {levels} levels"
            )
        return list(range(levels - indices, levels))
    bad = [i for i in indices if not -levels <= i < levels]
    if bad:
        raise WorkbenchError(
            f"{OWNER}: feature_indices {bad} out of range for timm model {model_name!r} with {levels} levels "
            f"(use 0..{levels - 1}, or -1 for the last)"
        )
    return sorted({i % levels for i in indices})


class TimmHidden(HiddenClassifier):
    """A timm model whose `forward_hidden` gives the chosen intermediates plus the pre-logits."""

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        feature_indices: int | list[int] | None,
        in_channels: int,
        image_size: int,
    ):
        super().__init__()
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
            raise WorkbenchError(
                f"{OWNER}: timm model {model_name!r} has no forward_intermediates, so its hidden layers cannot be "
                "read; pick another model"
            )
        self.model = model
        self.indices = _resolve_indices(model_name, feature_indices, len(model.feature_info))
        intermediates, pre_logits, self._split_head = self._probe(model_name, in_channels, image_size)
        if pre_logits.dim() != 2:
            raise WorkbenchError(
                f"{OWNER}: timm model {model_name!r} gives pre-logits of shape {list(pre_logits.shape)}, not "
                "[batch, features]; set model_kwargs.global_pool = 'avg'"
            )
        self.feature_dim = int(pre_logits.shape[1])
        names = [str(model.feature_info[i]["module"]) for i in self.indices]
        if len(names) != intermediates:  # a model whose feature_info disagrees with its intermediates
            names = [f"hidden{i}" for i in range(intermediates)]
        self.hidden_names = [*names, "feature"]

    def _probe(self, model_name: str, in_channels: int, image_size: int) -> tuple[int, Tensor, bool]:
        """One eval-mode pass on a fixed input: the image size works, pre-logits' size, and whether
        `classifier(pre_logits)` reproduces `forward_head` (true for timm's usual heads)."""
        was_training = self.model.training
        self.model.eval()
        probe = torch.randn(
            2, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0)
        )
        try:
            with torch.no_grad():
                final, intermediates = self.model.forward_intermediates(probe, indices=self.indices)
                pre_logits = self.model.forward_head(final, pre_logits=True)
                logits = self.model.forward_head(final)
                split_head = self._classifier_reproduces(pre_logits, logits)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WorkbenchError(
                f"{OWNER}: timm model {model_name!r} cannot run on {in_channels}×{image_size}×{image_size} images: "
                f"{reason}"
            ) from None
        finally:
            self.model.train(was_training)
        return len(intermediates), pre_logits, split_head

    def _classifier_reproduces(self, pre_logits: Tensor, logits: Tensor) -> bool:
        try:
            via_classifier = self.model.get_classifier()(pre_logits)
        except Exception:
            return False
        return via_classifier.shape == logits.shape and torch.allclose(
            via_classifier, logits, rtol=1e-4, atol=1e-5
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        final, intermediates = self.model.forward_intermediates(x, indices=self.indices)
        pre_logits = self.model.forward_head(final, pre_logits=True)
        if self._split_head:
            logits = self.model.get_classifier()(pre_logits)
        else:  # heads that do more than a classifier on the pre-logits (e.g. distillation heads)
            logits = self.model.forward_head(final)
        return logits, [*intermediates, pre_logits]


class TimmBackbone:
    """Builds a timm model with `pretrained=False`, loading `pretrained_file` when given."""

    def __init__(self, params: TimmParams):
        require_file(OWNER, params.pretrained_file)
        self.params = params

    def build(self, num_classes: int, in_channels: int, image_size: int) -> TimmHidden:
        check_build_args(OWNER, num_classes, in_channels, image_size)
        model = self._create(num_classes, in_channels, image_size)
        if self.params.pretrained_file is not None:
            self._load(model, self.params.pretrained_file)
        return TimmHidden(model, self.params.model_name, self.params.feature_indices, in_channels, image_size)

    def _create(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        import timm

        name = self.params.model_name
        kwargs: dict[str, Any] = {
            "pretrained": False,
            "num_classes": num_classes,
            "in_chans": in_channels,
            **self.params.model_kwargs,
        }
        try:
            if "img_size" not in kwargs:
                # Transformers fix their position embeddings to img_size; CNNs reject the argument.
                try:
                    return timm.create_model(name, img_size=image_size, **kwargs)
                except TypeError as exc:
                    if "img_size" not in str(exc):
                        raise
            return timm.create_model(name, **kwargs)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            shown = ", ".join(f"{key}={value!r}" for key, value in kwargs.items() if key != "pretrained")
            raise WorkbenchError(f"{OWNER}: timm could not build {name!r} ({shown}): {reason}") from None

    @staticmethod
    def _load(model: nn.Module, path: Path) -> None:
        state = read_state_dict(OWNER, path)
        own = model.state_dict()
        classifiers = model.pretrained_cfg.get("classifier") or ()
        for module_name in (classifiers,) if isinstance(classifiers, str) else classifiers:
            for key in (f"{module_name}.weight", f"{module_name}.bias"):
                # Weights trained for another number of classes: keep our fresh classifier.
                if key in state and key in own and state[key].shape != own[key].shape:
                    state[key] = own[key]
        load_checked(OWNER, path, model, state, what="timm model")
