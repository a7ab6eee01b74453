"""docs/hooks.md documents every hook in hookspecs.py, with the right arguments."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from workbench.components import hookspecs
from workbench.components.manager import HOOK_NAMES

HOOKS_DOC = Path(__file__).parents[1] / "docs" / "hooks.md"
PLUGINS_DOC = Path(__file__).parents[1] / "docs" / "plugins.md"


def documented_hooks() -> dict[str, list[str]]:
    headings = re.findall(r"^## (\w+)\(([^)]*)\)\s*$", HOOKS_DOC.read_text(), flags=re.MULTILINE)
    return {name: [a.strip() for a in args.split(",") if a.strip()] for name, args in headings}


def test_every_hook_has_a_heading_with_its_arguments():
    documented = documented_hooks()
    for name in HOOK_NAMES:
        assert name in documented, f"docs/hooks.md has no '## {name}(...)' heading"
        spec_args = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert documented[name] == spec_args, (
            f"{name}: docs say {documented[name]}, hookspecs say {spec_args}"
        )


def test_no_heading_for_a_hook_that_does_not_exist():
    assert set(documented_hooks()) <= set(HOOK_NAMES)


def test_every_hookspec_has_a_docstring():
    for name in HOOK_NAMES:
        assert inspect.getdoc(getattr(hookspecs, name)), name


def test_authoring_guide_covers_every_hook_and_kind():
    from workbench.components.registry import KIND_HOOKS

    guide = PLUGINS_DOC.read_text()
    for kind, hook in KIND_HOOKS.items():
        assert f"`{hook}`" in guide, f"docs/plugins.md does not mention the hook {hook}"
        assert re.search(rf"^### .*\(`{kind}`\)$", guide, flags=re.MULTILINE), (
            f"docs/plugins.md has no contract heading for the kind {kind!r}"
        )


def test_the_authoring_guide_lists_every_public_api_name():
    import workbench.api

    guide = PLUGINS_DOC.read_text()
    missing = [name for name in workbench.api.__all__ if f"`{name}`" not in guide]
    assert missing == [], f"docs/plugins.md does not mention {missing} (section 5, the public API)"
