"""report.html and the compact report.md: content from a small real run, a headless browser that loads
every picture from the file alone, the sweep's page, rounding, headline columns and verdicts."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from workbench.reporting.columns import Column, headline_columns, results_columns, rounded, spread_decimals
from workbench.reporting.verdicts import run_verdicts, seed_note
from workbench.running.runner import RunOptions, run_recipe
from workbench.sweeps.aggregate import aggregate, figure_title, headline_figures, render_html, render_report
from workbench.testing import TINY_RECIPE

RECIPE = TINY_RECIPE.replace("epochs = 5", "epochs = 2") + """
[[variants]]
name = "bido-hsic"
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
"""


class Page(HTMLParser):
    """The parts of a report page the tests read: tables (cells as text), images, scripts, links."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[dict[str, str]] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def decode_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
    image.load()
    return image


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One real run of two variants with GMI and an OOD set, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("report")
    recipe = root / "recipe.toml"
    recipe.write_text(RECIPE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_CACHE_DIR", str(root / "cache"))
        run_dir, results = run_recipe(RunOptions(recipe=recipe, run_dir=root / "run", cache_dir=root / "cache"))
    return run_dir, results


# ---------------------------------------------------------------- the run's report.html


@pytest.mark.slow
def test_run_report_html_holds_the_headline_verdicts_and_every_picture(small_run):
    run_dir, results = small_run
    text = (run_dir / "report.html").read_text()
    page = Page(text)
    # Self-contained: no script, no stylesheet link, nothing fetched; every picture a PNG inside.
    assert not {"script", "link", "iframe"} & page.tags
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)
    pngs = [*run_dir.glob("figures/*.png"), *run_dir.glob("*/ood_histogram.png"),
            *run_dir.glob("*/reconstructions/*.png")]
    assert len(page.images) == len(pngs) >= 2 + 2 + 4  # 2 grids, 2 histograms, scatter and curves
    for img in page.images:
        image = decode_png(img["src"])
        assert image.width > 50 and image.height > 50 and img["alt"]
    grid_files = {img["title"] for img in page.images}
    assert {"none/reconstructions/gmi.png", "bido-hsic/reconstructions/gmi.png"} <= grid_files

    headline = page.tables[0]
    assert headline[0] == ["variant", "test acc ↑", "gmi top-1 ↓", "OOD FPR95 ↓", "OOD AUROC ↑"]
    for row, variant in zip(headline[1:], results["variants"], strict=True):
        assert row[0] == variant["name"]
        assert row[1] == f"{variant['utility']['test_accuracy']:.3f}"  # one seed, no spread: three decimals
        gmi = variant["attacks"]["gmi"]
        mean_text, _, std_text = row[2].partition(" ± ")
        assert abs(float(mean_text) - gmi["top1"]) <= 0.5 * 10 ** -len(mean_text.partition(".")[2]) + 1e-12
        assert abs(float(std_text) - gmi["top1_std"]) <= 0.5 * 10 ** -len(std_text.partition(".")[2]) + 1e-12
        assert row[4] == f"{variant['ood']['mean']['auroc']:.3f}"
    # The details table has every figure, the bookkeeping ones included.
    details = next(t for t in page.tables if "gmi target_confidence" in t[0])
    assert details[0] == ["variant", *(c.heading for c in results_columns(results["variants"]))]
    # One seed: said so, with the command that gives intervals; a verdict for the defended variant.
    assert "One seed (seed 0)" in text and f"workbench run {run_dir.parent / 'recipe.toml'} --seeds 0-4" in text
    assert "<strong>bido-hsic</strong>: Against none: test acc" in text


@pytest.mark.slow
def test_run_report_md_keeps_a_compact_headline_and_moves_bookkeeping_to_details(small_run):
    run_dir, results = small_run
    report = (run_dir / "report.md").read_text()
    results_part, _, details = report.partition("## Details")
    headline = next(line for line in results_part.splitlines() if line.startswith("| variant |"))
    assert headline.count("|") - 1 <= 10
    assert "target_confidence" not in results_part and "gan_cached" not in results_part
    assert "gmi target_confidence" in details and "gmi top1_std" in details
    assert "--seeds 0-4" in results_part


