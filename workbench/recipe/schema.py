"""Recipes: one TOML file describes a whole experiment.

Loading is two passes, and both report every problem at once: the structure is checked by
the strict models below, then each component table is checked by its own component's model
through the registry. Errors name the file, the key path and the nearest valid name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from workbench.components.params import (
    BatchSize,
    ComponentTable,
    Count,
    Epochs,
    KeyPath,
    StrictModel,
    bounded_int,
    validation_problems,
)

DatasetTable = ComponentTable.of("dataset")
OODDatasetTable = ComponentTable.of("ood_dataset")
BackboneTable = ComponentTable.of("backbone")
DefenseTable = ComponentTable.of("defense")
AttackTable = ComponentTable.of("attack")
MetricTable = ComponentTable.of("metric")
OODScoreTable = ComponentTable.of("ood_score")
EventSinkTable = ComponentTable.of("event_sink")
OODLossTable = ComponentTable.of("ood_loss")


RESERVED_NAMES = frozenset({"recipe.toml", "results.json", "run.json", "events.jsonl", "report.md", "figures",
                            "reconstructions", "ood_scores", "runs"})
"""Names that are files or folders of a run directory; variants, attacks and OOD sets may not take them."""


def _check_name(value: str) -> str:
    if value.lower() in RESERVED_NAMES:
        raise ValueError(f"{value!r} is a reserved name in a run directory; choose another")
    return value


Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_+\-]*$"),
                 AfterValidator(_check_name)]
"""One rule for every name that becomes a file or folder (variants, attacks, OOD sets): 1–64 letters,
digits, `_`, `+` or `-`, starting with a letter or digit (no dots, no path separators), not reserved."""


class OptimizerConfig(StrictModel):
    """The optimizer the papers use for this model."""

    name: Literal["adam", "sgd"] = "adam"
    """`adam`, or `sgd` (momentum, optionally Nesterov)."""
    lr: PositiveFloat = 1e-3
    """Learning rate."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    nesterov: bool = False
    """SGD with Nesterov momentum."""
    weight_decay: float = Field(0.0, ge=0)
    """L2 weight decay."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    """Adam's betas."""


class ScheduleConfig(StrictModel):
    """Learning-rate schedule, stepped once per epoch."""

    name: Literal["constant", "multistep"] = "constant"
    """`constant`, or `multistep` (multiply by `gamma` at each milestone epoch)."""
    milestones: list[Epochs] = []
    """Epochs after which the learning rate is multiplied by `gamma`."""
    gamma: PositiveFloat = 0.1
    """Decay factor at each milestone."""


class BalancedBatches(StrictModel):
    """Identity-balanced batches: `classes` classes × `per_class` images each (BiDO: 16 × 4)."""

    classes: Count = 16
    """Classes per batch."""
    per_class: Count = 4
    """Images per class in a batch."""


