"""Event sinks: TensorBoard and MLflow hold what results.json and events.jsonl hold, live and after the
fact, and a sink that fails never stops the run."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from workbench.api import NoParams, hookimpl
from workbench.components.registry import load_registry
from workbench.recipe.load import load_recipe, recipe_hash, resolve
from workbench.running.runner import RunOptions, run_recipe
from workbench.storage.events import read_events
from workbench.storage.sinks import EventSinks, export_run, replay, sink_tables
from workbench.testing import TINY_RECIPE

pytest.importorskip("tbparse")
pytest.importorskip("mlflow")

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore::DeprecationWarning"
    ),  # SQLAlchemy inside MLflow, pandas inside tbparse
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:The inplace keyword:Warning"),
]

TWO_EPOCHS = TINY_RECIPE.replace("epochs = 5", "epochs = 2")

# Two variants trained in two worker processes (their events reach the sinks through the parent),
# utility, OOD and one attack: every kind of figure a sink turns into scalars and images.
LIVE_RECIPE = (
    TWO_EPOCHS
    + """
[[variants]]
name = "bido-hsic+"
defense = { use = "bido", lambda_x = 0.05, lambda_y = 0.5, measure = { use = "hsic" } }

[[metrics]]
use = "accuracy"

[[metrics]]
use = "attack-accuracy"

[evaluation.backbone]
use = "scnn"
width = 8

[evaluation.train]
epochs = 2

[attacks.gmi]
use = "gmi"
gan_steps = 3
critic_iters = 1
iterations = 3
samples_per_class = 2

[ood]
score = { use = "msp" }
[ood.test_sets]
noise = { use = "noise", role = "test" }

[[sinks]]
use = "tensorboard"

[[sinks]]
use = "mlflow"
experiment = "sinks-test"
"""
)


# ------------------------------------------------------------------ readers


def tb_scalars(root: Path) -> dict[tuple[str, str, int], float]:
    """(folder, tag, step) -> value of every scalar under a TensorBoard log directory (tbparse)."""
    from tbparse import SummaryReader

    frame = SummaryReader(str(root), extra_columns={"dir_name"}).scalars
    return {(r.dir_name, r.tag, int(r.step)): float(r.value) for r in frame.itertuples()}


def tb_hparams(root: Path) -> dict[str, dict[str, object]]:
    from tbparse import SummaryReader

    frame = SummaryReader(str(root), extra_columns={"dir_name"}).hparams
    found: dict[str, dict[str, object]] = {}
    for r in frame.itertuples():
        found.setdefault(r.dir_name, {})[r.tag] = r.value
    return found


def tb_images(folder: Path) -> dict[str, tuple[int, int]]:
    """tag -> (width, height) of the images in one log folder (tbparse needs TensorFlow for images)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0})
    accumulator.Reload()
    return {
        tag: (accumulator.Images(tag)[-1].width, accumulator.Images(tag)[-1].height)
        for tag in accumulator.Tags()["images"]
    }


def mlflow_runs(store: Path, experiment: str = "sinks-test"):
    """(client, {run name: run}) of the local store a sink wrote."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {store}"
    return client, {run.info.run_name: run for run in client.search_runs([found.experiment_id])}


def mlflow_history(client, run) -> dict[tuple[str, int], tuple[float, int]]:
    """(key, step) -> (value, timestamp) of every metric of a run."""
    history = {}
    for key in run.data.metrics:
        for metric in client.get_metric_history(run.info.run_id, key):
            history[(key, metric.step)] = (metric.value, metric.timestamp)
    return history


def result_figures(variant: dict) -> dict[str, float]:
    """A variant's figures in results.json under the names the sinks give them (written here
    independently of the plugin's own mapping)."""
    figures = {f"utility/{k}": v for k, v in variant["utility"].items()}
    figures.update({f"ood/mean/{k}": v for k, v in variant["ood"]["mean"].items()})
    for name, values in variant["ood"]["sets"].items():
        figures.update({f"ood/{name}/{k}": v for k, v in values.items()})
    for attack, values in variant["attacks"].items():
        figures.update({f"attacks/{attack}/{k}": v for k, v in values.items() if not isinstance(v, bool)})
    return figures


