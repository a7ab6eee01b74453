"""The `mlflow` event sink: one parent MLflow run per workbench run, one nested run per variant.

By default the store is local and lives in the run directory (`<run dir>/mlflow/mlflow.db`, a
SQLite store, with artifacts in `<run dir>/mlflow/artifacts`), so nothing is written elsewhere;
`mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow/mlflow.db` shows it. `tracking_uri`
points the sink at another store or a tracking server instead.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field

from workbench.api import StrictModel, WorkbenchError
from workbench_sinks.translate import Finished, Scalar, Translator, recipe_params, sweep_info

EXTRA = "pip install 'workbench-mi[mlflow]'"

_BAD_KEY = re.compile(r"[^\w\-. /]")
_MAX_PARAM = 6000  # MLflow's limit on a param value's length
_BATCH = 900  # metrics per log_batch call (MLflow allows 1000)


def key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, `_ - . /` and space)."""
    return _BAD_KEY.sub("_", name)


class MLflowParams(StrictModel):
    """Where the MLflow sink writes."""

    directory: str | None = None
    """Folder of the local store (`mlflow.db` and `artifacts/`); default `<run dir>/mlflow`.
    A relative path is taken from the run directory. Ignored when `tracking_uri` is set."""
    tracking_uri: str | None = None
    """Another store: `sqlite:///path.db`, `http://host:5000`, `databricks`...; unset = the local store."""
    experiment: str | None = None
    """MLflow experiment name; default the recipe's title, or `workbench`."""
    progress: bool = True
    """Also log the numeric fields of progress events (GAN and attack losses) as metrics."""
    artifacts: bool = True
    """Log report.md, results.json, recipe.toml and the PNG figures as artifacts when the run ends."""
    http_retries: int = Field(2, ge=0)
    """Retries of a request to a tracking server (sets MLFLOW_HTTP_REQUEST_MAX_RETRIES unless set),
    so a server that is down costs seconds, not minutes."""


