"""The TUI: its plain parts against hand-worked values, its screens through Textual's Pilot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
from pydantic import Field
from rich.console import Console

from workbench.components.hookspecs import hookimpl
from workbench.components.manager import get_plugin_manager
from workbench.components.params import StrictModel
from workbench.components.registry import Registry
from workbench.errors import WorkbenchError
from workbench.recipe.load import validate_raw
from workbench.tui import model as form
from workbench.tui.charts import BrailleCanvas, half_block_image, line_chart, scatter_chart
from workbench.tui.demo import T0, event_line, write_run
from workbench.tui.follow import EventFollower, RunState
from workbench.tui.launch import cancel_run, find_recipes
from workbench.tui.sysinfo import CpuSampler, GpuReader, read_memory

# ------------------------------------------------------------------ shared fixtures


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(get_plugin_manager(entrypoints=False))


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    runs = tmp_path / "runs"
    write_run(runs / "done", status="finished", attacks=("gmi",), ood=True, picture=True)
    write_run(runs / "broke", status="failed", t0=T0 + 3600)
    write_run(runs / "garbled", status="corrupt", t0=T0 + 7200)
    write_run(runs / "stopped", status="interrupted", t0=T0 + 10800)
    return runs


COMMENTED_RECIPE = """\
# My experiment: a header comment that must survive the editor.
title = "commented"
seed = 3

# the data table
[data]
use = "digits"
image_size = 16

[target.backbone]
use = "mcnn"

# training settings, kept short
[target.train]
epochs = 2
batch_size = 64

[[variants]]
name = "none"
defense = { use = "none" }
"""


def make_app(runs_dir: Path, registry: Registry, recipes_dir: Path):
    from workbench.tui.app import WorkbenchApp

    return WorkbenchApp(runs_dir=runs_dir, registry=registry, recipes_dir=recipes_dir)


async def wait_for(pilot, condition, timeout: float = 10.0) -> None:
    """Let the app run until `condition()` holds (the machine is busy: no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)


