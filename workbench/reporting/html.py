"""`report.html`: the run's (or the sweep's) report as one self-contained page.

Rendered with Jinja2 from the templates in `workbench/reporting/templates/` (package data), with
every picture embedded as a `data:` URI and the styles inline: the file alone opens in a browser,
offline, without JavaScript, and travels as one attachment.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from workbench.storage.files import atomic_write_text

HTML_FILE = "report.html"


def _version() -> str:
    """workbench's version from its installed metadata (importing `workbench` would pull in torch,
    and the TUI's runs side renders sweep pages without it)."""
    try:
        return metadata.version("workbench-mi")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def markdown_inline(text: str) -> Markup:
    """The reports' inline markdown (`code`, **bold**) as escaped HTML, so header lines written once
    for report.md read the same in report.html."""
    escaped = html.escape(str(text), quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
    return Markup(escaped)


def environment() -> Environment:
    env = Environment(loader=PackageLoader("workbench.reporting", "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["md"] = markdown_inline
    env.filters["list_item"] = lambda line: markdown_inline(str(line).removeprefix("- "))
    return env


def _embedded(folder: Path, pictures: list[Any]) -> list[dict[str, str]]:
    """Pictures (`title`, `path` relative to `folder`) with their bytes as data URIs; a file that has
    gone is left out rather than shown broken."""
    out = []
    for picture in pictures:
        try:
            data = (folder / picture.path).read_bytes()
        except OSError:
            continue
        out.append({"title": picture.title, "src": png_data_uri(data), "file": Path(picture.path).as_posix()})
    return out


def render_run_html(run_dir: Path, context: Mapping[str, Any]) -> str:
    """The run report page from the context `workbench.reporting.report.write_report` gathers."""
    page = dict(context)
    for key in ("histograms", "figures", "grids"):
        page[key] = _embedded(run_dir, context[key])
    return environment().get_template("run.html").render(**page, version=_version())


def write_run_html(run_dir: Path, context: Mapping[str, Any]) -> Path:
    path = Path(run_dir) / HTML_FILE
    atomic_write_text(path, render_run_html(Path(run_dir), context))
    return path


def render_sweep_html(context: Mapping[str, Any]) -> str:
    """The sweep report page from the context `workbench.sweeps.aggregate.write_report` gathers."""
    return environment().get_template("sweep.html").render(**context, version=_version())
