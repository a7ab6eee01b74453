"""Components: the hook specs, the plugin manager, the registry and the protocols every kind implements."""