def notices(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


def plain_text(widget) -> str:
    content = widget.render() if hasattr(widget, "render") else widget
    return getattr(content, "plain", str(content))


# ------------------------------------------------------------------ following events


def test_follower_reads_only_complete_lines_and_counts_corrupt_ones(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(event_line({"t": 1, "type": "log", "message": "a"}) + "not json\n" + '{"t": 2, "ty')
    follower = EventFollower(tmp_path)
    assert [e["message"] for e in follower.poll()] == ["a"]
    assert follower.corrupt_lines == 1
    with path.open("a") as handle:  # the writer finishes its line
        handle.write('pe": "log", "message": "b"}\n')
    assert [e["message"] for e in follower.poll()] == ["b"]
    assert follower.poll() == []
    path.unlink()
    assert follower.poll() == [] and follower.missing


def test_follower_reads_a_large_backlog_in_bounded_chunks(tmp_path):
    lines = [event_line({"t": i, "type": "log", "message": f"m{i}"}) for i in range(500)]
    (tmp_path / "events.jsonl").write_text("".join(lines))
    follower = EventFollower(tmp_path, max_bytes=1000)
    seen = []
    for _ in range(1000):
        batch = follower.poll()
        if not batch:
            break
        seen += batch
    assert [e["t"] for e in seen] == list(range(500))


def test_run_state_progress_eta_and_curves():
    state = RunState()
    state.apply({"t": 100.0, "type": "run_started", "recipe": "r.toml", "variants": ["a"]})
    state.apply({"t": 100.0, "type": "stage_started", "stage": "train", "variant": "a", "total": 10})
    state.apply({"t": 108.0, "type": "epoch", "stage": "train", "variant": "a", "epoch": 4, "epochs": 10,
                 "metrics": {"loss": 0.5, "dep_x/0": 0.25, "ood_loss": 0.1}})
    stage = state.current
    assert stage.fraction == pytest.approx(0.4)
    # 4 epochs in 8 s: 2 s each, 6 left -> 12 s.
    assert stage.eta == pytest.approx(12.0)
    assert state.curves["a"]["dep_x/0"] == [(4.0, 0.25)]
    assert state.curves["a"]["ood_loss"] == [(4.0, 0.1)]
    state.apply({"t": 120.0, "type": "run_failed", "error": "boom"})
    assert state.status() == "failed" and state.error == "boom"
    assert state.elapsed() == pytest.approx(20.0)


def test_run_state_survives_malformed_events():
    state = RunState()
    state.apply({"t": 1, "type": "epoch", "variant": "a", "epoch": "x"})  # epoch not a number
    state.apply({"t": 2, "type": "stage_started"})  # no stage
    assert state.events_seen == 2
    assert any("unreadable" in text for _, _, text in state.log)


# ------------------------------------------------------------------ drawing


def test_braille_dots_follow_the_unicode_pattern():
    canvas = BrailleCanvas(2, 1)
    canvas.set(0, 0)  # dot 1
    canvas.set(1, 3)  # dot 8
    for x in (2, 3):  # every dot of the second cell
        for y in range(4):
            canvas.set(x, y)
    canvas.set(9, 9)  # outside: ignored
    assert canvas.rows() == [chr(0x2800 + 0x01 + 0x80) + chr(0x28FF)]


def test_line_chart_puts_extremes_on_the_edges():
    chart = line_chart({"loss": [(0, 1.0), (1, 0.0)]}, width=12, height=2).plain.splitlines()
    body = [row.split("│", 1)[1] for row in chart[:2]]
    # Decreasing line: top-left dot (dot 1) lit in the first cell, bottom-right (dot 8) in the last.
    assert ord(body[0][0]) - 0x2800 & 0x01
    assert ord(body[1][-1]) - 0x2800 & 0x80
    assert chart[0].startswith("1│") and chart[1].startswith("0│")
    assert "loss" in chart[-1]


def test_scatter_chart_lists_each_point():
    text = scatter_chart([("none", 0.8, 0.9), ("bido", 0.3, 0.85)], width=30, height=4).plain
    assert "none (0.8, 0.9)" in text and "bido (0.3, 0.85)" in text


def style_at(text, offset: int):
    """The style of one character (half_block_image gives each character exactly one span)."""
    from rich.style import Style

    return Style.combine(span.style for span in text.spans if span.start <= offset < span.end)


def test_half_block_image_colours():
    pixels = np.array([[[255, 0, 0], [0, 0, 255]], [[0, 255, 0], [10, 20, 30]], [[1, 2, 3], [4, 5, 6]]],
                      dtype=np.uint8)
    text = half_block_image(pixels)
    assert text.plain == "▀▀\n▀▀"
    styles = [text.get_style_at_offset(Console(), i) for i in (0, 1, 3, 4)]
    assert styles[0].color.triplet == (255, 0, 0) and styles[0].bgcolor.triplet == (0, 255, 0)
    assert styles[1].color.triplet == (0, 0, 255) and styles[1].bgcolor.triplet == (10, 20, 30)
    assert styles[2].color.triplet == (1, 2, 3) and styles[2].bgcolor is None  # odd row: no lower pixel


def test_float_images_scale_to_bytes():
    text = half_block_image(np.array([[0.0], [1.0]]))
    style = text.get_style_at_offset(Console(), 0)
    assert style.color.triplet == (0, 0, 0) and style.bgcolor.triplet == (255, 255, 255)


# ------------------------------------------------------------------ device panel


def test_cpu_and_memory_from_proc_files(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 1 1 1\n")
    sampler = CpuSampler(stat)
    stat.write_text("cpu  150 0 130 780 140 0 0 0 0 0\n")
    # busy +80 (user 50, system 30), idle+iowait +120 -> 80 / 200.
    assert sampler.sample() == pytest.approx(40.0)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n")
    assert read_memory(meminfo) == (600 * 1024, 1000 * 1024)
    assert read_memory(tmp_path / "absent") is None
    assert CpuSampler(tmp_path / "absent").sample() is None


def test_gpu_reader_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    reader = GpuReader()
    assert reader.read() == []
    assert "nvidia-ml-py is missing" in reader.why


def _fake_nvml(init_error: type[Exception] | None = None, count: int = 0):
    import types

    module = types.ModuleType("pynvml")

    def init():
        if init_error is not None:
            raise init_error("NVML Shared Library Not Found")

    module.nvmlInit = init
    module.nvmlDeviceGetCount = lambda: count
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetName = lambda h: b"Fake GPU"
    module.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37)
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2**30, total=8 * 2**30)
    return module


def test_gpu_reader_says_plainly_when_there_is_no_gpu(monkeypatch):
    # NVML's own error class names: no driver library, or a machine with the library but no device.
    no_library = type("NVMLError_LibraryNotFound", (Exception,), {})
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(no_library))
    reader = GpuReader()
    assert reader.read() == [] and reader.why == "No GPU on this machine (no NVIDIA driver)"
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(count=0))
    reader = GpuReader()
    assert reader.read() == [] and reader.why == "No GPU on this machine"
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(count=1))
    (reading,) = GpuReader().read()
    assert (reading.name, reading.utilization, reading.memory_used, reading.memory_total) == (
        "Fake GPU", 37.0, 2**30, 8 * 2**30)