class TrainConfig(StrictModel):
    """How a classifier is trained. Every defense uses this same trainer."""

    epochs: Epochs = 30
    """Training epochs."""
    batch_size: BatchSize = 64
    """Mini-batch size (ignored when `balanced_batches` is set)."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """Optimizer settings."""
    schedule: ScheduleConfig = ScheduleConfig()
    """Learning-rate schedule."""
    balanced_batches: BalancedBatches | None = None
    """Identity-balanced sampling for many-class data; unset = shuffled batches."""
    grad_clip: PositiveFloat | None = None
    """Clip the gradient norm to this value; unset = no clipping."""
    sync_batchnorm: bool = True
    """Under torchrun on CUDA (DDP), BatchNorm statistics over the global batch (SyncBatchNorm), as one
    process would compute them; False = each rank's own slice. Gloo on the CPU cannot sync BatchNorm:
    there statistics are always per rank (said in the run's header). No effect in one process."""


class TargetConfig(StrictModel):
    """The classifier to defend."""

    backbone: BackboneTable = BackboneTable(use="mcnn")
    """Target backbone (kind `backbone`)."""
    train: TrainConfig = TrainConfig()
    """Training settings shared by every variant."""


WarmupEpochs = bounded_int(0, 100_000, "a number of epochs")


class OODTrainingConfig(StrictModel):
    """Unknown-aware training: auxiliary OOD data joins after a warm-up (BiDO+ with `bido`)."""

    dataset: OODDatasetTable
    """Auxiliary OOD data (kind `ood_dataset`); must be disjoint from the OOD test sets."""
    loss: OODLossTable = OODLossTable(use="entropy")
    """The OOD term (kind `ood_loss`): `entropy` (BiDO+ default: −γ Σ entropy), `energy` (energy
    margins), `oe` (cross-entropy to uniform), or a plugin's. A bare name is shorthand for `{ use = NAME }`."""
    batch_factor: PositiveFloat = 0.5
    """OOD batch size as a fraction of the ID batch size."""
    warmup_epochs: WarmupEpochs = 0
    """Epochs of plain training before the OOD term joins."""
    warmup_ood_forward: bool = True
    """During warm-up, pass each OOD batch through the model in training mode without gradients, as
    the authors' `OE_fit` does: BatchNorm's running statistics see the OOD data, and the `energy`
    loss estimates its margins from these passes. False: warm-up is plain training on ID data."""

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_shorthand(cls, value: Any) -> Any:
        return {"use": value} if isinstance(value, str) else value


class VariantConfig(StrictModel):
    """One trained target: a defense, optionally with unknown-aware (OOD) training."""

    name: Name
    """Variant name; also its folder in the run directory (`none`, `bido-hsic`, `bido-hsic+` ...)."""
    defense: DefenseTable = DefenseTable(use="none")
    """The defense (kind `defense`)."""
    ood_training: OODTrainingConfig | None = None
    """Auxiliary OOD data in training (BiDO+ / outlier exposure); unset = none."""


class EvaluationConfig(StrictModel):
    """The evaluation model E that judges reconstructions: trained once and cached by its config, or
    loaded from a local safetensors file (`weights_file`), as the papers' CelebA protocol does."""

    backbone: BackboneTable = BackboneTable(use="scnn")
    """E's backbone (kind `backbone`); with `weights_file`, the network the file's weights fit
    (BiDO's CelebA E: `facenet`, IR-50)."""
    train: TrainConfig = TrainConfig()
    """E's training settings; unused (and refused when set) with `weights_file`."""
    seed: int | None = None
    """E's own seed (its data split, initialisation and batches); unset = the run's `seed`. A sweep
    sets it to the recipe's seed so that every run is judged by one E, trained once."""
    weights_file: Path | None = None
    """E's weights from a local `.safetensors` file (a state dict of `backbone` built for the
    dataset's evaluation classes); E is then not trained. A relative path is taken from the working
    directory, like `data.root`; `~` is expanded. Pickles (`.pt`, `.pth`, `.tar`) are refused:
    convert them once (docs/attacks.md, "E from a file"). The file's SHA-256 is reported with the
    results and E's weights key the cached attack results. BiDO's CelebA E is the authors'
    `FaceNet_95.88.tar` (Defend_MI README), converted."""
    input_size: int | None = Field(None, ge=8, le=1024)
    """Side in pixels E sees: images are resized bilinearly (half-pixel centres, in float) from the
    data's size before E, for training and judging alike; unset = the data's size. BiDO's CelebA E:
    112 (`low2high`, 64 → 112 px, DefendMI `DMI/utils.py:304-316`; the reference resizes 8-bit
    PIL images (ToPILImage truncates to 8 bits, PIL rounds its output), so its inputs differ from
    these by up to 2/255 per pixel, a deviation)."""

    @field_validator("weights_file")
    @classmethod
    def _safetensors_only(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix.lower() != ".safetensors":
            raise ValueError(
                "expected a .safetensors file; E's weights are never read from a pickle (.pt, .pth, .tar): "
                "convert the checkpoint once with the snippet in docs/attacks.md, \"E from a file\""
            )
        return value

    @model_validator(mode="after")
    def _loaded_e_is_not_trained(self) -> EvaluationConfig:
        if self.weights_file is not None and self.train != TrainConfig():
            raise ValueError("`train` is set but E is loaded from `weights_file` and not trained; remove "
                             "the evaluation's `train` table or `weights_file`")
        return self


class OODEvaluationConfig(StrictModel):
    """How OOD detection is measured (ID positive, the BiDO+ convention)."""

    score: OODScoreTable = OODScoreTable(use="msp")
    """OOD score (kind `ood_score`); higher = more in-distribution."""
    test_sets: dict[Name, OODDatasetTable] = {}
    """OOD test sets by the name they get in results."""


class Recipe(StrictModel):
    """A whole experiment: data, target, variants, evaluation model, attacks, OOD evaluation."""

    title: str = ""
    """What this experiment is, shown in reports."""
    seed: int = Field(0, ge=0, lt=2**63)
    """Seed for data splits, initialisation and batching (0 ≤ seed < 2⁶³); runs are deterministic on CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` uses CUDA (with bf16 autocast) when present, else the CPU."""
    data: DatasetTable = DatasetTable(use="digits")
    """Private/public data (kind `dataset`)."""
    target: TargetConfig = TargetConfig()
    """The classifier to defend."""
    variants: list[VariantConfig] = Field(default_factory=lambda: [VariantConfig(name="none")], min_length=1)
    """The variants compared; each trains its own target."""
    metrics: list[MetricTable] = [MetricTable(use="accuracy")]
    """Metrics (kind `metric`): utility metrics judge each target, attack metrics each attack."""
    evaluation: EvaluationConfig | None = None
    """Evaluation model for attack metrics; required when `attacks` is set."""
    evaluators: dict[Name, EvaluationConfig] = {}
    """More evaluation models beside E, by the name their figures get (`top1@<name>`): other
    backbones, seeds or training, each trained once and cached like E. The attack metrics judge
    every reconstruction by all of them; `agreed_top1` counts a reconstruction only when E and every
    one of these assign it to its target (docs/attacks.md, "Several evaluators"). `E` is E's name."""
    attacks: dict[Name, AttackTable] = {}
    """Model-inversion attacks by the name they get in results (kind `attack`)."""
    ood: OODEvaluationConfig | None = None
    """OOD evaluation; unset = none."""
    sinks: list[EventSinkTable] = []
    """Event sinks (kind `event_sink`: `tensorboard`, `mlflow`...) that get every event of the run too;
    they never change a figure, so they are not part of the recipe hash."""

    @model_validator(mode="after")
    def _check_consistency(self) -> Recipe:
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(duplicates)}")
        if self.attacks and self.evaluation is None:
            raise ValueError("`attacks` needs an `[evaluation]` table (the model that judges reconstructions)")
        if self.evaluators and self.evaluation is None:
            raise ValueError("`evaluators` needs an `[evaluation]` table: E is always the first evaluator")
        for name in self.evaluators:
            if name.lower() in ("e", "pixel"):  # `top1@E` is E's figure, `nn_top1@pixel` pixel space's
                raise ValueError(f"`evaluators.{name}`: `E` and `pixel` name E and pixel space in the figures; "
                                 "choose another name")
        return self

    def component_tables(self) -> Iterator[tuple[KeyPath, ComponentTable]]:
        """Every component table with its key path, for validation and resolution."""
        yield from component_tables_in(self)

    def variant(self, name: str) -> VariantConfig:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


def component_tables_in(recipe: Recipe | dict[str, Any]) -> Iterator[tuple[KeyPath, Any]]:
    """Every component table of a recipe with its key path; on raw data (a recipe whose structure
    is wrong) the tables that are there, so their problems are reported with the structure's."""
    get = (lambda node, key, default=None: node.get(key, default)) if isinstance(recipe, dict) else (
        lambda node, key, default=None: getattr(node, key, default))

    def items(node: Any, key: str) -> list[Any]:
        value = get(node, key) if node is not None else None
        return list(value) if isinstance(value, list) else []

    def mapping(node: Any, key: str) -> dict[str, Any]:
        value = get(node, key) if node is not None else None
        return value if isinstance(value, dict) else {}

    target, evaluation, ood = get(recipe, "target"), get(recipe, "evaluation"), get(recipe, "ood")
    yield ("data",), get(recipe, "data")
    yield ("target", "backbone"), get(target, "backbone") if isinstance(target, (dict, TargetConfig)) else None
    for i, variant in enumerate(items(recipe, "variants")):
        if not isinstance(variant, (dict, VariantConfig)):
            continue
        yield ("variants", i, "defense"), get(variant, "defense")
        training = get(variant, "ood_training")
        if isinstance(training, (dict, OODTrainingConfig)):
            yield ("variants", i, "ood_training", "dataset"), get(training, "dataset")
            loss = get(training, "loss")
            yield ("variants", i, "ood_training", "loss"), {"use": loss} if isinstance(loss, str) else loss
    for i, metric in enumerate(items(recipe, "metrics")):
        yield ("metrics", i), metric
    if isinstance(evaluation, (dict, EvaluationConfig)):
        yield ("evaluation", "backbone"), get(evaluation, "backbone")
    for name, table in mapping(recipe, "evaluators").items():
        if isinstance(table, (dict, EvaluationConfig)):
            yield ("evaluators", name, "backbone"), get(table, "backbone")
    for name, attack in mapping(recipe, "attacks").items():
        yield ("attacks", name), attack
    if isinstance(ood, (dict, OODEvaluationConfig)):
        yield ("ood", "score"), get(ood, "score")
        for name, table in mapping(ood, "test_sets").items():
            yield ("ood", "test_sets", name), table
    for i, sink in enumerate(items(recipe, "sinks")):
        yield ("sinks", i), sink


COMPONENT_KINDS: dict[tuple[str | None, ...], str] = {
    ("data",): "dataset", ("target", "backbone"): "backbone", ("variants", None, "defense"): "defense",
    ("variants", None, "ood_training", "dataset"): "ood_dataset", ("variants", None, "ood_training", "loss"): "ood_loss",
    ("metrics", None): "metric", ("evaluation", "backbone"): "backbone",
    ("evaluators", None, "backbone"): "backbone", ("attacks", None): "attack",
    ("ood", "score"): "ood_score", ("ood", "test_sets", None): "ood_dataset", ("sinks", None): "event_sink",
}
"""The kind of the component at each key path (None: any index or name)."""


def kind_at(path: KeyPath) -> str:
    """The component kind at a key path of `component_tables_in` (names and indices are wildcards)."""
    named = {("attacks",): 1, ("evaluators",): 1, ("ood", "test_sets"): 2}  # where a user-chosen name sits in the path
    wild = {i for prefix, i in named.items() if path[: len(prefix)] == prefix}
    return COMPONENT_KINDS[tuple(None if isinstance(part, int) or i in wild else part for i, part in enumerate(path))]


def structure_problems(exc: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """A recipe's (or a sweep file's) structure errors, one line each, with "did you mean"."""
    return validation_problems(exc, (), model or Recipe)
