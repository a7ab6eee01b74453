"""`workbench tui`: the Textual app. Compose mode (recipes, editor) and runs mode (runs, live, results)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from workbench.components.registry import Registry, load_registry
from workbench.tui.compose import RecipesScreen, launch_recipe
from workbench.tui.launch import Launched
from workbench.tui.runs import RunsScreen, cancel, resume

CSS = """
.hint, #runs-title, #editor-title, #results-title { color: $text-muted; padding: 0 1; }
#editor { height: 1fr; }
#outline { width: 38; height: 1fr; border: round $primary; }
#form-pane { width: 1fr; height: 1fr; border: round $primary; }
#form { height: 1fr; padding: 0 1; }
#form Input, #form Select { width: 100%; margin-bottom: 0; }
.section-title { text-style: bold; color: $accent; margin-bottom: 1; }
.field-name { text-style: bold; margin-top: 1; }
.help { color: $text-muted; }
.error { color: $error; display: none; }
#problems { height: auto; max-height: 8; padding: 0 1; color: $success; }
#problems.invalid { color: $error; }
#run-header { padding: 0 1; height: auto; }
#run-body { height: 1fr; }
#run-left, #run-right { width: 1fr; height: 1fr; padding: 0 1; }
#progress, #device { margin-bottom: 1; }
#log { height: 10; border: round $primary; }
#results { height: auto; max-height: 60%; }
#tradeoff { padding: 1 1; }
"""


class WorkbenchApp(App):
    """Compose recipes and watch runs; runs are subprocesses that outlive the TUI."""

    TITLE = "workbench"
    CSS = CSS
    MODES = {"compose": RecipesScreen, "runs": RunsScreen}
    DEFAULT_MODE = "compose"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("1", "switch_mode('compose')", "Recipes"),
        Binding("2", "switch_mode('runs')", "Runs"),
    ]

    def __init__(
        self,
        runs_dir: Path | str = Path("runs"),
        *,
        registry: Registry | None = None,
        recipes_dir: Path | str | None = None,
    ) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.recipes_dir = Path(recipes_dir) if recipes_dir is not None else Path.cwd()
        self.registry = registry if registry is not None else load_registry(
            plugins_dir=os.environ.get("WORKBENCH_PLUGINS_DIR"))
        self.launched: list[Launched] = []

    def on_mount(self) -> None:
        for problem in self.registry.problems:
            self.notify(problem, severity="warning", timeout=10)
        self.set_interval(1.0, self._check_launched)

    def _check_launched(self) -> None:
        """Report runs that died before they could write a `run_failed` event (bad recipe, no space)."""
        for launched in list(self.launched):
            if launched.process.poll() is None:
                continue
            self.launched.remove(launched)
            failure = launched.failure()
            if failure:
                self.notify(f"{launched.run_dir.name}: {failure}", severity="error", timeout=10)

    # Shared actions, used by several screens.
    def launch(self, recipe: Path) -> None:
        launch_recipe(self, recipe)

    def cancel(self, run_dir: Path) -> None:
        cancel(self, run_dir)

    def resume(self, run_dir: Path) -> None:
        resume(self, run_dir)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette lists every key binding of the current screen too, with its key."""
        yield from super().get_system_commands(screen)
        seen = set()
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)
            namespace = active.node

            def run(action: str = binding.action, node=namespace) -> None:
                self.call_later(self.run_action, action, node)

            yield SystemCommand(binding.description, f"key: {key}", run)