class MLflowSink:
    """Params = the resolved recipe flattened; metrics with steps; artifacts at the end; sweeps
    tag their runs with the sweep id and grid point (`workbench.sweep`, `workbench.sweep_point`)."""

    def __init__(self, params: MLflowParams):
        self.params = params
        self.parent: str | None = None
        self.children: dict[str, str] = {}
        self.pending: list[tuple[str, Any]] = []
        self.finished = False
        self.store: Path | None = None  # the local store's folder (None with a tracking_uri)

    def open(self, run_dir: Path, recipe: dict[str, Any]) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise WorkbenchError(f"the mlflow package is not installed: {EXTRA}") from None
        for name in ("mlflow", "alembic"):  # no "creating tables" chatter in the run's output
            logging.getLogger(name).setLevel(logging.WARNING)
        # The store logs each database error with its traceback before raising it; the raised error is
        # the sink's one warning line.
        logging.getLogger("mlflow.store").setLevel(logging.CRITICAL)
        self.run_dir = Path(run_dir)
        self.recipe = recipe
        self.translate = Translator(self.run_dir, progress=self.params.progress)
        artifact_location = None
        if self.params.tracking_uri:
            uri = self.params.tracking_uri
            if uri.startswith(("http://", "https://")):
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.params.http_retries))
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        else:
            directory = Path(self.params.directory) if self.params.directory else Path("mlflow")
            directory = (directory if directory.is_absolute() else self.run_dir / directory).resolve()
            directory.mkdir(parents=True, exist_ok=True)
            self.store = directory
            uri = f"sqlite:///{directory / 'mlflow.db'}"
            artifact_location = (directory / "artifacts").as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = self.params.experiment or recipe.get("title") or "workbench"
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(name, artifact_location=artifact_location)
        )

    # -------------------------------------------------------------- events

    def write(self, event: dict[str, Any]) -> None:
        self._check_store()
        if event.get("type") == "run_started":
            self._start(event)
        for item in self.translate(event):
            if isinstance(item, Scalar):
                self._metric(item)
            elif isinstance(item, Finished):
                self._finish(item)
        if len(self.pending) >= _BATCH or event.get("type") == "stage_finished":
            self.flush()

    def _check_store(self) -> None:
        """A local store deleted while the run goes on is one clear error (the sink's one warning), not
        SQLite writing on into the deleted file or the artifacts recreating half a store."""
        if self.store is not None and not (self.store / "mlflow.db").is_file():
            raise WorkbenchError(
                f"{self.store}: the MLflow store was deleted during the run; the run goes on without it, and "
                f"`workbench export {self.run_dir} --sink mlflow --to DIR` writes it again from events.jsonl"
            )

    def _start(self, event: dict[str, Any]) -> None:
        """The parent run and a nested run per variant; a resumed run continues its MLflow runs."""
        from mlflow.entities import Param, RunTag

        if self.parent is not None:  # a replay of a resumed run: its runs exist already
            self._children(event)
            return
        start = round(float(event.get("t", 0)) * 1000)
        run_dir = str(self.run_dir.resolve())
        tags = {
            "workbench.run_dir": run_dir,
            "workbench.recipe_hash": str(event.get("recipe_hash", "")),
            "workbench.seed": str(self.recipe.get("seed", event.get("seed", ""))),
            "workbench.version": str(event.get("version", "")),
        }
        tags.update(
            {
                f"workbench.sweep_{k}" if k != "sweep" else "workbench.sweep": v
                for k, v in sweep_info(self.run_dir, event).items()
            }
        )
        self.tags = tags
        if event.get("resumed"):
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`workbench.run_dir` = '{run_dir}'",
                order_by=["attributes.start_time ASC"],
            )
            for run in found:
                parent_id = run.data.tags.get("mlflow.parentRunId")
                if parent_id is None and self.parent is None:
                    self.parent = run.info.run_id
                elif parent_id is not None:
                    self.children.setdefault(
                        run.data.tags.get("workbench.variant", run.info.run_name), run.info.run_id
                    )
        if self.parent is None:
            self.parent = self.client.create_run(
                self.experiment_id, start_time=start, tags=tags, run_name=self.run_dir.name
            ).info.run_id
            self._params(self.parent, recipe_params(self.recipe), Param, RunTag)
        self._children(event)

    def _children(self, event: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        for variant in event.get("variants") or []:
            if variant in self.children:
                continue
            child_tags = {**self.tags, "mlflow.parentRunId": self.parent, "workbench.variant": variant}
            self.children[variant] = self.client.create_run(
                self.experiment_id,
                start_time=round(float(event.get("t", 0)) * 1000),
                tags=child_tags,
                run_name=variant,
            ).info.run_id
            self._params(self.children[variant], recipe_params(self.recipe, variant), Param, RunTag)

    def _params(self, run_id: str, values: dict[str, Any], Param, RunTag) -> None:
        unique = {key(k): str(v)[:_MAX_PARAM] for k, v in values.items()}  # one value per cleaned name
        params = [Param(k, v) for k, v in unique.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i : i + 100])

    def _run_id(self, scope: str | None) -> str | None:
        if scope is None:
            return self.parent
        return self.children.get(scope, self.parent)

    def _metric(self, item: Scalar) -> None:
        from mlflow.entities import Metric

        run_id = self._run_id(item.scope)
        if run_id is not None:
            self.pending.append(
                (run_id, Metric(key(item.tag), item.value, round(item.wall_time * 1000), item.step))
            )

    def flush(self) -> None:
        by_run: dict[str, list] = {}
        for run_id, metric in self.pending:
            by_run.setdefault(run_id, []).append(metric)
        self.pending = []
        for run_id, metrics in by_run.items():
            for i in range(0, len(metrics), _BATCH):
                self.client.log_batch(run_id, metrics=metrics[i : i + _BATCH])

    def _finish(self, item: Finished) -> None:
        self.flush()
        if self.params.artifacts:
            self._artifacts()
        end = round(item.wall_time * 1000)
        for run_id in [*self.children.values(), self.parent]:
            if run_id is not None:
                self.client.set_terminated(run_id, status=item.status, end_time=end)
        self.finished = True

    def _artifacts(self) -> None:
        if self.parent is None:
            return
        for name in ("report.md", "results.json", "recipe.toml"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.parent, str(self.run_dir / name))
        for png in sorted((self.run_dir / "figures").glob("*.png")):
            self.client.log_artifact(self.parent, str(png), "figures")
        for variant, run_id in self.children.items():
            folder = self.run_dir / variant
            if (folder / "results.json").is_file():
                self.client.log_artifact(run_id, str(folder / "results.json"))
            for png in sorted(folder.rglob("*.png")):
                relative = png.parent.relative_to(folder).as_posix()
                self.client.log_artifact(run_id, str(png), None if relative == "." else relative)

    def close(self) -> None:
        if self.parent is None or (self.store is not None and not (self.store / "mlflow.db").is_file()):
            return
        self.flush()
        if not self.finished:  # the stream ended without run_finished/failed (a replay of a killed run)
            for run_id in [*self.children.values(), self.parent]:
                self.client.set_terminated(run_id, status="KILLED")
            self.finished = True