# ------------------------------------------------------------------ a live run with both sinks


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One run of LIVE_RECIPE with the tensorboard and mlflow sinks of its [[sinks]]."""
    root = tmp_path_factory.mktemp("live")
    recipe = root / "recipe.toml"
    recipe.write_text(LIVE_RECIPE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_CACHE_DIR", str(root / "cache"))
        run_dir, results = run_recipe(
            RunOptions(recipe=recipe, run_dir=root / "run", cache_dir=root / "cache", workers=2)
        )
    return run_dir, results, list(read_events(run_dir))


@pytest.mark.slow
def test_tensorboard_holds_every_epoch_figure_result_and_grid(live):
    run_dir, results, events = live
    assert events[-1]["type"] == "run_finished"
    assert not [e for e in events if e["type"] == "log" and e["level"] == "warning"]
    scalars = tb_scalars(run_dir / "tensorboard")
    variants = [v["name"] for v in results["variants"]]
    assert {folder for folder, _, _ in scalars} == {"_run", *variants}
    # Every per-epoch figure (losses, d(X,Z_j), d(Z_j,Y) per layer, accuracies) at its epoch.
    epochs = [e for e in events if e["type"] == "epoch" and e["variant"] in variants]
    assert len(epochs) == 2 * len(variants)
    assert any("dep_x/0" in e["metrics"] and "dep_y/2" in e["metrics"] for e in epochs)
    for event in epochs:
        for key, value in event["metrics"].items():
            got = scalars[(event["variant"], f"train/{key}", event["epoch"])]
            assert got == pytest.approx(value, rel=1e-6, abs=1e-7), key
    # The evaluation model's training and figures belong to the run as a whole.
    e_epochs = [e for e in events if e["type"] == "epoch" and e["variant"] == "evaluation-model"]
    for event in e_epochs:
        assert scalars[("_run", "evaluation-model/train/loss", event["epoch"])] == pytest.approx(
            event["metrics"]["loss"], rel=1e-6
        )
    assert scalars[("_run", "evaluation_model/test_accuracy", 0)] == pytest.approx(
        results["evaluation_model"]["test_accuracy"], rel=1e-6
    )
    # Final figures: utility, OOD (mean and per set) and attack, as results.json has them.
    for variant in results["variants"]:
        figures = result_figures(variant)
        assert {"utility/test_accuracy", "ood/noise/auroc", "ood/mean/fpr95", "attacks/gmi/top1"} <= set(
            figures
        )
        for tag, value in figures.items():
            assert scalars[(variant["name"], tag, 0)] == pytest.approx(value, rel=1e-6, abs=1e-7), tag
        # Reconstruction grid and OOD histogram as images, the size of the PNGs in the run directory.
        from PIL import Image

        images = tb_images(run_dir / "tensorboard" / variant["name"])
        with Image.open(run_dir / variant["name"] / "reconstructions" / "gmi.png") as grid:
            assert images["reconstructions/gmi"] == grid.size
        assert "ood/histogram" in images


@pytest.mark.slow
def test_tensorboard_hparams_compare_variants(live):
    run_dir, results, _ = live
    hparams = tb_hparams(run_dir / "tensorboard")
    assert set(hparams) == {v["name"] for v in results["variants"]}
    assert hparams["none"]["variant.defense.use"] == "none"
    assert hparams["bido-hsic+"]["variant.defense.use"] == "bido"
    assert hparams["bido-hsic+"]["variant.defense.lambda_y"] == pytest.approx(0.5)
    assert hparams["bido-hsic+"]["seed"] == 0 and hparams["none"]["target.train.epochs"] == 2


@pytest.mark.slow
def test_mlflow_holds_params_metrics_and_artifacts(live):
    run_dir, results, events = live
    client, runs = mlflow_runs(run_dir / "mlflow")
    parent = runs[run_dir.name]
    assert set(runs) == {run_dir.name, "none", "bido-hsic+"}
    assert (
        parent.info.status == "FINISHED"
        and parent.data.tags["workbench.recipe_hash"] == results["recipe_hash"]
    )
    # Params: the resolved recipe flattened (variants by name on the parent, its own on a nested run).
    recipe = resolve(load_recipe(run_dir / "recipe.toml", registry=load_registry()), load_registry())
    assert parent.data.params["seed"] == "0"
    assert parent.data.params["target.train.epochs"] == str(recipe["target"]["train"]["epochs"])
    assert parent.data.params["variants.bido-hsic_.defense.lambda_x"] == "0.05"  # `+` is not a key character
    for variant in results["variants"]:
        run = runs[variant["name"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert run.data.params["variant.defense.use"] == ("none" if variant["name"] == "none" else "bido")
        history = mlflow_history(client, run)
        for event in (e for e in events if e["type"] == "epoch" and e["variant"] == variant["name"]):
            for key, value in event["metrics"].items():
                assert history[(f"train/{key}", event["epoch"])][0] == pytest.approx(value, rel=1e-12)
                assert history[(f"train/{key}", event["epoch"])][1] == round(event["t"] * 1000)
        for tag, value in result_figures(variant).items():
            assert run.data.metrics[tag] == pytest.approx(value, rel=1e-12), tag
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"results.json", "ood_histogram.png", "reconstructions"} <= artifacts
        assert [a.path for a in client.list_artifacts(run.info.run_id, "reconstructions")] == [
            "reconstructions/gmi.nearest.png", "reconstructions/gmi.png"
        ]
    assert {"report.md", "results.json", "recipe.toml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    stored = Path(urlparse(parent.info.artifact_uri).path) / "results.json"
    assert (
        stored.is_relative_to(run_dir / "mlflow" / "artifacts") and json.loads(stored.read_text()) == results
    )
    # Nothing outside the run directory: the store and its artifacts live in RUN/mlflow.
    assert (run_dir / "mlflow" / "artifacts").is_dir() and not (Path.cwd() / "mlruns").exists()


@pytest.mark.slow
def test_export_of_the_finished_run_gives_what_the_live_sinks_gave(live, tmp_path, monkeypatch, capsys):
    run_dir, results, _ = live
    code, out, err = invoke(
        monkeypatch, capsys, "export", str(run_dir), "--sink", "tensorboard", "--to", str(tmp_path / "tb")
    )
    assert code == 0, err
    assert tb_scalars(tmp_path / "tb") == tb_scalars(run_dir / "tensorboard")
    assert tb_hparams(tmp_path / "tb") == tb_hparams(run_dir / "tensorboard")
    assert tb_images(tmp_path / "tb" / "none") == tb_images(run_dir / "tensorboard" / "none")
    # The default place is the live sink's: never written twice.
    code, _, err = invoke(monkeypatch, capsys, "export", str(run_dir), "--sink", "tensorboard")
    assert code != 0 and "already exists and is not empty" in one_line(err)

    # MLflow, from a copy of the run laid out as a sweep's run: same metrics, plus the sweep tags.
    sweep = tmp_path / "sweep-7"
    copy = sweep / "runs" / "lambda_y=0.5-s0"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("mlflow", "tensorboard"))
    (sweep / "sweep.toml").write_text("seeds = [0]\n")
    target, count = export_run(load_registry(), copy, "mlflow")
    assert target == copy.resolve() / "mlflow" and count == len(list(read_events(run_dir)))
    live_client, live_runs = mlflow_runs(run_dir / "mlflow")
    client, runs = mlflow_runs(copy / "mlflow")
    assert set(runs) == {copy.name, "none", "bido-hsic+"}
    for name in ("none", "bido-hsic+"):
        assert mlflow_history(client, runs[name]) == mlflow_history(live_client, live_runs[name])
        assert runs[name].data.params == live_runs[name].data.params
        assert runs[name].data.tags["workbench.sweep"] == "sweep-7"
        assert runs[name].data.tags["workbench.sweep_point"] == "lambda_y=0.5"
    assert mlflow_history(client, runs[copy.name]) == mlflow_history(live_client, live_runs[run_dir.name])


def synthetic_run(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The events of a run interrupted after epoch 1 and resumed to the end (two segments)."""
    run_dir.mkdir()
    (run_dir / "recipe.toml").write_text('title = "t"\nseed = 0\n\n[[variants]]\nname = "none"\n')
    (run_dir / "results.json").write_text(
        json.dumps({"variants": [{"name": "none", "utility": {"test_accuracy": 0.9}}]})
    )
    first = [
        {
            "t": 1000.0,
            "type": "run_started",
            "variants": ["none"],
            "resumed": False,
            "recipe_hash": "h",
            "seed": 0,
        },
        {
            "t": 1001.0,
            "type": "epoch",
            "stage": "train",
            "variant": "none",
            "epoch": 1,
            "epochs": 2,
            "metrics": {"loss": 1.0, "dep_x/0": None},
        },
        {"t": 1002.0, "type": "run_interrupted", "message": "stopped"},
    ]
    second = [
        {
            "t": 2000.0,
            "type": "run_started",
            "variants": ["none"],
            "resumed": True,
            "recipe_hash": "h",
            "seed": 0,
        },
        {
            "t": 2001.0,
            "type": "epoch",
            "stage": "train",
            "variant": "none",
            "epoch": 2,
            "epochs": 2,
            "metrics": {"loss": 0.5},
        },
        {
            "t": 2002.0,
            "type": "result",
            "variant": "none",
            "section": "utility",
            "figures": {"test_accuracy": 0.9},
        },
        {"t": 2003.0, "type": "run_finished", "seconds": 3.0},
    ]
    with (run_dir / "events.jsonl").open("w") as handle:
        handle.writelines(json.dumps(e) + "\n" for e in first + second)
    return first, second


