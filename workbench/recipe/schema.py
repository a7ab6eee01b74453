"""Recipes: one TOML file describes a whole experiment.

Loading is two passes, and both report every problem at once: the structure is checked by
the strict models below, then each component table is checked by its own component's model
through the registry. Errors name the file, the key path and the nearest valid name.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import tomlkit
import tomllib
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
    format_path,
    table_types,
    validation_problems,
)
from workbench.components.registry import KINDS
from workbench.errors import RecipeError

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


# ------------------------------------------------------------------ loading


def structure_problems(exc: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """A recipe's (or a sweep file's) structure errors, one line each, with "did you mean"."""
    return validation_problems(exc, (), model or Recipe)


MAX_RECIPE_BYTES = 1_000_000
"""A recipe is a small text file; anything larger is not one (and is not read into memory)."""


def _not_a_recipe_file(path: Path) -> str | None:
    """Why `path` cannot be a recipe (a device, a FIFO, a folder, a huge file), or None."""
    import stat

    try:
        mode, size = path.stat().st_mode, path.stat().st_size
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a folder, not a recipe file; expected a TOML file"
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        return f"is {kind}, not a recipe file; expected a TOML file"
    if size > MAX_RECIPE_BYTES:
        return f"is {size:,} bytes; a recipe is a small TOML file (at most {MAX_RECIPE_BYTES:,} bytes)"
    return None


MAX_DEPTH = 32
"""How deeply tables and arrays may nest in a recipe (the shipped ones nest 5 deep); deeper is not a
recipe, and reading or checking it would exhaust Python's recursion limit (a traceback, not a line)."""


def nesting_problem(raw: Any, limit: int = MAX_DEPTH) -> str | None:
    """Where `raw` nests tables or arrays more than `limit` deep, as one line; None when it does not.
    Walks with an explicit stack, so no depth of input can overflow it."""
    stack: list[tuple[Any, KeyPath]] = [(raw, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > limit:
            shown = format_path(path[:4])
            return f"{shown}...: tables or arrays nested more than {limit} levels deep; a recipe nests a few levels"
        if isinstance(node, dict):
            stack.extend((value, (*path, str(key))) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, (*path, i)) for i, value in enumerate(node))
    return None


def _loads(text: str) -> Any:
    """`tomllib.loads`, with nesting deep enough to exhaust the recursion limit as a TOMLDecodeError."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError(f"tables or arrays nested too deeply (a recipe nests at most {MAX_DEPTH} "
                                      "levels)") from None


def parse_toml(path: Path) -> dict[str, Any]:
    """The raw TOML of a recipe file, or a RecipeError naming the file and the line."""
    path = Path(path)
    not_a_file = _not_a_recipe_file(path)  # /dev/zero or a FIFO would hang read_text
    if not_a_file:
        raise RecipeError(str(path), [not_a_file])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(str(path), [f"cannot read: {exc}"]) from None
    try:
        raw = _loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [f"malformed TOML: {exc}"]) from None
    too_deep = nesting_problem(raw)
    if too_deep:
        raise RecipeError(str(path), [too_deep])
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply `key.path=value` overrides (value parsed as TOML, else taken as a string).

    List items are addressed by index or, for variants, by name: `variants.bido-hsic.defense.lambda_x`.
    """
    too_deep = nesting_problem(raw)  # deepcopy below recurses
    if too_deep:
        raise RecipeError(source, [too_deep])
    raw = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"{item!r}: expected key.path=value")
            continue
        try:
            value = _loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        parts = key.strip().split(".")
        if len(parts) > MAX_DEPTH or nesting_problem(value, MAX_DEPTH - len(parts)):
            shown = key if len(key) <= 60 else key[:60] + "..."
            problems.append(f"{shown}: nested more than {MAX_DEPTH} levels deep; a recipe nests a few levels")
            continue
        node: Any = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                index = _list_index(node, part)
                if index is None:
                    problems.append(f"{key}: no item {part!r} in {'.'.join(parts[:i]) or 'recipe'}")
                    break
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                problems.append(f"{key}: {'.'.join(parts[:i])} is a value, not a table")
                break
    if problems:
        raise RecipeError(source, problems)
    return raw


def _list_index(items: list, part: str) -> int | None:
    if part.lstrip("-").isdigit():
        index = int(part)
        return index if -len(items) <= index < len(items) else None
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    return None


