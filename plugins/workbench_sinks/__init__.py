"""Built-in event sinks: TensorBoard and MLflow, fed by the run's event stream.

Both are optional extras (`pip install 'workbench-mi[tensorboard]'`, `[mlflow]`); the packages are
imported when a sink opens, so a missing one is a one-line warning naming the extra, never an
import error at startup. Both turn events into the same scalars (`translate.Translator`), so a
live sink and `workbench export` of the finished run write the same thing.
"""

from __future__ import annotations

from workbench.api import hookimpl
from workbench_sinks.mlflow_sink import MLflowParams, MLflowSink
from workbench_sinks.tensorboard_sink import TensorBoardParams, TensorBoardSink


@hookimpl
def register_event_sinks(register):
    register(
        "tensorboard",
        TensorBoardSink,
        params=TensorBoardParams,
        summary="TensorBoard logs, one per variant: scalars, reconstruction grids, results as hparams.",
    )
    register(
        "mlflow",
        MLflowSink,
        params=MLflowParams,
        summary="MLflow runs (local sqlite store by default): a parent per run, a nested run per variant.",
    )
