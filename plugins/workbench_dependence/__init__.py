"""Built-in workbench plugin: dependence."""
