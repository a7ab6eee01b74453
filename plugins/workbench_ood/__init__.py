"""Built-in workbench plugin: ood."""