# ------------------------------------------------------------------ editor model


class ToyParams(StrictModel):
    width: int = Field(8, ge=1)
    """Channels of the toy network's only layer."""
    activation: str = "relu"
    """Activation function."""


def toy_factory(params: ToyParams):
    return params


class ToyPlugin:
    """A third-party backbone, registered inline: the editor must offer it with no TUI change."""

    @hookimpl
    def register_backbones(self, register):
        register("toy-net", toy_factory, params=ToyParams, summary="a toy network from a third party")


@pytest.fixture
def toy_registry(plugin_manager, register_plugin, make_registry):
    register_plugin(ToyPlugin(), "toy")
    return make_registry()


def test_sections_follow_the_recipe_and_nested_components(registry):
    raw = tomllib.loads(COMMENTED_RECIPE)
    raw["variants"].append({"name": "bido", "defense": {"use": "bido", "measure": {"use": "coco"}}})
    keys = {s.key: s for s in form.build_sections(raw, registry)}
    assert keys["target.backbone"].slot.kind == "backbone"
    assert keys["variants[1].defense.measure"].slot.kind == "dependency"
    assert keys["metrics"].slot.shape == form.LIST and keys["metrics[0]"].data == {"use": "accuracy"}
    assert not keys["evaluation"].present and keys["evaluation"].optional


def test_editing_a_default_table_writes_only_what_changed(registry):
    raw = {"title": "x"}
    sections = form.build_sections(raw, registry)
    node = form.ensure_path(raw, ("target", "train"), sections)
    node["epochs"] = 3
    assert raw == {"title": "x", "target": {"train": {"epochs": 3}}}
    sections = form.build_sections(raw, registry)
    metrics = next(s for s in sections if s.key == "metrics")
    path = form.add_to(raw, metrics, sections, registry)
    assert path == ("metrics", 1) and raw["metrics"][0] == {"use": "accuracy"}
    validate_raw(raw, "test", registry)


def test_parse_and_check_field_values(registry):
    specs = {s.name: s for s in form.form_fields(registry.get("defense", "bido").params)}
    assert form.parse_value(specs["lambda_x"], "0.1") == 0.1
    assert form.parse_value(specs["lambda_x"], "") is form.UNSET
    assert specs["label_kernel"].widget == "select" and "linear" in specs["label_kernel"].choices
    assert form.parse_value(specs["layers"], "[1, 2]") == [1, 2]
    errors = form.field_errors(registry.get("defense", "bido").params, {"lambda_x": -1.0})
    assert "greater than or equal to 0" in errors["lambda_x"]


def test_third_party_component_in_the_model(toy_registry):
    assert "toy-net" in toy_registry.names("backbone")
    specs = form.form_fields(toy_registry.get("backbone", "toy-net").params)
    assert [s.name for s in specs] == ["width", "activation"]
    assert specs[0].description == "Channels of the toy network's only layer."


# ------------------------------------------------------------------ launching


def test_cancel_sends_sigterm_to_the_recorded_process(tmp_path):
    # argv names workbench: the fixture's run.json records no start time, so cancel checks the command line.
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "workbench"],
                               start_new_session=True)
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline")
        deadline = time.monotonic() + 20  # a child just forked has an empty command line until it execs
        while cmdline.exists() and b"workbench" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        run_dir = write_run(tmp_path / "live", status="running", pid=process.pid)
        assert cancel_run(run_dir) == process.pid
        assert process.wait(timeout=20) == -signal.SIGTERM
        with pytest.raises(WorkbenchError, match="not running"):
            cancel_run(run_dir)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cancel_refuses_a_finished_run(tmp_path):
    run_dir = write_run(tmp_path / "done", status="finished", pid=os.getpid())
    with pytest.raises(WorkbenchError, match="not running"):
        cancel_run(run_dir)
    with pytest.raises(WorkbenchError, match="run.json"):
        cancel_run(tmp_path)


def test_recipes_found_shipped_and_yours(tmp_path):
    (tmp_path / "mine.toml").write_text("# mine: a test\ntitle = 'x'\n")
    entries = find_recipes(tmp_path)
    assert ("bido_plus.toml", "shipped") in [(e.path.name, e.origin) for e in entries]
    mine = next(e for e in entries if e.path.name == "mine.toml")
    assert mine.origin == "yours" and mine.description == "mine: a test"
