"""The collection's plugin docs and the roles' argument specs say what they mean.

A plain YAML scalar stops at ", " inside a flow mapping and at ": " anywhere, so a
description can silently turn into extra keys, or make the whole document unreadable
(ansible-doc fails; ansible-lint only logs it). Role specs must list exactly the
variables their defaults set.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.plugin_docs import read_docstring

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))
PLUGINS = ROOT / "collections/ansible_collections/buddo/deploy/plugins"
MODULES = sorted(PLUGINS.glob("modules/*.py"))
DOCUMENTED = sorted([*MODULES, *PLUGINS.glob("filter/*.py")])
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


class Spec(Exception):
    """What a module's main() gave AnsibleModule, raised so that nothing else runs."""


def argument_spec(path: Path) -> dict[str, Any]:
    module = importlib.import_module(f"ansible_collections.buddo.deploy.plugins.modules.{path.stem}")

    def capture(**kwargs: Any) -> None:
        raise Spec(kwargs["argument_spec"])

    original = module.AnsibleModule
    module.AnsibleModule = capture
    try:
        module.main()
    except Spec as spec:
        return dict(spec.args[0])
    finally:
        module.AnsibleModule = original
    raise AssertionError(f"{path.name}: main() made no AnsibleModule")


@pytest.fixture(scope="module")
def ansible_doc() -> dict[str, Any]:
    """Every module's documentation as ansible-doc shows it: with the fragments it extends merged in."""
    names = [f"buddo.deploy.{path.stem}" for path in MODULES]
    out = subprocess.run([str(Path(sys.executable).with_name("ansible-doc")), "--json", *names], cwd=ROOT,
                         env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections")},
                         capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_module_docs_document_exactly_the_options_the_module_takes(path: Path, ansible_doc: dict[str, Any]) -> None:
    """Options documented in a module or the fragments it extends (doc_fragments/) are the ones it accepts."""
    doc = ansible_doc[f"buddo.deploy.{path.stem}"]["doc"]
    documented = doc.get("options") or {}
    assert entry_problems(documented, OPTION_KEYS, "suboptions") == []
    spec = argument_spec(path)
    assert sorted(documented) == sorted(spec)
    for name, option in spec.items():
        assert documented[name].get("type", "str") == option.get("type", "str"), name
        assert documented[name].get("default") == option.get("default"), name


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
