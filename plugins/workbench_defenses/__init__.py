"""Built-in workbench plugin: defenses."""
