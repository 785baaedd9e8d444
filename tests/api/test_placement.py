"""Placement over the inventory's container hosts: most free memory, then fewest deployments;
503 when no host has room; concurrent creates never overcommit (both databases)."""

from __future__ import annotations

import threading
from pathlib import Path

import falcon.testing
import peewee
import pytest
from buddo_deploy import worker
from buddo_deploy.app import create_app
from buddo_deploy.auth import Principal
from buddo_deploy.db import write_transaction
from buddo_deploy.inventory import InventoryError
from buddo_deploy.models import Deployment, Job, Tier, database_proxy, utcnow
from buddo_deploy.services import lifecycle

from tests.helpers import auth, count_rows, create_body, make_settings, migrate


def write_inventory(directory: Path, hosts: dict[str, dict[str, object]]) -> Path:
    directory.mkdir(exist_ok=True)
    lines = ["container_hosts:", "  hosts:"]
    for name, hostvars in hosts.items():
        lines.append(f"    {name}:")
        lines += [f"      {key}: {value!r}" for key, value in hostvars.items()] or ["      {}"]
    (directory / "hosts.yml").write_text("\n".join(lines) + "\n")
    return directory


def create(client, subdomain: str, tier: str = "buddo-starter", operator: str | None = None):
    return client.simulate_post("/api/deploy/apps", json=create_body(subdomain=subdomain, tier=tier),
                                headers=auth(operator or f"op-{subdomain}"))


def test_most_free_memory_wins_and_ties_go_to_the_host_with_fewer_deployments(client_with, tmp_path):
    inventory = write_inventory(tmp_path / "inv", {"host-a": {"buddo_host_memory_mb": 1024},
                                                   "host-b": {"buddo_host_memory_mb": 1536}})
    client = client_with(inventory=inventory)
    hosts = []
    for i in range(5):
        resp = create(client, f"app-{i}")  # buddo-starter: 256 MB
        assert resp.status_code == 201, resp.text
        hosts.append(resp.json["deployment"]["host"])
    # free (a, b): 1024/1536 -> b; 1024/1280 -> b; 1024/1024, a has fewer -> a; 768/1024 -> b; 768/768 tie
    # with 1 vs 3 deployments -> a.
    assert hosts == ["host-b", "host-b", "host-a", "host-b", "host-a"]
    assert {d.host for d in Deployment.select()} == {"host-a", "host-b"}


def test_a_full_platform_answers_503_and_never_overcommits(client_with, tmp_path):
    inventory = write_inventory(tmp_path / "inv", {"host-a": {"buddo_host_memory_mb": 512},
                                                   "host-b": {"buddo_host_memory_mb": 256}})
    client = client_with(inventory=inventory)
    assert create(client, "big-1", tier="btc-starter").json["deployment"]["host"] == "host-a"  # 512 MB
    resp = create(client, "big-2", tier="btc-starter")
    # host-b has 256 MB free: not enough for 512, and never split over hosts.
    assert resp.status_code == 503
    assert resp.json["error"]["code"] == "capacity_exhausted"
    assert resp.json["error"]["details"] == {"tier": "btc-starter", "memory_mb": 512}
    assert "request_id" in resp.json["error"]
    assert create(client, "small-1").json["deployment"]["host"] == "host-b"
    assert create(client, "small-2").status_code == 503
    # Destroyed but not yet torn down still holds its memory; released frees it.
    first = Deployment.get(Deployment.subdomain == "big-1")
    assert client.simulate_delete(f"/api/deploy/apps/{first.id}", headers=auth("op-big-1")).status_code == 200
    assert create(client, "big-3", tier="btc-starter").status_code == 503
    Deployment.update(released_at=utcnow()).where(Deployment.id == first.id).execute()
    assert create(client, "big-4", tier="btc-starter").json["deployment"]["host"] == "host-a"


def test_each_host_has_its_own_port_range(client_with, tmp_path):
    inventory = write_inventory(tmp_path / "inv", {
        "host-a": {"buddo_host_memory_mb": 4096, "buddo_host_port_range": "31000-31003"},
        "host-b": {"buddo_host_memory_mb": 1024, "buddo_host_port_range": "32000-32999"},
    })
    client = client_with(inventory=inventory)
    placed = [create(client, f"app-{i}").json["deployment"] for i in range(3)]
    # host-a has the memory but ports for two deployments only (blocks of two).
    assert [d["host"] for d in placed] == ["host-a", "host-a", "host-b"]
    ports = {d.subdomain: d.host_port for d in Deployment.select()}
    assert sorted([ports["app-0"], ports["app-1"]]) == [31000, 31002]
    assert 32000 <= ports["app-2"] <= 32998


