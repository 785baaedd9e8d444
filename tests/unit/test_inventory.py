"""The container hosts as the API reads them from the inventory: vars precedence, addresses, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from buddo_deploy.inventory import ContainerHost, InventoryError, container_hosts

ROOT = Path(__file__).resolve().parents[2]


def test_vars_come_from_group_vars_host_vars_and_inline_in_ansible_order(tmp_path: Path) -> None:
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "host_vars" / "edge-2").mkdir(parents=True)
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    container_hosts:\n      hosts:\n"
        "        edge-1:\n          buddo_host_memory_mb: 4096\n"
        "        edge-2:\n          ansible_host: !unsafe '{{ x }}'\n"
        "controllers:\n  hosts:\n    ctl-1: {}\n")
    (tmp_path / "group_vars" / "all.yml").write_text("buddo_host_memory_mb: 512\nbuddo_host_port_range: 21000-21999\n")
    (tmp_path / "group_vars" / "container_hosts.yml").write_text("buddo_host_memory_mb: 1024\n")
    (tmp_path / "host_vars" / "edge-2" / "net.yml").write_text(
        "buddo_public_ipv4: 192.0.2.7\nbuddo_public_ipv6: '2001:db8::7'\nbuddo_host_port_range: 30000-30999\n")
    assert container_hosts(tmp_path) == (
        ContainerHost("edge-1", 4096, (21000, 21999)),
        ContainerHost("edge-2", 1024, (30000, 30999), "192.0.2.7", "2001:db8::7"),
    )


def test_the_repository_inventories_are_valid() -> None:
    assert [h.name for h in container_hosts(ROOT / "inventory" / "local")] == ["container-host-1"]
    production = container_hosts(ROOT / "inventory" / "production")
    assert production[0].public_ipv4 and production[0].memory_mb > 0


@pytest.mark.parametrize(("hostvars", "message"), [
    ("{}", "edge-1: no buddo_host_memory_mb"),
    ("{buddo_host_memory_mb: lots}", "edge-1: buddo_host_memory_mb must be a positive integer, not 'lots'"),
    ("{buddo_host_memory_mb: '{{ mem }}'}", "must be a positive integer"),
    ("{buddo_host_memory_mb: 1, buddo_host_port_range: 30000}", "buddo_host_port_range must be 'LOW-HIGH'"),
    ("{buddo_host_memory_mb: 1, buddo_host_port_range: 9-8}", "buddo_host_port_range must be 'LOW-HIGH'"),
    ("{buddo_host_memory_mb: 1, buddo_public_ipv4: '2001:db8::1'}", "buddo_public_ipv4 is not an IPv4 address"),
    ("{buddo_host_memory_mb: 1, buddo_public_ipv6: nope}", "buddo_public_ipv6 is not an IPv6 address"),
])
def test_unusable_host_vars_are_clear_errors(tmp_path: Path, hostvars: str, message: str) -> None:
    (tmp_path / "hosts.yml").write_text(f"container_hosts:\n  hosts:\n    edge-1: {hostvars}\n")
    with pytest.raises(InventoryError, match=message.replace("[", r"\[").replace("{", r"\{")):
        container_hosts(tmp_path)


def test_broken_yaml_and_a_missing_group_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "hosts.yml").write_text("container_hosts: [unclosed\n")
    with pytest.raises(InventoryError, match="hosts.yml: invalid YAML"):
        container_hosts(tmp_path / "bad")
    with pytest.raises(InventoryError, match="no hosts in group container_hosts"):
        container_hosts(tmp_path / "missing")


def test_one_parse_is_cached(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text("container_hosts:\n  hosts:\n    edge-1: {buddo_host_memory_mb: 64}\n")
    first = container_hosts(tmp_path)
    (tmp_path / "hosts.yml").write_text("container_hosts:\n  hosts:\n    edge-1: {buddo_host_memory_mb: 99}\n")
    assert container_hosts(tmp_path) is first


@pytest.mark.parametrize("command", [["reconcile"], ["worker", "--once"], ["serve"]])
def test_the_cli_says_what_is_wrong_with_the_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    from buddo_deploy.cli import main

    (tmp_path / "hosts.yml").write_text("container_hosts:\n  hosts:\n    edge-1: {buddo_host_memory_mb: -5}\n")
    monkeypatch.setenv("BUDDO_INVENTORY", str(tmp_path))
    monkeypatch.setenv("BUDDO_VAR_DIR", str(tmp_path / "var"))
    assert main(command) == 1
    err = capsys.readouterr().err
    assert f"buddo-deploy {command[0]}: cannot use the inventory {tmp_path}: " in err
    assert "edge-1: buddo_host_memory_mb must be a positive integer, not -5" in err
    assert "Traceback" not in err