@pytest.mark.slow
def test_report_html_renders_in_headless_chromium_with_every_image_loaded(small_run, tmp_path):
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                   None)
    assert browser, "this test needs a headless Chromium: apt-get install chromium (.ci/run installs it)"
    run_dir, _ = small_run
    # The file alone, away from the run directory: nothing else to load pictures from.
    alone = tmp_path / "alone"
    alone.mkdir()
    probe = "<script>addEventListener('load', () => document.body.setAttribute('data-loaded', " \
            "[...document.images].map(i => i.complete && i.naturalWidth > 0 ? 1 : 0).join('')))</script>"
    text = (run_dir / "report.html").read_text()
    (alone / "report.html").write_text(text.replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (alone / "report.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-loaded="([01]*)"', dom)
    assert loaded, dom[-2000:]
    assert loaded.group(1) == "1" * len(Page(text).images) and len(loaded.group(1)) >= 8
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1300,1800", url],
                   capture_output=True, timeout=120)
    with Image.open(shot) as image:  # the page drew something: text and pictures, not a blank sheet
        assert image.convert("L").getextrema()[0] < 100


# ---------------------------------------------------------------- the sweep's report.html


def _results(accuracy: float, top1: float) -> dict:
    return {"variants": [{"name": "none", "utility": {"test_accuracy": accuracy}, "attacks": {"gmi": {"top1": top1}}},
                         {"name": "bido", "utility": {"test_accuracy": accuracy - 0.02},
                          "attacks": {"gmi": {"top1": top1 - 0.25}}}]}


def test_sweep_report_html_has_paired_intervals_per_seed_rows_and_the_pareto_plot(tmp_path):
    results = {0: _results(0.99, 0.60), 1: _results(0.98, 0.52), 2: _results(0.97, 0.70)}
    data = aggregate([{"id": "base", "values": {}, "seeds": [0, 1, 2], "results": results}])
    header = {"recipe": "r.toml", "title": "tiny", "seeds": [0, 1, 2], "grid": {}, "executor": "inline",
              "finished": 3, "total": 3}
    text = render_html(tmp_path, data, header, {})
    page = Page(text)
    assert not {"script", "link"} & page.tags
    means, paired, per_seed = page.tables
    assert means[0] == ["variant", "test accuracy", "GMI top-1"]
    assert means[1] == ["none", "0.980 ± 0.010 (3)", "0.61 ± 0.09 (3)"]
    assert paired[1][0] == "bido" and paired[1][2].startswith("lowers by 0.250 [")
    assert per_seed[0] == ["variant", "seed", "test accuracy", "GMI top-1"]
    assert per_seed[1:4] == [["none", "0", "0.9900", "0.6000"], ["none", "1", "0.9800", "0.5200"],
                             ["none", "2", "0.9700", "0.7000"]]
    (pareto,) = page.images
    assert decode_png(pareto["src"]).size == (640, 400)
    assert "<details>" in text  # per-seed rows on demand, without JavaScript


def test_the_sweep_headline_prefers_the_agreed_top1():
    with_agreed = _results(0.99, 0.6)
    for variant in with_agreed["variants"]:
        variant["attacks"]["gmi"]["agreed_top1"] = variant["attacks"]["gmi"]["top1"] / 2
    data = aggregate([{"id": "base", "values": {}, "seeds": [0, 1],
                       "results": {0: with_agreed, 1: _results(0.98, 0.5)}}])
    assert headline_figures(data) == ["utility.test_accuracy", "attacks.gmi.agreed_top1"]
    assert figure_title("attacks.gmi.agreed_top1") == "GMI agreed top-1"
    data = aggregate([{"id": "base", "values": {}, "seeds": [0], "results": {0: _results(0.98, 0.5)}}])
    assert headline_figures(data) == ["utility.test_accuracy", "attacks.gmi.top1"]


def test_a_one_seed_sweep_says_it_has_no_interval(tmp_path):
    data = aggregate([{"id": "base", "values": {}, "seeds": [0], "results": {0: _results(0.99, 0.6)}}])
    header = {"recipe": "r.toml", "seeds": [0], "grid": {}, "executor": "inline", "finished": 1, "total": 1}
    for text in (render_report(data, header, {}), render_html(tmp_path, data, header, {})):
        assert "no spread and no confidence interval" in text and "seeds=0-4" in text


# ---------------------------------------------------------------- rounding, columns, verdicts


@pytest.mark.parametrize(("value", "spread", "text"), [
    (0.6067, 0.0902, "0.61 ± 0.09"),  # leading 9: one significant digit
    (0.98, 0.0100, "0.980 ± 0.010"),  # leading 1: two
    (0.6, 0.0234, "0.600 ± 0.023"),  # leading 2: two
    (12.345, 3.1, "12 ± 3"),
    (0.4889, None, "0.489"),  # no spread: three decimals for a fraction
    (49.4138, None, "49.41"),  # four significant digits otherwise
    (12000.0, None, "12000"),  # a count (an attack's queries): whole
    (0.5, 0.0, "0.500 ± 0"),
    (None, None, "–"),
])
def test_rounding_fits_the_spread(value, spread, text):
    assert rounded(value, spread) == text


def test_spread_decimals():
    assert [spread_decimals(s) for s in (0.09, 0.15, 0.023, 0.3, 2.0, 0.0, None)] == [2, 2, 3, 1, 1, None, None]


def test_headline_prefers_the_agreed_top1_and_falls_back_to_top1():
    variants = [
        {"name": "none", "utility": {"test_accuracy": 0.9},
         "attacks": {"gmi": {"top1": 0.8, "top1_std": 0.1, "agreed_top1": 0.6, "agreed_top1_std": 0.05,
                             "target_confidence": 0.3},
                     "ppa": {"top1": 0.5, "top5": 0.9}},
         "ood": {"mean": {"fpr95": 0.4, "auroc": 0.9, "aupr_in": 0.8}}},
    ]
    columns = headline_columns(variants)
    assert [(c.section, c.key, c.spread) for c in columns] == [
        ("utility", "test_accuracy", None), ("attacks", "gmi.agreed_top1", "gmi.agreed_top1_std"),
        ("attacks", "ppa.top1", None), ("ood", "mean.fpr95", None), ("ood", "mean.auroc", None)]
    assert [c.heading for c in columns][1] == "gmi agreed top-1 ↓"


def test_verdicts_compare_with_none_and_respect_the_spread(tmp_path):
    def variant(name, accuracy, top1, std):
        return {"name": name, "utility": {"test_accuracy": accuracy}, "attacks": {"gmi": {"top1": top1, "top1_std": std}}}

    results = {"seed": 3, "recipe": "r.toml", "variants": [
        variant("none", 0.90, 0.80, 0.05), variant("a", 0.85, 0.40, 0.05), variant("b", 0.90, 0.76, 0.05)]}
    verdicts = run_verdicts(results)
    assert verdicts["a"] == ("Against none: test acc 0.850 against 0.900 (−0.050, costs accuracy); gmi top-1 "
                             "0.40 ± 0.05 against 0.80 ± 0.05 (−0.40, more private).")
    # 0.04 apart with a combined restart spread of sqrt(2)·0.05 = 0.071: not told apart.
    assert "gmi top-1 0.76 ± 0.05 against 0.80 ± 0.05 (−0.04): within the spread over restarts" in verdicts["b"]
    assert run_verdicts({"variants": [variant("x", 0.9, 0.5, 0.1)]}) == {}
    assert "workbench run r.toml --seeds 0-4" in seed_note(results, tmp_path / "run")
    sweep_run = tmp_path / "sweep" / "runs" / "base-s3"
    sweep_run.mkdir(parents=True)
    (tmp_path / "sweep" / "sweep.toml").write_text("")
    assert "seed 3 of the sweep" in seed_note(results, sweep_run)


def test_column_spread_defaults_to_none():
    assert Column("utility", "test_accuracy", "test acc", True).spread is None


def test_the_terminal_results_table_shows_the_headline_columns():
    from workbench.cli.tables import results_table

    variants = [{"name": "none", "utility": {"test_accuracy": 0.9},
                 "attacks": {"gmi": {"top1": 0.62, "top1_std": 0.09, "target_confidence": 0.3, "gan_cached": 1.0}}},
                {"name": "bido", "utility": {"test_accuracy": 0.85},
                 "attacks": {"gmi": {"top1": 0.4, "top1_std": 0.05, "target_confidence": 0.2, "gan_cached": 1.0}}}]
    table = results_table({"variants": variants})
    assert [c.header for c in table.columns] == ["variant", "test acc ↑", "gmi top-1 ↓"]
    cells = [list(c.cells) for c in table.columns]
    assert cells[1] == ["[bold green]0.900[/]", "0.850"] and cells[2] == ["0.62 ± 0.09", "[bold green]0.40 ± 0.05[/]"]