def test_concurrent_creates_never_overcommit_a_host(client_with, tmp_path):
    inventory = write_inventory(tmp_path / "inv", {"host-a": {"buddo_host_memory_mb": 1024},
                                                   "host-b": {"buddo_host_memory_mb": 768}})
    client = client_with(inventory=inventory)
    results: list[int] = []
    barrier = threading.Barrier(10)

    def burst(i: int) -> None:
        barrier.wait()
        results.append(create(client, f"burst-{i}").status_code)  # 256 MB each, one operator each
        database_proxy.obj.close()

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [201] * 7 + [503] * 3  # 4 fit on host-a, 3 on host-b
    per_host: dict[str, int] = {}
    for d in Deployment.select():
        per_host[d.host] = per_host.get(d.host, 0) + d.memory_limit_mb
    assert per_host == {"host-a": 1024, "host-b": 768}


def test_a_malformed_inventory_stops_the_api_from_starting(client_with, tmp_path):
    inventory = write_inventory(tmp_path / "inv", {"host-a": {"ansible_host": "a.example.net"}})
    with pytest.raises(InventoryError, match="host-a: no buddo_host_memory_mb"):
        client_with(inventory=inventory)


def test_the_periodic_reconcile_covers_every_inventory_host(client_with, settings, tmp_path):
    import dataclasses

    inventory = write_inventory(tmp_path / "inv", {"host-a": {"buddo_host_memory_mb": 1024},
                                                   "host-b": {"buddo_host_memory_mb": 1024}})
    client = client_with(inventory=inventory)
    assert create(client, "app-0").status_code == 201  # on host-a (tie, name order)
    # A host that holds deployments but left the inventory is reconciled too.
    Deployment.update(host="host-old").where(Deployment.subdomain == "app-0").execute()
    worker.queue_reconciles(dataclasses.replace(settings, inventory=inventory))
    queued = sorted(j.host for j in Job.select().where(Job.action == "reconcile"))
    assert queued == ["host-a", "host-b", "host-old"]


def test_create_app_rejects_an_inventory_without_container_hosts(settings, tmp_path):
    import dataclasses

    inventory = tmp_path / "empty"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text("controllers:\n  hosts:\n    ctl-1: {}\n")
    with pytest.raises(InventoryError, match="no hosts in group container_hosts"):
        create_app(dataclasses.replace(settings, inventory=inventory))


def test_host_ports_are_unique_per_host_only(client_with, tmp_path):
    inventory = write_inventory(tmp_path / "inv", {
        "host-a": {"buddo_host_memory_mb": 1024, "buddo_host_port_range": "31000-31001"},
        "host-b": {"buddo_host_memory_mb": 1024, "buddo_host_port_range": "31000-31001"},
    })
    client = client_with(inventory=inventory)
    placed = [create(client, f"app-{i}").json["deployment"]["host"] for i in range(2)]
    assert placed == ["host-a", "host-b"]
    assert [d.host_port for d in Deployment.select()] == [31000, 31000]
    resp = create(client, "app-2")  # memory left on both, but no port block
    assert resp.status_code == 503 and resp.json["error"]["code"] == "capacity_exhausted"


def test_ports_are_probed_and_a_range_too_full_for_the_probes_is_read_whole(client_with, tmp_path, monkeypatch):
    inventory = write_inventory(tmp_path / "inv", {
        "host-a": {"buddo_host_memory_mb": 100000, "buddo_host_port_range": "31000-31009"}})
    client = client_with(inventory=inventory)
    monkeypatch.setattr(lifecycle, "PORT_PROBES", 1)  # one block probed: a hit on a held one reads the range
    placed = [create(client, f"app-{i}").json["deployment"]["id"] for i in range(5)]
    ports = sorted(Deployment.get_by_id(ident).host_port for ident in placed)
    assert ports == [31000, 31002, 31004, 31006, 31008]
    resp = create(client, "app-5")
    assert resp.status_code == 503 and resp.json["error"]["code"] == "capacity_exhausted"


