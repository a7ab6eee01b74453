"""Built-in workbench plugin: metrics."""
