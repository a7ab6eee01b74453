"""Recipes: the TOML schema, loading with file/key errors, writing with comments kept, and the starter template."""
