"""The report header names the FID convention each FID figure was computed under."""

from __future__ import annotations

from workbench.recipe.schema import Recipe
from workbench.reporting.report import fid_conventions


def test_report_header_names_the_fid_convention(tmp_path):
    (tmp_path / "recipe.toml").write_text(
        '[[metrics]]\nuse = "accuracy"\n\n[[metrics]]\nuse = "fid"\nconvention = "bido"\n'
        'private_per_class = 5\nsuccessful_only = false\n\n[[metrics]]\nuse = "fid-inception"\n'
        'weights_file = "w.pt"\nconvention = "lomma"\n'
    )
    lines = fid_conventions(tmp_path, Recipe())
    assert lines == [
        '- FID convention: `fid` (convention = "bido", private_per_class = 5, successful_only = false); '
        "see docs/attacks.md",
        '- FID convention: `fid-inception` (convention = "lomma"); see docs/attacks.md',
    ]
