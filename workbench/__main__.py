"""`python -m workbench` runs the CLI (the TUI launches runs this way)."""

from workbench.cli import main

main()
