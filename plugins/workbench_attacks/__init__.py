"""Built-in workbench plugin: attacks."""
