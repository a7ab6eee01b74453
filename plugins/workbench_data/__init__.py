"""Built-in workbench plugin: data."""
