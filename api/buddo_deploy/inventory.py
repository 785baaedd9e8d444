"""Host names from the Ansible inventory the worker uses (YAML inventories, as in inventory/)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads Ansible's tags (!vault, !unsafe) as plain nodes: only names matter here."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _files(inventory: Path) -> list[Path]:
    if inventory.is_file():
        return [inventory]
    if not inventory.is_dir():
        return []
    # Top-level files only: group_vars/ and host_vars/ hold variables, not hosts.
    return sorted(p for p in inventory.iterdir() if p.is_file() and p.suffix in {".yml", ".yaml"})


def _hosts(group: Any) -> Iterator[tuple[str, Any]]:
    if not isinstance(group, dict):
        return
    hosts = group.get("hosts")
    if isinstance(hosts, dict):
        yield from ((str(name), hostvars) for name, hostvars in hosts.items())
    children = group.get("children")
    if isinstance(children, dict):
        for child in children.values():
            yield from _hosts(child)


def _first_label(name: str) -> str | None:
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        return name.split(".", 1)[0].lower() or None


def host_labels(inventory: Path) -> tuple[str, ...]:
    """The first DNS label of every inventory host and of its ansible_host, sorted.

    A deployment named like a host would shadow it under the base domain (and make
    logs and reports ambiguous), so these are reserved subdomains.
    """
    labels: set[str] = set()
    for path in _files(inventory):
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader
        if not isinstance(data, dict):
            continue
        for group in data.values():
            for name, hostvars in _hosts(group):
                candidates = [name]
                if isinstance(hostvars, dict) and isinstance(hostvars.get("ansible_host"), str):
                    candidates.append(hostvars["ansible_host"])
                labels.update(label for label in map(_first_label, candidates) if label)
    return tuple(sorted(labels))
