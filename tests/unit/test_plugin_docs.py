"""The collection's plugin docs and the roles' argument specs say what they mean.

A plain YAML scalar stops at ", " inside a flow mapping and at ": " anywhere, so a
description can silently turn into extra keys, or make the whole document unreadable
(ansible-doc fails; ansible-lint only logs it). Role specs must list exactly the
variables their defaults set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.plugin_docs import read_docstring

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "collections/ansible_collections/buddo/deploy/plugins"
DOCUMENTED = sorted([*PLUGINS.glob("modules/*.py"), *PLUGINS.glob("filter/*.py")])
ROLES = sorted(path.parent.parent for path in (ROOT / "roles").glob("*/meta/argument_specs.yml"))

# The keys ansible-test's validate-modules accepts in an option (modules; filters also take "name").
OPTION_KEYS = {"description", "type", "elements", "default", "required", "choices", "aliases", "suboptions",
               "version_added", "name"}
RETURN_KEYS = {"description", "type", "elements", "returned", "sample", "contains", "version_added"}
# required_if: Ansible's role validation honours it on a list of dicts (a running desired-state item
# needs its image and limits: tests/unit/test_desired_item.py); ansible-lint's schema accepts it.
ROLE_OPTION_KEYS = {"description", "type", "elements", "default", "required", "choices", "options", "version_added",
                    "required_if"}


def is_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(line, str) for line in value))


def entry_problems(entries: dict[str, Any], allowed: set[str], nested: str) -> list[str]:
    problems = []
    for name, entry in (entries or {}).items():
        if not isinstance(entry, dict):
            problems.append(f"{name}: not a mapping: {entry!r}")
            continue
        if extra := set(entry) - allowed:
            problems.append(f"{name}: unexpected keys {sorted(extra)}")
        if not is_text(entry.get("description")):
            problems.append(f"{name}: description {entry.get('description')!r}")
        problems += [f"{name}.{p}" for p in entry_problems(entry.get(nested) or {}, allowed, nested)]
    return problems


@pytest.mark.parametrize("path", DOCUMENTED, ids=lambda p: p.stem)
def test_plugin_docs_parse_and_say_what_they_mean(path: Path) -> None:
    docs = read_docstring(str(path), verbose=False, ignore_errors=False)
    doc = docs["doc"]
    assert doc, f"{path.name} has no DOCUMENTATION"
    assert is_text(doc["description"]) and "short_description" in doc
    assert entry_problems(doc.get("options") or {}, OPTION_KEYS, "suboptions") == []
    assert entry_problems(docs["returndocs"] or {}, RETURN_KEYS, "contains") == []
    if docs["plainexamples"]:
        assert isinstance(yaml.safe_load(docs["plainexamples"]), list)


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_argument_specs_list_exactly_the_defaults(role: Path) -> None:
    specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]
    for entry_point in specs.values():
        assert entry_problems(entry_point.get("options") or {}, ROLE_OPTION_KEYS, "options") == []
    defaults_file = role / "defaults/main.yml"
    defaults = (yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else None) or {}
    options = specs["main"].get("options") or {}
    assert sorted(options) == sorted(defaults)
    assert {name: spec["default"] for name, spec in options.items() if "default" in spec} == {
        name: defaults[name] for name, spec in options.items() if "default" in spec
    }