@pytest.mark.slow
def test_mlflow_resumed_run_continues_its_runs_live_and_in_export(tmp_path):
    import tomllib

    run_dir = tmp_path / "run"
    first, second = synthetic_run(run_dir)
    recipe = tomllib.loads((run_dir / "recipe.toml").read_text())
    registry = load_registry()
    for segment in (first, second):  # two processes: the run, then `--resume`
        sink = registry.create("event_sink", "mlflow", experiment="sinks-test")
        sink.open(run_dir, recipe)
        for event in segment:
            sink.write(event)
        sink.close()
    client, runs = mlflow_runs(run_dir / "mlflow")
    assert set(runs) == {"run", "none"} and {r.info.status for r in runs.values()} == {"FINISHED"}
    expected = {
        ("train/loss", 1): (1.0, 1001000),
        ("train/loss", 2): (0.5, 2001000),
        ("utility/test_accuracy", 0): (0.9, 2002000),
    }
    assert mlflow_history(client, runs["none"]) == expected
    export_run(registry, run_dir, "mlflow", tmp_path / "exported")
    client, exported = mlflow_runs(tmp_path / "exported", "t")  # the title: the recipe names no mlflow sink
    assert set(exported) == {"run", "none"} and exported["run"].info.status == "FINISHED"
    assert mlflow_history(client, exported["none"]) == expected


