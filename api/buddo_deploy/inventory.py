"""Host names from the Ansible inventory the worker uses (YAML, as in inventory/, or INI)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads Ansible's tags (!vault, !unsafe) as plain nodes: only names matter here."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


_YAML = {".yml", ".yaml"}
_INI = {"", ".ini"}


def _files(inventory: Path) -> list[Path]:
    if inventory.is_file():
        return [inventory]
    if not inventory.is_dir():
        return []
    # Top-level files only: group_vars/ and host_vars/ hold variables, not hosts. Like
    # Ansible, skip hidden files and editor backups.
    return sorted(p for p in inventory.iterdir() if p.is_file() and p.suffix in _YAML | _INI
                  and not p.name.startswith(".") and not p.name.endswith("~"))


def _ini_hosts(text: str) -> Iterator[tuple[str, Any]]:
    """Hosts of an INI inventory: the first word of each line outside [group:vars] and [group:children]."""
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if ":" in section:
            continue
        name, *pairs = line.split()
        hostvars = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        yield name, hostvars


def _yaml_hosts(text: str) -> Iterator[tuple[str, Any]]:
    data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
    if isinstance(data, dict):
        for group in data.values():
            yield from _hosts(group)


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
        text = path.read_text()
        hosts = _yaml_hosts(text) if path.suffix in _YAML else _ini_hosts(text)
        for name, hostvars in hosts:
            candidates = [name]
            if isinstance(hostvars, dict) and isinstance(hostvars.get("ansible_host"), str):
                candidates.append(hostvars["ansible_host"])
            labels.update(label for label in map(_first_label, candidates) if label)
    return tuple(sorted(labels))


def host_addresses(inventory: Path, host: str) -> tuple[str, ...]:
    """The public addresses of ``host``: host vars ``buddo_public_ipv4`` and ``buddo_public_ipv6``.

    Read from the host's line or entry in the inventory and from ``host_vars/<host>.yml``;
    a custom domain whose A/AAAA records are all among them points at the host.
    """
    hostvars: dict[str, Any] = {}
    for path in _files(inventory):
        text = path.read_text()
        for name, found in _yaml_hosts(text) if path.suffix in _YAML else _ini_hosts(text):
            if name == host and isinstance(found, dict):
                hostvars |= found
    base = inventory if inventory.is_dir() else inventory.parent
    for suffix in ("", ".yml", ".yaml"):
        path = base / "host_vars" / f"{host}{suffix}"
        if path.is_file():
            data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader
            if isinstance(data, dict):
                hostvars |= data
    addresses = []
    for key in ("buddo_public_ipv4", "buddo_public_ipv6"):
        try:
            addresses.append(str(ipaddress.ip_address(str(hostvars.get(key) or "").strip())))
        except ValueError:
            continue
    return tuple(addresses)
