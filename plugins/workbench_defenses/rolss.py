"""RoLSS: removing (or scaling) the skip connections of a ResNet's last stage (Koh, Ho, Nguyen,
Cheung, *On the Vulnerability of Skip Connections to Model Inversion Attacks*, ECCV 2024; reference
code `Pillowkoh/RoLSS@304b147`, `models/torchvision/models/resnet.py`; the toolbox copy that runs is
`BreuerLabs/Anti-Adversarial-Training@ec6069a` `defenses/rolss.py`).

Every residual block computes `out = act(F(x) + s·P(x))`, `P` the identity or the projection
shortcut; the reference passes one scale `s` per stage to every block of it (`resnet.py:89,104-105`
BasicBlock, `:147,166-167` Bottleneck, `:215-223,288-308` `_make_layer`). `s = 0` drops the
shortcut (RoLSS, `skip = [1, 1, 1, 0]`), `0 < s < 1` scales it (SSF, ATAT `rolss_ssf.yaml:2`
`[1, 1, 1, 0.2]`). No parameter is added or removed; the loss is plain cross-entropy.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from torch import Tensor, nn

from workbench.api import Defense, LossOutput, StrictModel, WorkbenchError, cross_entropy

STAGES = 4


class RoLSSParams(StrictModel):
    skip: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0, 0.0])
    """Shortcut scale of every block of each of the four stages, first to last: `out = act(F(x) +
    s·P(x))` (reference `ResNet(skip=...)`, `resnet.py:185,215-223`). RoLSS removes the last stage's
    shortcuts, `[1, 1, 1, 0]` (the authors' ResNet-34/50/101/152 configs, line 8 of each
    `configs/training/targets/*/resnet*/skip.yaml`, and ATAT `rolss.yaml`); SSF scales them,
    `[1, 1, 1, 0.2]` (ATAT `rolss_ssf.yaml:2`) or the authors' ResNet-18 value `[1, 1, 1, 0.6]`."""
    reference_layer3_tail: bool = False
    """Also drop the shortcuts of the last 20 % of stage 3's blocks (index ≥ int(0.8·n)), as the
    reference file does for every model it builds, baselines included, whatever `skip` says
    (`resnet.py:222,295,310-321`: `layer3` built with `split=0.8`; ResNet-18 loses 1 of 2 blocks'
    shortcuts, ResNet-50 2 of 6). Off by default: the paper's described architecture. On, it
    reproduces the authors' code; then compare against a `rolss` variant with `skip = [1, 1, 1, 1]`
    and this switch on, not against `none`."""

    @field_validator("skip")
    @classmethod
    def _four_scales(cls, skip: list[float]) -> list[float]:
        if len(skip) != STAGES:
            raise ValueError(f"give one shortcut scale per stage, {STAGES} in all (got {len(skip)})")
        if any(s < 0 for s in skip):
            raise ValueError("shortcut scales must be ≥ 0 (0 removes a shortcut, 1 keeps it)")
        return skip


