"""What the API takes from the Ansible inventory the worker uses: host names (YAML or INI) and the
container hosts with their capacity, port range and public addresses (YAML, host and group vars)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
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


# --- container hosts ---------------------------------------------------------

CONTAINER_GROUP = "container_hosts"


class InventoryError(Exception):
    """The inventory cannot be used for placement (its message says what to fix)."""


@dataclass(frozen=True)
class ContainerHost:
    """One host of group container_hosts, with what placement and DNS need from its vars."""

    name: str
    memory_mb: int
    port_range: tuple[int, int]
    public_ipv4: str | None = None
    public_ipv6: str | None = None
    # How Ansible reaches it (what the worker's output followers use too; services/follow.py).
    connection: str = "ssh"
    address: str = ""  # ansible_host (empty: the name itself)
    port: int | None = None
    user: str = ""
    key_file: str = ""
    ssh_args: str = ""


def _group_hosts(group: Any) -> dict[str, dict[str, Any]]:
    """Hosts of a YAML group and its children, with their inline vars."""
    found: dict[str, dict[str, Any]] = {}
    for name, hostvars in _hosts(group):
        found.setdefault(name, {}).update(hostvars if isinstance(hostvars, dict) else {})
    return found


def _vars_file(directory: Path, name: str) -> dict[str, Any]:
    """group_vars/<name>.yml (or .yaml, or a directory of such files), as Ansible reads them."""
    merged: dict[str, Any] = {}
    candidates = [directory / f"{name}{ext}" for ext in ("", ".yml", ".yaml")]
    for candidate in candidates:
        paths = sorted(p for p in candidate.iterdir() if p.suffix in _YAML) if candidate.is_dir() else (
            [candidate] if candidate.is_file() and candidate.suffix in _YAML else [])
        for path in paths:
            data = _load_yaml(path)
            if data is None:
                continue
            if not isinstance(data, dict):
                raise InventoryError(f"{path}: not a mapping of variables")
            merged.update(data)
    return merged


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: invalid YAML ({exc.__class__.__name__})") from exc


def _int(host: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise InventoryError(f"{host}: {key} must be a positive integer, not {value!r}")
    return int(value)


def _port_range(host: str, value: Any) -> tuple[int, int]:
    low, sep, high = str(value).partition("-")
    try:
        ports = (int(low), int(high)) if sep else (0, -1)
    except ValueError:
        ports = (0, -1)
    if not 1024 <= ports[0] < ports[1] <= 65535:
        raise InventoryError(f"{host}: buddo_host_port_range must be 'LOW-HIGH' within 1024-65535, not {value!r}")
    return ports


def _container_host(name: str, hostvars: dict[str, Any], default_ports: tuple[int, int]) -> ContainerHost:
    if "buddo_host_memory_mb" not in hostvars:
        raise InventoryError(f"{name}: no buddo_host_memory_mb (memory for containers, in host or group vars)")
    memory = _int(name, "buddo_host_memory_mb", hostvars["buddo_host_memory_mb"])
    ports = _port_range(name, hostvars["buddo_host_port_range"]) if "buddo_host_port_range" in hostvars \
        else default_ports
    addresses: dict[str, str | None] = {}
    for key, version in (("buddo_public_ipv4", 4), ("buddo_public_ipv6", 6)):
        value = hostvars.get(key) or None
        if value is not None:
            try:
                if ipaddress.ip_address(str(value)).version != version:
                    raise ValueError(value)
            except ValueError as exc:
                raise InventoryError(f"{name}: {key} is not an IPv{version} address: {value!r}") from exc
        addresses[key] = None if value is None else str(value)
    def plain(key: str) -> str:  # a templated value ("{{ ... }}") is Ansible's to resolve: not used here
        value = hostvars.get(key)
        return "" if value is None or "{{" in str(value) else str(value)

    port = plain("ansible_port")
    return ContainerHost(name, memory, ports, addresses["buddo_public_ipv4"], addresses["buddo_public_ipv6"],
                         connection=plain("ansible_connection") or "ssh", address=plain("ansible_host"),
                         port=int(port) if port.isdigit() else None, user=plain("ansible_user"),
                         key_file=plain("ansible_ssh_private_key_file"),
                         ssh_args=" ".join(filter(None, (plain("ansible_ssh_common_args"),
                                                         plain("ansible_ssh_extra_args")))))


@functools.lru_cache(maxsize=8)
def container_hosts(inventory: Path, default_ports: tuple[int, int] = (20000, 29999)) -> tuple[ContainerHost, ...]:
    """The hosts of group container_hosts with their capacity, ports and addresses; parsed once per path.

    Variables are taken as Ansible would for these plain values: group_vars/all, then
    group_vars/container_hosts, then host_vars/<host>, then the host's inline vars.
    Only YAML inventories carry this (an INI inventory cannot say a host's capacity).
    Raises InventoryError when the group is missing or a host's vars are unusable.
    """
    files = [p for p in _files(inventory) if p.suffix in _YAML]
    hosts: dict[str, dict[str, Any]] = {}
    for path in files:
        data = _load_yaml(path)
        if not isinstance(data, dict):
            continue
        for group_name, group in data.items():
            if group_name == CONTAINER_GROUP:
                for name, inline in _group_hosts(group).items():
                    hosts.setdefault(name, {}).update(inline)
            elif isinstance(group, dict) and isinstance(group.get("children"), dict) \
                    and CONTAINER_GROUP in group["children"]:
                for name, inline in _group_hosts(group["children"][CONTAINER_GROUP]).items():
                    hosts.setdefault(name, {}).update(inline)
    if not hosts:
        raise InventoryError(f"{inventory}: no hosts in group {CONTAINER_GROUP}")
    base = inventory if inventory.is_dir() else inventory.parent
    group_vars = {**_vars_file(base / "group_vars", "all"), **_vars_file(base / "group_vars", CONTAINER_GROUP)}
    found = []
    for name in sorted(hosts):
        hostvars = {**group_vars, **_vars_file(base / "host_vars", name), **hosts[name]}
        found.append(_container_host(name, hostvars, default_ports))
    return tuple(found)


def container_host(inventory: Path, name: str, default_ports: tuple[int, int] = (20000, 29999)) -> ContainerHost | None:
    """The container host ``name`` of the inventory, or None when it has none of that name."""
    return next((h for h in container_hosts(inventory, default_ports) if h.name == name), None)


def host_addresses(inventory: Path, host: str) -> tuple[str, ...]:
    """The public addresses of ``host`` (``buddo_public_ipv4``/``_ipv6``), for the custom-domain check:
    a custom domain whose A/AAAA records are all among them points at the host."""
    for found in container_hosts(inventory):
        if found.name == host:
            return tuple(a for a in (found.public_ipv4, found.public_ipv6) if a)
    return ()
