"""`workbench plugins new`: a ready plugin package, from an empty folder to `pip install -e`.

The package registers one small, working example component of the chosen kind through its hook,
has tests that check what the component does (with the `workbench.testing` fixtures; several run
it inside a tiny recipe), and a README; its entry point puts it in `workbench plugins list` as
soon as it is installed. The generated code imports only `workbench.api` from workbench (the tests
also `workbench.testing`), exactly as a third-party package should.

The templates are files shipped with workbench (`templates/`): per kind, `component.py` and
`test_component.py`, real Python that ruff checks in this repository; `package/` holds the rest.
Placeholders are `__NAME__`, `__MODULE__`, `__DIST__`, `__KIND__` and `__KEY__`, each still valid
Python where it stands (an identifier, or text in a string), so no str.format and no escaping.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from workbench.components.manager import DEFAULT_PLUGINS
from workbench.errors import WorkbenchError, did_you_mean

TEMPLATES = files(__name__) / "templates"
"""The template files, shipped in the wheel as package data."""

KINDS: tuple[str, ...] = ("backbone", "dependency", "dataset", "ood_dataset", "defense", "attack", "metric",
                          "ood_score", "ood_loss", "executor", "event_sink")
"""Every component kind, one template folder each, in the registry's order, written out rather than
imported: the registry imports torch, and `workbench --help` must not (tests/test_scaffold.py checks
this is workbench.components.registry.KINDS and the template folders)."""

# What the package holds: its path -> the template it is rendered from.
_PACKAGE_FILES = {
    "pyproject.toml": "package/pyproject.toml.tmpl",
    "README.md": "package/README.md.tmpl",
    "src/__MODULE__/__init__.py": "__KIND__/component.py",
    "tests/conftest.py": "package/conftest.py",
    "tests/test___MODULE__.py": "__KIND__/test_component.py",
}


def render(template: str, fields: dict[str, str]) -> str:
    """A template (or a path) with each `__FIELD__` replaced by its value."""
    for key, value in fields.items():
        template = template.replace(f"__{key.upper()}__", value)
    return template


def write_plugin_package(name: str, output_dir: Path, kind: str = "dependency") -> Path:
    """Write a plugin package registering one `kind` component called `name`; returns its folder."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise WorkbenchError(
            f"plugin name {name!r}: use lowercase letters, digits and '-', starting with a letter"
        )
    if kind not in KINDS:
        raise WorkbenchError(f"--kind {kind!r} is not a component kind{did_you_mean(kind, KINDS)}; "
                             f"kinds: {', '.join(KINDS)}")
    if name == "workbench" or name.startswith("workbench-"):
        raise WorkbenchError(f"plugin name {name!r}: leave out 'workbench-'; the package is workbench-NAME")
    dist = f"workbench-{name}"
    module = "workbench_" + name.replace("-", "_")
    if module in DEFAULT_PLUGINS:
        # The package's module would shadow (or be shadowed by) a built-in plugin of the same name.
        raise WorkbenchError(f"plugin name {name!r}: {module} is a built-in plugin; choose another name")
    folder = Path(output_dir) / dist
    if folder.exists() and any(folder.iterdir()):
        raise WorkbenchError(f"{folder}: exists and is not empty; choose another --output or name")
    fields = {"name": name, "module": module, "dist": dist, "kind": kind, "key": name.replace("-", "_")}
    for target, template in _PACKAGE_FILES.items():
        path = folder / render(target, fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render((TEMPLATES / render(template, fields)).read_text(encoding="utf-8"), fields))
    return folder
