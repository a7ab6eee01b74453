"""The `tensorboard` event sink: one log directory per variant, the results as hparams.

`tensorboard --logdir RUN_DIR` (or a sweep directory, or a folder of runs) then shows every
variant's curves side by side, the reconstruction grids under Images, and in the HParams tab one
row per variant (and per sweep point and seed) with its configuration and final figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from workbench.api import StrictModel, WorkbenchError
from workbench_sinks.translate import (
    RUN_SCOPE,
    Finished,
    Image,
    Scalar,
    Translator,
    recipe_params,
    result_figures,
    sweep_info,
)

EXTRA = "pip install 'workbench-mi[tensorboard]'"


class TensorBoardParams(StrictModel):
    """Where and what the TensorBoard sink writes."""

    directory: str | None = None
    """Log directory (one subfolder per variant, `_run` for the run as a whole); default
    `<run dir>/tensorboard`. A relative path is taken from the run directory."""
    progress: bool = True
    """Also log the numeric fields of progress events (GAN and attack losses) as scalars."""
    flush_seconds: float = Field(10.0, gt=0)
    """How often the event files are flushed to disk while the run goes on."""


class TensorBoardSink:
    """Scalars for every epoch figure, result and (optionally) progress field; images for the
    reconstruction grids and OOD histograms; hparams (resolved recipe + final figures) per variant."""

    def __init__(self, params: TensorBoardParams):
        self.params = params
        self.writers: dict[str, Any] = {}

    def open(self, run_dir: Path, recipe: dict[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise WorkbenchError(f"the tensorboard package is not installed: {EXTRA}") from None
        self._writer_type = SummaryWriter
        self.run_dir = Path(run_dir)
        directory = Path(self.params.directory) if self.params.directory else Path("tensorboard")
        self.root = directory if directory.is_absolute() else self.run_dir / directory
        self.recipe = recipe
        self.translate = Translator(self.run_dir, progress=self.params.progress)
        self.started: dict[str, Any] = {}
        self.writer(None)  # an unwritable directory fails here, at open

    def writer(self, scope: str | None):
        name = scope or RUN_SCOPE
        if name not in self.writers:
            folder = self.root / name
            folder.mkdir(parents=True, exist_ok=True)
            self.writers[name] = self._writer_type(log_dir=str(folder), flush_secs=self.params.flush_seconds)
        return self.writers[name]

    def write(self, event: dict[str, Any]) -> None:
        if event.get("type") == "run_started" and not self.started:
            self.started = event
        for item in self.translate(event):
            if isinstance(item, Scalar):
                self.writer(item.scope).add_scalar(item.tag, item.value, item.step, walltime=item.wall_time)
            elif isinstance(item, Image):
                self.writer(item.scope).add_image(
                    item.tag, _read_png(item.path), item.step, walltime=item.wall_time, dataformats="HWC"
                )
            elif isinstance(item, Finished) and item.results:
                self._hparams(item)
        if event.get("type") in ("stage_finished", "run_finished", "run_failed", "run_interrupted"):
            for writer in self.writers.values():
                writer.flush()

    def _hparams(self, finished: Finished) -> None:
        """The HParams tab: per variant, the recipe as it ran and the variant's final figures (the
        metric tags are the scalars already in the variant's folder)."""
        from torch.utils.tensorboard.summary import hparams

        sweep = sweep_info(self.run_dir, self.started)
        for variant in finished.results.get("variants", []):
            metrics = result_figures(variant)
            if not metrics:
                continue
            values = {f"sweep.{k}": v for k, v in sweep.items()}
            values.update(recipe_params(self.recipe, variant["name"]))
            values = {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str))}
            file_writer = self.writer(variant["name"])._get_file_writer()
            for summary in hparams(values, metrics):
                file_writer.add_summary(summary, walltime=finished.wall_time)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def _read_png(path: Path):
    import numpy as np
    from PIL import Image as PILImage

    with PILImage.open(path) as image:
        return np.asarray(image.convert("RGB"))
