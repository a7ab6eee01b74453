"""The installed version of workbench (one place; `workbench.__version__` re-exports it)."""

__version__ = "0.1.0"
