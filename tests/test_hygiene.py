"""The core stays importable without Textual (the TUI is optional at run time)."""

from __future__ import annotations

import subprocess
import sys


def test_cli_and_runner_do_not_import_textual():
    code = (
        "import sys, workbench, workbench.cli, workbench.runner, workbench.registry;"
        "workbench.load_registry();"
        "print('textual' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
