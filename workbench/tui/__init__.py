"""The Textual TUI: compose recipes and watch runs live.

Only `workbench tui` imports this package, so the core stays importable without Textual.
The non-widget parts (following events, charts, device figures, launching) are plain
modules that tests exercise directly.
"""