class ShortcutScale(nn.Module):
    """Multiplies the shortcut by `scale`. Appended to the shortcut's `nn.Sequential`, it keeps every
    state-dict key (it has no tensors). `0·P(x)`, not skipping the add, gives the projection a zero
    gradient rather than none, which keeps DDP's reducer content; the outputs are the reference's."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def _scaled(shortcut: nn.Module | None, scale: float) -> nn.Sequential:
    """The shortcut (None: identity) followed by its scale; keys of a Sequential shortcut unchanged."""
    if shortcut is None:
        return nn.Sequential(ShortcutScale(scale))
    if isinstance(shortcut, nn.Sequential):
        return nn.Sequential(*shortcut, ShortcutScale(scale))
    if not any(True for _ in shortcut.parameters()) and not any(True for _ in shortcut.buffers()):
        return nn.Sequential(shortcut, ShortcutScale(scale))  # a parameter-free shortcut (IR's max-pool)
    raise WorkbenchError(f"rolss: cannot scale a {type(shortcut).__name__} shortcut without renaming its weights")


def residual_stages(model: nn.Module) -> tuple[str, list[list[tuple[nn.Module, str]]]]:
    """(backbone kind, per stage the blocks as (block, name of its shortcut attribute)), for the
    backbones whose blocks end in `act(F(x) + P(x))` with `P` an attribute; refuses the others."""
    timm_model = getattr(model, "model", None)
    if timm_model is not None and all(hasattr(timm_model, f"layer{i}") for i in range(1, STAGES + 1)):
        from timm.models.resnet import BasicBlock, Bottleneck

        stages = [list(getattr(timm_model, f"layer{i}")) for i in range(1, STAGES + 1)]
        if all(isinstance(b, (BasicBlock, Bottleneck)) for stage in stages for b in stage):
            # timm's forward: `if self.downsample is not None: shortcut = self.downsample(shortcut);
            # x += shortcut; x = self.act(x)` (timm `models/resnet.py` BasicBlock/Bottleneck.forward).
            return "timm ResNet", [[(b, "downsample") for b in stage] for stage in stages]
    trunk = getattr(model, "feature", None)
    if trunk is not None and hasattr(trunk, "stage_ends") and hasattr(trunk, "body"):
        units, stages, start = list(trunk.body), [], 0
        for stop in trunk.stage_ends:  # IR unit: `res_layer(x) + shortcut_layer(x)` (face_ir.py IRUnit)
            stages.append([(u, "shortcut_layer") for u in units[start:stop]])
            start = stop
        if len(stages) == STAGES and all(hasattr(u, "shortcut_layer") for s in stages for u, _ in s):
            return "facenet", stages
    name = type(getattr(model, "model", model)).__name__
    raise WorkbenchError(f"rolss: backbone {name} has no residual stages with skip connections (layer1–layer4 "
                         "of BasicBlock/Bottleneck, or IR units); use a timm ResNet/ResNeXt (e.g. resnet18) or facenet")


def scale_shortcuts(model: nn.Module, skip: list[float], layer3_tail: bool = False) -> tuple[str, list[list[float]]]:
    """Give every block of stage i the shortcut scale `skip[i]` (and 0 to stage 3's last 20 % with
    `layer3_tail`); returns the backbone kind and the scales applied, per stage and block."""
    kind, stages = residual_stages(model)
    applied = []
    for index, (stage, scale) in enumerate(zip(stages, skip, strict=True)):
        tail = int(0.8 * len(stage)) if layer3_tail and index == 2 else len(stage)  # resnet.py:295
        scales = [scale if i < tail else 0.0 for i in range(len(stage))]
        for (block, attr), s in zip(stage, scales, strict=True):
            if s != 1.0:
                setattr(block, attr, _scaled(getattr(block, attr), s))
        applied.append(scales)
    return kind, applied


class RoLSS(Defense):
    """Scale (or remove) the shortcuts of the chosen stages; cross-entropy as for `none`."""

    def __init__(self, params: RoLSSParams):
        self.params = params

    def prepare_model(self, model, num_classes, ctx=None):
        kind, applied = scale_shortcuts(model, self.params.skip, self.params.reference_layer3_tail)
        if ctx is not None:
            shown = "; ".join(f"stage {i + 1}: {', '.join(f'{s:g}' for s in scales)}" for i, scales in enumerate(applied))
            ctx.emit("log", level="info", message=f"rolss: {kind} shortcut scales per block — {shown}")
            if kind == "timm ResNet" and min(self.params.skip) == 0 and _zero_init_last(model):
                ctx.emit("log", level="warning", message=(
                    "rolss: the timm ResNet zero-initialises each block's last BatchNorm (zero_init_last); with a "
                    "shortcut removed its stage starts at act(0); set target.backbone.model_kwargs = "
                    "{ zero_init_last = false } (torchvision's and the RoLSS authors' init)"))
        return model

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        ce = cross_entropy(logits, y)
        return LossOutput(ce, {"ce": float(ce.detach())})


def _zero_init_last(model: nn.Module) -> bool:
    last = getattr(model.model.layer4[-1], "bn3", None) or getattr(model.model.layer4[-1], "bn2", None)
    return last is not None and float(last.weight.detach().abs().sum()) == 0.0