# ------------------------------------------------------------------ failing sinks never stop a run


def warnings_of(run_dir: Path) -> list[str]:
    return [e["message"] for e in read_events(run_dir) if e["type"] == "log" and e["level"] == "warning"]


def assert_complete(run_dir: Path, epochs: int = 2) -> None:
    events = list(read_events(run_dir))
    types = [e["type"] for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert sum(e["type"] == "epoch" and e["variant"] == "none" for e in events) == epochs
    assert json.loads((run_dir / "results.json").read_text())["variants"][0]["utility"]["test_accuracy"] > 0


@pytest.mark.slow
def test_missing_packages_give_one_warning_naming_the_extra(run_tiny_recipe, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    run_dir, _ = run_tiny_recipe(TWO_EPOCHS, sinks=["tensorboard", "mlflow"])
    assert_complete(run_dir)
    messages = warnings_of(run_dir) + capsys.readouterr().err.strip().splitlines()
    tensorboard = [m for m in messages if "'tensorboard'" in m]
    mlflow = [m for m in messages if "'mlflow'" in m]
    assert len(tensorboard) == 1 and "pip install 'workbench-mi[tensorboard]'" in tensorboard[0]
    assert len(mlflow) == 1 and "pip install 'workbench-mi[mlflow]'" in mlflow[0]


@pytest.mark.slow
def test_unwritable_directory_and_refusing_server_give_a_warning_and_the_run_goes_on(
    run_tiny_recipe, tmp_path, capsys
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe = (
        TWO_EPOCHS
        + f"""
[[sinks]]
use = "tensorboard"
directory = "{blocker / "tb"}"

[[sinks]]
use = "mlflow"
tracking_uri = "http://127.0.0.1:9"
http_retries = 0
"""
    )
    run_dir, _ = run_tiny_recipe(recipe)
    assert_complete(run_dir)
    messages = warnings_of(run_dir) + capsys.readouterr().err.strip().splitlines()
    assert len([m for m in messages if "event sink 'tensorboard' failed in open" in m]) == 1
    assert len([m for m in messages if "event sink 'mlflow' failed" in m]) == 1


class Broken:
    """A sink that raises on the first epoch event."""

    def __init__(self, params):
        self.seen: list[str] = []

    def open(self, run_dir, recipe):
        pass

    def write(self, event):
        if event["type"] == "epoch":
            raise RuntimeError("disk full\nsecond line")

    def close(self):
        pass


class Stuck(Broken):
    """A sink that hangs on its first event (a tracking server that never answers)."""

    release = threading.Event()

    def write(self, event):
        self.release.wait(30)


class Recorder(Broken):
    """A sink that keeps what it is given."""

    seen_by_all: list[dict] = []

    def write(self, event):
        self.seen_by_all.append(event)

    def close(self):
        self.seen_by_all.append({"type": "closed"})


class TestSinks:
    @hookimpl
    def register_event_sinks(self, register):
        register("broken", Broken)
        register("stuck", Stuck)
        register("recorder", Recorder)


def test_a_sink_that_raises_is_dropped_and_the_others_go_on(run_tiny_recipe, register_plugin, tmp_path):
    register_plugin(TestSinks(), "test-sinks")
    Recorder.seen_by_all.clear()
    run_dir, _ = run_tiny_recipe(TWO_EPOCHS + '\n[[sinks]]\nuse = "broken"\n', sinks=["recorder", "broken"])
    assert_complete(run_dir)
    messages = warnings_of(run_dir)
    assert messages == [
        "event sink 'broken' failed in write (epoch event) and was dropped: RuntimeError: disk full"
    ]
    # The recorder saw every event of events.jsonl, in order (the warning included), then was closed.
    written = list(read_events(run_dir))
    assert Recorder.seen_by_all[:-1] == written and Recorder.seen_by_all[-1] == {"type": "closed"}


LOCAL_PLUGIN = """
from workbench.api import hookimpl


class Broken:
    def __init__(self, params):
        pass

    def open(self, run_dir, recipe):
        pass

    def write(self, event):
        if event["type"] == "epoch":
            raise RuntimeError("disk full")

    def close(self):
        pass


@hookimpl
def register_event_sinks(register):
    register("broken-on-epoch", Broken)
"""


@pytest.mark.slow
def test_a_sink_failing_on_a_worker_event_is_reported_once(run_tiny_recipe, tmp_path, capsys):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken_sink.py").write_text(LOCAL_PLUGIN)
    two_variants = TWO_EPOCHS + '\n[[variants]]\nname = "mid"\ndefense = { use = "mid", beta = 0.01 }\n'
    run_dir, _ = run_tiny_recipe(two_variants, sinks=["broken-on-epoch"], plugins_dir=plugins, workers=2)
    assert_complete(run_dir)
    events = list(read_events(run_dir))
    assert sum(e["type"] == "epoch" for e in events) == 4  # both variants, trained in the workers
    # In events.jsonl when the parent emits again before the run ends, else on stderr; once.
    messages = warnings_of(run_dir) + capsys.readouterr().err.replace("warning: ", "").strip().splitlines()
    assert messages == [
        "event sink 'broken-on-epoch' failed in write (epoch event) and was dropped: RuntimeError: disk full"
    ]


@pytest.mark.slow
def test_a_sink_that_hangs_never_holds_the_run(run_tiny_recipe, register_plugin, monkeypatch, capsys):
    register_plugin(TestSinks(), "test-sinks")
    monkeypatch.setenv("WORKBENCH_SINK_TIMEOUT", "0.5")
    try:
        run_dir, _ = run_tiny_recipe(TWO_EPOCHS, sinks=["stuck"])
    finally:
        Stuck.release.set()
    assert_complete(run_dir)
    err = capsys.readouterr().err
    assert "event sink 'stuck' still writing after 0.5 s" in err


def test_event_sinks_keep_order_and_report_on_the_writer(tmp_path):
    from workbench.storage.events import EventWriter

    Recorder.seen_by_all.clear()
    writer = EventWriter(tmp_path)

    class FailsToOpen(Broken):
        def open(self, run_dir, recipe):
            raise OSError(f"{run_dir}: read-only file system")

    sinks = EventSinks(
        [("recorder", Recorder(None)), ("ro", FailsToOpen(None))], tmp_path, {}, emit=writer.emit
    )
    writer.listeners.append(sinks)
    for i in range(200):
        writer.emit("progress", stage="s", step=i)
        time.sleep(0.01 if i < 20 else 0)
    writer.emit("run_finished", seconds=1.0)
    writer.close()
    assert sinks.closed and sinks.names == ["recorder"]
    events = list(read_events(tmp_path))
    assert Recorder.seen_by_all[:-1] == events and events[-1]["type"] == "run_finished"
    assert [e["message"] for e in events if e["type"] == "log"] == [
        f"event sink 'ro' failed in open and was dropped: OSError: {tmp_path}: read-only file system"
    ]


# ------------------------------------------------------------------ recipes and the command line


def test_recipe_sinks_are_validated_and_stay_out_of_the_hash(tmp_path):
    registry = load_registry()
    plain = tmp_path / "plain.toml"
    plain.write_text(TWO_EPOCHS)
    with_sinks = tmp_path / "sinks.toml"
    with_sinks.write_text(
        TWO_EPOCHS + '\n[[sinks]]\nuse = "tensorboard"\n\n[[sinks]]\nuse = "mlflow"\nexperiment = "x"\n'
    )
    resolved = resolve(load_recipe(with_sinks, registry=registry), registry)
    assert resolved["sinks"][0] == {"use": "tensorboard", "progress": True, "flush_seconds": 10.0}
    assert resolved["sinks"][1]["experiment"] == "x"
    assert recipe_hash(resolved) == recipe_hash(resolve(load_recipe(plain, registry=registry), registry))
    assert "sinks" not in resolve(load_recipe(plain, registry=registry), registry)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        TWO_EPOCHS + '\n[[sinks]]\nuse = "tensorbord"\n\n[[sinks]]\nuse = "mlflow"\nexperimnt = "x"\n'
    )
    from workbench.errors import RecipeError

    with pytest.raises(RecipeError) as caught:
        load_recipe(bad, registry=registry)
    assert any("sinks[0].use" in p and 'did you mean "tensorboard"' in p for p in caught.value.problems)
    assert any("sinks[1]" in p and "experimnt" in p for p in caught.value.problems)
    # --sink adds a default table unless the recipe names that sink already (with its params).
    tables = sink_tables(load_recipe(with_sinks, registry=registry).sinks, ["mlflow", "tensorboard", "x"])
    assert [t.use for t in tables] == ["tensorboard", "mlflow", "x"] and tables[1].params == {
        "experiment": "x"
    }


def invoke(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from workbench.cli import main

    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_cli_user_errors_are_one_line(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(TWO_EPOCHS)
    code, _, err = invoke(
        monkeypatch, capsys, "run", str(recipe), "--run-dir", str(tmp_path / "run"), "--sink", "tensorbaord"
    )
    assert code != 0 and 'did you mean "tensorboard"' in one_line(err)
    assert not (tmp_path / "run").exists()
    code, _, err = invoke(monkeypatch, capsys, "export", str(tmp_path), "--sink", "tensorboard")
    assert code != 0 and "not a run directory" in one_line(err)


@pytest.mark.slow
def test_sweep_sink_reaches_every_run_with_its_grid_point(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tmp_path / "r.toml"
    recipe.write_text(TWO_EPOCHS)
    code, _, err = invoke(
        monkeypatch,
        capsys,
        "run",
        str(recipe),
        "--seeds",
        "0-1",
        "--run-dir",
        str(tmp_path / "sweep-a"),
        "--sink",
        "tensorboard",
        "--quiet",
    )
    assert code == 0, err
    runs = sorted(p for p in (tmp_path / "sweep-a" / "runs").iterdir() if p.is_dir())
    assert len(runs) == 2
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        hparams = tb_hparams(run / "tensorboard")["none"]
        assert hparams["sweep.sweep"] == "sweep-a" and hparams["sweep.point"] == run.name.rsplit("-s", 1)[0]
        assert hparams["seed"] == results["seed"]
        scalars = tb_scalars(run / "tensorboard")
        assert scalars[("none", "utility/test_accuracy", 0)] == pytest.approx(
            results["variants"][0]["utility"]["test_accuracy"], rel=1e-6
        )


@pytest.mark.slow
def test_core_and_builtin_sinks_import_without_tensorboard_or_mlflow():
    import subprocess

    code = (
        "import sys, workbench.running.runner, workbench.storage.sinks, workbench.cli.main\n"
        "from workbench import load_registry\n"
        "registry = load_registry()\n"
        "registry.create('event_sink', 'tensorboard'); registry.create('event_sink', 'mlflow')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard', 'tbparse')\n"
        "             or m.startswith('torch.utils.tensorboard')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_replay_reports_a_failing_sink_as_an_error(tmp_path):
    from workbench.errors import WorkbenchError
    from workbench.storage.events import EventWriter

    (tmp_path / "recipe.toml").write_text(TWO_EPOCHS)
    with EventWriter(tmp_path) as writer:
        writer.emit("run_started", variants=["none"])
        writer.emit("epoch", stage="train", variant="none", epoch=1, epochs=1, metrics={"loss": 1.0})
    with pytest.raises(WorkbenchError, match="event sink 'broken' failed: RuntimeError: disk full$"):
        replay(tmp_path, [("broken", Broken(NoParams()))])


def test_a_sweeps_sinks_travel_in_its_run_jobs_not_the_environment(tmp_path, monkeypatch):
    """A sweep's `--sink` reaches a run job wherever an executor runs it: in the job's options (a
    Slurm task or Ray worker does not share this process's environment), never through os.environ."""
    import os

    from workbench.api import Job
    from workbench.running.jobs import execute

    recipe = tmp_path / "r.toml"
    recipe.write_text(TWO_EPOCHS)

    def ours() -> dict[str, str]:  # torch and TensorBoard set variables of their own on import
        return {k: v for k, v in os.environ.items() if k.startswith("WORKBENCH")}

    before = ours()
    job = Job(kind="run", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), threads=1,
              options={"recipe": str(recipe), "overrides": [], "sinks": ["tensorboard"]})
    assert execute(job) == str(tmp_path / "run")
    assert tb_hparams(tmp_path / "run" / "tensorboard")["none"]  # the sink wrote the run's hparams
    assert ours() == before


@pytest.mark.slow
def test_sink_targets_that_disappear_mid_run_warn_once_and_export_writes_them_whole(tmp_path, monkeypatch, capsys):
    """The MLflow store deleted after the sink wrote the first epoch, the TensorBoard directory made
    read-only once its run-level writer is open (a variant's folder cannot be made then): one warning
    per sink, the run finishes, and `workbench export` of that run afterwards writes what the live
    sinks of an undisturbed run of the same recipe wrote (figures, steps, params, hparams, images).
    Each fault is made in the sink's own thread, right after it handled that event."""
    import contextlib

    from test_faults import read_only
    from workbench_sinks.mlflow_sink import MLflowSink
    from workbench_sinks.tensorboard_sink import TensorBoardSink

    recipe = TWO_EPOCHS + '\n[[sinks]]\nuse = "tensorboard"\n\n[[sinks]]\nuse = "mlflow"\nexperiment = "sinks-test"\n'

    def run(root: Path) -> Path:
        root.mkdir()
        (root / "recipe.toml").write_text(recipe)
        run_dir, _ = run_recipe(RunOptions(recipe=root / "recipe.toml", run_dir=root / "run", cache_dir=root / "cache",
                                           workers=1))
        return run_dir

    undisturbed = run(tmp_path / "undisturbed")
    faults = contextlib.ExitStack()
    made: list[str] = []
    tb_write, mlflow_write = TensorBoardSink.write, MLflowSink.write

    def tb_then_read_only(self, event):
        tb_write(self, event)
        if event["type"] == "run_started" and "tensorboard" not in made:
            made.append("tensorboard")
            faults.enter_context(read_only(self.root, monkeypatch))

    def mlflow_then_deleted(self, event):
        mlflow_write(self, event)
        if event["type"] == "epoch" and "mlflow" not in made:
            made.append("mlflow")
            shutil.rmtree(self.store)

    monkeypatch.setattr(TensorBoardSink, "write", tb_then_read_only)
    monkeypatch.setattr(MLflowSink, "write", mlflow_then_deleted)
    with faults:
        disturbed = run(tmp_path / "disturbed")
    monkeypatch.setattr(TensorBoardSink, "write", tb_write)
    monkeypatch.setattr(MLflowSink, "write", mlflow_write)
    assert sorted(made) == ["mlflow", "tensorboard"]
    assert_complete(disturbed)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err, err[-2000:]  # MLflow's own error log stays quiet
    # A sink thread that lags behind the run (SQLite on a loaded machine) may fail only after the run's
    # terminal event, whose place is last in events.jsonl: that warning goes to stderr instead.
    late = [line.removeprefix("warning: ") for line in err.splitlines() if line.startswith("warning: event sink")]
    warnings = warnings_of(disturbed) + late
    [tb_warning] = [m for m in warnings if "'tensorboard'" in m]
    [mlflow_warning] = [m for m in warnings if "'mlflow'" in m]
    assert len(warnings) == 2, warnings
    assert tb_warning.startswith("event sink 'tensorboard' failed in write (") and "Permission denied" in tb_warning
    assert str(disturbed / "tensorboard" / "none") in tb_warning
    assert mlflow_warning == (
        f"event sink 'mlflow' failed in write ({mlflow_warning.split('(')[1].split(')')[0]}) and was dropped: "
        f"{disturbed.resolve() / 'mlflow'}: the MLflow store was deleted during the run; the run goes on without "
        f"it, and `workbench export {disturbed} --sink mlflow --to DIR` writes it again from events.jsonl")

    code, _, err = invoke(monkeypatch, capsys, "export", str(disturbed), "--sink", "tensorboard", "--to",
                          str(tmp_path / "tb"))
    assert code == 0, err
    assert tb_scalars(tmp_path / "tb") == tb_scalars(undisturbed / "tensorboard") != {}
    assert tb_hparams(tmp_path / "tb") == tb_hparams(undisturbed / "tensorboard")
    assert tb_images(tmp_path / "tb" / "none") == tb_images(undisturbed / "tensorboard" / "none")
    code, _, err = invoke(monkeypatch, capsys, "export", str(disturbed), "--sink", "mlflow", "--to",
                          str(tmp_path / "mlflow"))
    assert code == 0, err
    live_client, live_runs = mlflow_runs(undisturbed / "mlflow")
    client, runs = mlflow_runs(tmp_path / "mlflow")
    assert set(runs) == set(live_runs) == {"run", "none"}
    for name in runs:
        figures = {k: v for k, (v, _) in mlflow_history(client, runs[name]).items()}  # times differ: two runs
        assert figures == {k: v for k, (v, _) in mlflow_history(live_client, live_runs[name]).items()}
        assert figures or name == "run"  # the variant's epochs and results (the parent run has none)
        assert runs[name].data.params == live_runs[name].data.params
        assert runs[name].info.status == live_runs[name].info.status == "FINISHED"