def test_a_placement_reads_the_same_rows_however_many_deployments_a_host_holds(tmp_path, backend, monkeypatch):
    """Memory is summed by the database (a row per host) and the probed ports are read by index."""
    inventory = write_inventory(tmp_path / "inv", {"host-a": {"buddo_host_memory_mb": 100000},
                                                   "host-b": {"buddo_host_memory_mb": 100000}})
    settings = make_settings(tmp_path, backend, inventory=inventory)
    migrate(settings)
    client = falcon.testing.TestClient(create_app(settings))
    tier = Tier.get(Tier.slug == "buddo-starter")
    for i in range(2):
        create(client, f"app-{i}")

    def place() -> None:
        with monkeypatch.context() as patched, write_transaction(database_proxy.obj):
            patched.setattr(lifecycle.random, "sample", lambda blocks, k: list(blocks)[-k:])  # blocks no one holds
            lifecycle.Lifecycle(settings)._place(tier)

    few = count_rows(monkeypatch, place)
    for i in range(2, 8):
        create(client, f"app-{i}")
    assert count_rows(monkeypatch, place) == few


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_create_placing_on_one_host_does_not_hold_up_a_create_for_another(client_with, tmp_path, monkeypatch):
    """Placement takes a lock per host, not one for the platform: while one create holds host-a
    (paused after placing, before it commits), another operator's create that would have chosen
    host-a as well takes host-b and commits. SQLite runs one writer at a time by design."""
    inventory = write_inventory(tmp_path / "inv", {"host-a": {"buddo_host_memory_mb": 1024},
                                                   "host-b": {"buddo_host_memory_mb": 1024}})
    client = client_with(inventory=inventory)
    placed, release = threading.Event(), threading.Event()
    charge = lifecycle.Billing.charge_first_cycle

    def paused(self, deployment):
        if deployment.operator_id == "op-first":
            placed.set()
            assert release.wait(60)  # holds host-a's lock (and its transaction) until the other committed
        return charge(self, deployment)

    monkeypatch.setattr(lifecycle.Billing, "charge_first_cycle", paused)
    answers: dict[str, falcon.testing.Result] = {}

    def first() -> None:
        answers["first"] = create(client, "first", operator="op-first")
        database_proxy.obj.close()

    thread = threading.Thread(target=first)
    thread.start()
    assert placed.wait(60)
    second = threading.Thread(target=lambda: answers.update(second=create(client, "second", operator="op-second")))
    second.start()
    second.join(30)  # a lock for the whole platform would hold it until the first one commits
    done_before_first = not second.is_alive()
    release.set()
    thread.join()
    second.join()
    assert done_before_first, "the second create waited for the first one's transaction"
    assert answers["second"].status_code == 201, answers["second"].text
    assert answers["first"].status_code == 201, answers["first"].text
    # Both saw two empty hosts; the tie goes to host-a, whose lock the first create held.
    assert answers["first"].json["deployment"]["host"] == "host-a"
    assert answers["second"].json["deployment"]["host"] == "host-b"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the plan read is SQLite's EXPLAIN QUERY PLAN
def test_the_limit_counts_of_a_create_read_an_index_alone_when_one_operator_holds_most(client_with, tmp_path):
    """With statistics that say one operator holds every deployment, a count by operator is still
    a search of a covering index, not a scan of the table (it was, for every create)."""
    client = client_with()
    for i in range(6):
        create(client, f"many-{i}", tier="btc-pro", operator="big-operator")
    database_proxy.obj.execute_sql("ANALYZE")
    principal = Principal(operator_id="another", client_id="c", scopes=frozenset())
    tier = Tier.get(Tier.slug == "buddo-starter")
    live = lifecycle.Lifecycle._live_of(principal)
    for query in (live, live.where(Deployment.tier == tier)):
        sql, params = query.select(peewee.SQL("1")).sql()
        plan = [str(row[3]) for row in database_proxy.obj.execute_sql(
            f"EXPLAIN QUERY PLAN SELECT COUNT(1) FROM ({sql})", params).fetchall()]
        assert any("USING COVERING INDEX deployments_operator_live" in step for step in plan), plan
        assert not any(step.startswith("SCAN") for step in plan), plan
