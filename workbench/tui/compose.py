"""Compose mode: the recipe list and the recipe editor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, OptionList, Select, Static, Switch
from textual.widgets.option_list import Option

from workbench.errors import RecipeError, WorkbenchError
from workbench.recipe.load import validate_raw
from workbench.recipe.template import STARTER_RECIPE
from workbench.recipe.write import to_toml, update_toml_text
from workbench.tui import model as form
from workbench.tui.launch import find_recipes, launch_run, new_run_dir


class RecipesScreen(Screen):
    """The first screen: shipped recipes and the user's own; open one or start a new one."""

    BINDINGS = [
        Binding("enter", "open", "Open"),
        Binding("n", "new", "New recipe"),
        Binding("l", "launch", "Launch"),
        Binding("f5", "refresh", "Refresh"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label("Recipes: open one to edit (shipped ones are saved as your copy), or start a new one.",
                    classes="hint")
        yield DataTable(id="recipes", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("recipe", "from", "what")
        self.action_refresh()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def action_refresh(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        self.entries = find_recipes(self.app.recipes_dir)
        for entry in self.entries:
            table.add_row(entry.path.name, entry.origin, entry.description, key=str(entry.path))
        if not self.entries:
            self.notify("no recipes found; press n to start a new one")

    def _selected(self) -> Path | None:
        table = self.query_one(DataTable)
        if not self.entries or table.cursor_row is None or table.cursor_row >= len(self.entries):
            return None
        return self.entries[table.cursor_row].path

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        path = self._selected()
        if path is None:
            return
        entry = self.entries[self.query_one(DataTable).cursor_row]
        save_path = path if entry.origin == "yours" else self.app.recipes_dir / path.name
        self.app.push_screen(EditorScreen(path, save_path))

    def action_new(self) -> None:
        save_path = _free_path(self.app.recipes_dir / "my_recipe.toml")
        self.app.push_screen(EditorScreen(None, save_path))

    def action_launch(self) -> None:
        path = self._selected()
        if path is not None:
            self.app.launch(path)


def _free_path(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}{n}{path.suffix}")
    return candidate


class EditorScreen(Screen):
    """A recipe as an outline of tables; each table's form is generated from its pydantic model."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+t", "validate", "Validate"),
        Binding("ctrl+r", "launch", "Save & launch"),
        Binding("ctrl+n", "add", "Add table"),
        Binding("ctrl+o", "remove", "Remove table"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, source: Path | None, save_path: Path):
        super().__init__()
        self.source = source
        self.save_path = Path(save_path)
        self.text = STARTER_RECIPE
        self.raw: dict[str, Any] = {}
        self.sections: list[form.Section] = []
        self.current: form.Section | None = None
        self.dirty = False
        self._rendering = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label("", id="editor-title")
        with Horizontal(id="editor"):
            yield OptionList(id="outline")
            with Vertical(id="form-pane"):
                yield VerticalScroll(id="form")
        yield Static("", id="problems")
        yield Footer()

    def on_mount(self) -> None:
        registry = self.app.registry
        self.registry = registry
        if self.source is not None:
            try:
                self.text = self.source.read_text(encoding="utf-8")
                self.raw = tomllib.loads(self.text)
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                self.notify(f"{self.source}: cannot open: {exc}; starting from the template instead",
                            severity="error", timeout=8)
                self.text = STARTER_RECIPE
                self.raw = tomllib.loads(self.text)
        else:
            self.raw = tomllib.loads(self.text)
        self._update_title()
        self._rebuild_outline(select=())
        self.query_one("#outline", OptionList).focus()

    # -------------------------------------------------------------- outline

    def _update_title(self) -> None:
        origin = f" (from {self.source})" if self.source and self.source != self.save_path else ""
        mark = " •modified" if self.dirty else ""
        self.query_one("#editor-title", Label).update(f"Editing {self.save_path}{origin}{mark}")

    def _rebuild_outline(self, select: tuple | None = None) -> None:
        self.sections = form.build_sections(self.raw, self.registry)
        outline = self.query_one("#outline", OptionList)
        wanted = select if select is not None else (self.current.path if self.current else ())
        outline.clear_options()
        for section in self.sections:
            text = "  " * section.depth + section.label
            if section.slot.shape == form.COMPONENT and isinstance(section.data, dict) and not section.is_item:
                text += f" = {section.data.get('use', '?')}"
            if not section.present:
                text += " (unset)"
            outline.add_option(Option(text, id=section.key))
        index = next((i for i, s in enumerate(self.sections) if s.path == wanted), 0)
        outline.highlighted = index
        self.run_worker(self._show(self.sections[index]), exclusive=True, group="form")

    @on(OptionList.OptionHighlighted, "#outline")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        section = next((s for s in self.sections if s.key == event.option.id), None)
        if section is not None and (self.current is None or section.path != self.current.path
                                    or section is not self.current):
            self.run_worker(self._show(section), exclusive=True, group="form")

    async def _show(self, section: form.Section) -> None:
        self.current = section
        self._rendering = True
        pane = self.query_one("#form", VerticalScroll)
        await pane.remove_children()
        widgets: list = [Label(form.path_text(section.path), classes="section-title")]
        slot = section.slot
        if not section.present:
            widgets.append(Static("Not set. Press ctrl+n to add this table.", classes="help"))
        elif slot.shape in (form.LIST, form.DICT):
            count = len(section.data or [])
            what = slot.item.kind or (slot.item.model.__name__ if slot.item.model else "item")
            widgets.append(Static(f"{count} item(s) of {what}. ctrl+n adds one; select an item to edit, "
                                  "ctrl+o removes it.", classes="help"))
        if section.present and slot.shape == form.COMPONENT:
            use = section.data.get("use") if isinstance(section.data, dict) else None
            options = [(f"{c.name} — {c.summary} [{c.plugin}]" if c.summary else c.name, c.name)
                       for c in self.registry.components(slot.kind)]
            if use not in [value for _, value in options]:
                options.insert(0, (f"{use} (not registered)", use or ""))
            widgets.append(Label(f"component (kind `{slot.kind}`)", classes="field-name"))
            picker = Select(options, value=use or "", allow_blank=False, id="use-select")
            picker.section_path = section.path
            widgets.append(picker)
            widgets.append(Static("", id="e-use", classes="error"))
        model = form.section_model(section, self.registry) if section.present else None
        if model is not None:
            node = section.data if isinstance(section.data, dict) else {}
            for spec in form.form_fields(model):
                widgets.extend(self._field_widgets(spec, node))
        widgets.append(Static("", id="e-", classes="error"))
        await pane.mount_all(widgets)
        self._rendering = False
        self._show_errors()

    def _field_widgets(self, spec: form.FieldSpec, node: dict[str, Any]) -> list:
        title = spec.name + (" *" if spec.required else "")
        label = Label(title, classes="field-name")
        widget_id = f"f-{spec.name}"
        value = node.get(spec.name, form.MISSING)
        effective = spec.default if value is form.MISSING else value
        if spec.widget == "switch":
            widget = Switch(value=bool(effective), id=widget_id)
        elif spec.widget == "select":
            options = [(str(choice), choice) for choice in spec.choices]
            if effective not in spec.choices and effective is not None:
                options.insert(0, (f"{effective} (invalid)", effective))
            widget = Select(options, value=effective if effective is not None else Select.NULL,
                            allow_blank=spec.optional or effective is None, id=widget_id)
        else:
            widget = Input(value="" if value is form.MISSING else form.format_value(value),
                           placeholder=spec.placeholder, id=widget_id)
        widget.tooltip = spec.description or None
        widget.section_path = self.current.path  # events arrive late: tie each widget to its table
        parts = [label, widget]
        if spec.description:
            parts.insert(1, Static(spec.description, classes="help"))
        parts.append(Static("", id=f"e-{spec.name}", classes="error"))
        return parts

    # -------------------------------------------------------------- editing

    def _spec(self, name: str) -> form.FieldSpec | None:
        model = form.section_model(self.current, self.registry) if self.current else None
        return next((s for s in form.form_fields(model) if s.name == name), None) if model else None

    def _stale(self, widget) -> bool:
        """An event from a form that is no longer shown (or still being built)."""
        return self._rendering or self.current is None or getattr(widget, "section_path", None) != self.current.path

    def _write(self, name: str, value: Any) -> None:
        section = self.current
        node = form.get_raw(self.raw, section.path)
        current = node.get(name, form.MISSING) if isinstance(node, dict) else form.MISSING
        if value is form.UNSET:
            value = form.MISSING
        if current == value:
            return
        spec = self._spec(name)
        if current is form.MISSING and spec is not None and not spec.required and value == spec.default:
            return  # a widget showing the default: nothing to write
        node = form.ensure_path(self.raw, section.path, self.sections)
        if value is form.MISSING:
            node.pop(name, None)
        else:
            node[name] = value
        section.data = node
        self._changed()
        self._show_errors()
        if name == "name":  # variant names label the outline
            self._relabel()

    def _changed(self) -> None:
        if not self.dirty:
            self.dirty = True
            self._update_title()

    def _relabel(self) -> None:
        self.sections = form.build_sections(self.raw, self.registry)
        self.current = next((s for s in self.sections if s.path == self.current.path), self.current)
        outline = self.query_one("#outline", OptionList)
        for index, section in enumerate(self.sections):
            text = "  " * section.depth + section.label
            if section.slot.shape == form.COMPONENT and isinstance(section.data, dict) and not section.is_item:
                text += f" = {section.data.get('use', '?')}"
            outline.replace_option_prompt_at_index(index, text)

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        if self._stale(event.input) or not (event.input.id or "").startswith("f-"):
            return
        spec = self._spec(event.input.id[2:])
        if spec is not None:
            self._write(spec.name, form.parse_value(spec, event.value))

    @on(Switch.Changed)
    def _switch_changed(self, event: Switch.Changed) -> None:
        if self._stale(event.switch) or not (event.switch.id or "").startswith("f-"):
            return
        self._write(event.switch.id[2:], event.value)

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        if self._stale(event.select):
            return
        value = event.value
        if event.select.id == "use-select":
            node = form.get_raw(self.raw, self.current.path)
            if isinstance(node, dict) and node.get("use") == value:
                return
            if node is form.MISSING and isinstance(self.current.data, dict) and self.current.data.get("use") == value:
                return
            # Another component: its params differ, so the table starts afresh with its defaults.
            form.set_at(self.raw, self.current.path, {"use": value}, self.sections)
            self._changed()
            self._rebuild_outline(select=self.current.path)
        elif (event.select.id or "").startswith("f-"):
            self._write(event.select.id[2:], form.UNSET if value is Select.NULL else value)

    def _show_errors(self) -> None:
        section = self.current
        if section is None or not section.present:
            return
        model = form.section_model(section, self.registry)
        errors = form.field_errors(model, section.data) if model is not None else {}
        if section.slot.shape == form.COMPONENT and model is None:
            use = section.data.get("use") if isinstance(section.data, dict) else None
            errors["use"] = f"no {section.slot.kind} named {use!r} is registered"
        for widget in self.query(".error"):
            name = (widget.id or "e-")[2:]
            message = errors.get(name, "")
            widget.update(f"✗ {message}" if message else "")
            widget.display = bool(message)

    # -------------------------------------------------------------- actions

    def action_add(self) -> None:
        section = self.current
        if section is None:
            return
        target = section
        if section.is_item:  # adding next to an item adds to its list
            target = next((s for s in self.sections if s.path == section.path[:-1]), section)
        if target.present and target.slot.shape not in (form.LIST, form.DICT):
            self.notify("select a list (variants, metrics, attacks…) or an unset table to add to",
                        severity="warning")
            return
        new_path = form.add_to(self.raw, target, self.sections, self.registry)
        self._changed()
        self._rebuild_outline(select=new_path)

    def action_remove(self) -> None:
        section = self.current
        if section is None or not section.optional or not section.present:
            self.notify("only optional tables and list items can be removed", severity="warning")
            return
        form.remove_at(self.raw, section.path, self.sections)
        self._changed()
        self._rebuild_outline(select=section.path[:-1])

    def _problems(self) -> list[str]:
        try:
            validate_raw(self.raw, str(self.save_path), self.registry)
        except RecipeError as exc:
            return exc.problems
        except WorkbenchError as exc:
            return [str(exc)]
        return []

    def action_validate(self) -> bool:
        problems = self._problems()
        panel = self.query_one("#problems", Static)
        if problems:
            panel.update("✗ " + "\n✗ ".join(problems))
            panel.set_class(True, "invalid")
            self.notify(f"{len(problems)} problem(s); see below the form", severity="error")
        else:
            panel.update("✓ the recipe is valid")
            panel.set_class(False, "invalid")
            self.notify("the recipe is valid")
        return not problems

    def action_save(self) -> bool:
        if self.source is not None and self.source.exists():
            text = update_toml_text(self.text, self.raw)
        else:
            text = to_toml(self.raw, "A workbench recipe composed in `workbench tui`.")
        try:
            self.save_path.parent.mkdir(parents=True, exist_ok=True)
            self.save_path.write_text(text, encoding="utf-8")
        except OSError as exc:
            self.notify(f"{self.save_path}: cannot save: {exc}", severity="error")
            return False
        self.text = text
        self.source = self.save_path
        self.dirty = False
        self._update_title()
        self.notify(f"saved {self.save_path}")
        self.action_validate()
        return True

    def action_launch(self) -> None:
        if not self.action_save():
            return
        if self._problems():
            self.notify("not launched: fix the problems first", severity="error")
            return
        self.app.launch(self.save_path)

    def action_back(self) -> None:
        if self.dirty:
            self.notify("unsaved changes discarded (ctrl+s saves)", severity="warning")
        self.app.pop_screen()


def launch_recipe(app, recipe: Path) -> None:
    """Start a run of `recipe` under the app's runs dir and show it in the runs view."""
    run_dir = new_run_dir(app.runs_dir, recipe)
    try:
        launched = launch_run(recipe, run_dir)
    except OSError as exc:
        app.notify(f"could not start the run: {exc}", severity="error")
        return
    app.launched.append(launched)
    app.notify(f"started {run_dir.name} (runs on when the TUI closes)")
    app.switch_mode("runs")