def validate_raw(raw: dict[str, Any], source: str, registry=None) -> Recipe:
    """Check the structure and every component; a RecipeError lists all problems at once (a wrong
    top-level key does not hide a wrong component param)."""
    if registry is None:
        from workbench import load_registry

        registry = load_registry()
    too_deep = nesting_problem(raw)
    if too_deep:
        raise RecipeError(source, [too_deep])
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = structure_problems(exc)
        for where, table in component_tables_in(raw):
            if isinstance(table, dict) and isinstance(table.get("use"), str):
                problems += registry.validate(kind_at(where), table, where)
        raise RecipeError(source, list(dict.fromkeys(problems))) from None
    problems = []
    for where, table in recipe.component_tables():
        problems += registry.validate(table.kind, table, where)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def load_recipe(path: Path | str, overrides: list[str] | None = None, registry=None) -> Recipe:
    """Read, override and validate a recipe file."""
    raw = parse_toml(Path(path))
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate_raw(raw, str(path), registry)


# ------------------------------------------------------------------ resolving and writing


def resolve(recipe: Recipe, registry) -> dict[str, Any]:
    """The recipe as plain data with every default filled in, components included."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    if not data.get("sinks"):
        data.pop("sinks", None)  # recipes without sinks resolve (and hash) as before sinks existed
    if not data.get("evaluators"):
        data.pop("evaluators", None)  # likewise recipes with E alone

    def put(where: KeyPath, value: dict[str, Any]) -> None:
        node: Any = data
        for part in where[:-1]:
            node = node[part]
        node[where[-1]] = value

    for where, table in recipe.component_tables():
        put(where, registry.resolve(table.kind, table))
    return data


def recipe_hash(resolved: dict[str, Any]) -> str:
    """A short stable hash of a resolved recipe (what a run directory belongs to). Event sinks are
    left out: they change no figure, and a run resumes with other sinks."""
    resolved = {k: v for k, v in resolved.items() if k != "sinks"}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def to_toml(data: dict[str, Any], header: str = "") -> str:
    """Plain recipe data as TOML text (tomlkit keeps key order and nests tables readably)."""
    document = tomlkit.document()
    if header:
        for line in header.strip().splitlines():
            document.add(tomlkit.comment(line.lstrip("# ").rstrip()))
        document.add(tomlkit.nl())
    for key, value in data.items():
        document[key] = _toml_value(value)
    return tomlkit.dumps(document)


def _toml_value(value: Any) -> Any:
    if isinstance(value, dict):
        table = tomlkit.table()
        for k, v in value.items():
            table[k] = _toml_value(v)
        return table
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        array = tomlkit.aot()
        for v in value:
            array.append(_toml_value(v))
        return array
    return value


def update_toml_text(text: str, data: dict[str, Any]) -> str:
    """Write `data` into an existing TOML text, keeping its comments and key order."""
    document = tomlkit.parse(text)
    _merge(document, data)
    return tomlkit.dumps(document)


def _merge(container: Any, data: dict[str, Any]) -> None:
    for key in list(container.keys()):
        if key not in data:
            del container[key]
    for key, value in data.items():
        current = container.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value)
        else:
            container[key] = _toml_value(value)


def json_schema(registry) -> dict[str, Any]:
    """JSON Schema of recipes for editors, with each component table narrowed to its kind's names
    and params (nested component tables too, such as a defense's dependency measure)."""
    schema = Recipe.model_json_schema()
    defs = schema.setdefault("$defs", {})
    options_by_kind: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        options = options_by_kind.setdefault(kind, [])
        for component in registry.components(kind):
            params = component.params.model_json_schema(ref_template="#/$defs/{model}")
            for sub_name, sub_def in params.pop("$defs", {}).items():
                defs.setdefault(sub_name, sub_def)
            properties = {"use": {"const": component.name, "description": component.summary}}
            properties.update(params.get("properties", {}))
            options.append({
                "title": component.name,
                "type": "object",
                "properties": properties,
                "required": ["use", *params.get("required", [])],
                "additionalProperties": False,
            })
    for table_type in table_types():
        if table_type.__name__ in defs and options_by_kind.get(table_type.kind):
            description = defs[table_type.__name__].get("description", "")
            defs[table_type.__name__] = {"description": description, "oneOf": options_by_kind[table_type.kind]}
    return schema
