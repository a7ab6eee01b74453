"""Built-in workbench plugin: backbones."""
