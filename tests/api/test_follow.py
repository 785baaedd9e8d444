"""Followed output: follows, their leases, lines read by cursor as SSE, and the collectors that
store the lines, against tests/unit/fake_podman.py as a local host's podman."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from buddo_deploy.inventory import ContainerHost
from buddo_deploy.models import OutputFollow, OutputLine, Run, utcnow
from buddo_deploy.services import follow
from buddo_deploy.services.output import MASK

from tests.helpers import auth, create_deployment, ran, run_job

FAKE = Path(__file__).resolve().parents[1] / "unit" / "fake_podman.py"
LOCAL = ContainerHost("container-host-1", 1024, (20000, 20010), connection="local")


class Podman:
    """The fake podman first on PATH: the containers it knows, and what they print."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "logs").mkdir()
        binary = root / "podman"
        binary.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
        binary.chmod(0o755)

    def _change(self, change: Callable[[list[dict[str, Any]]], None]) -> None:
        with open(self.root / "lock", "w") as lock:  # as the fake's calls take it
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.root / "state.json"
            state = json.loads(path.read_text()) if path.exists() else {"containers": [], "networks": [], "images": []}
            change(state["containers"])
            path.write_text(json.dumps(state))

    def add(self, ident: str, labels: dict[str, str], state: str = "running", created: float = 0) -> None:
        created = int(created or time.time())
        self._change(lambda containers: containers.append({
            "id": ident, "name": ident, "state": state, "labels": labels, "image": "app", "host_port": 0,
            "created": created, "started_at": created if state == "running" else 0}))

    def set(self, ident: str, **fields: Any) -> None:
        self._change(lambda containers: next(c for c in containers if c["id"] == ident).update(fields))

    def print(self, ident: str, text: str, stream: str = "stdout", at: str = "") -> None:
        with open(self.root / "logs" / ident, "a") as log:
            log.write(f"{at or stamp()} {stream} {text}\n")


@pytest.fixture
def podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Podman]:
    root = tmp_path / "podman"
    root.mkdir()
    monkeypatch.setenv("FAKE_PODMAN_DIR", str(root))
    monkeypatch.setenv("PATH", f"{root}{os.pathsep}{os.environ['PATH']}")
    fake = Podman(root)
    yield fake
    fake._change(lambda containers: [c.update(state="exited") for c in containers])  # ends their logs --follow


def stamp(seconds: float = 0) -> str:
    """Now (and ``seconds`` from it), as podman stamps a line."""
    return (utcnow() + dt.timedelta(seconds=seconds)).isoformat(timespec="microseconds") + "Z"


def stored(ident: str) -> list[tuple[str, str, str]]:
    """The subject's lines as stored: container, stream and text, in the order they were."""
    return [(row.container, row.stream, row.text)
            for row in OutputLine.select().where(OutputLine.subject_id == ident).order_by(OutputLine.id)]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def lines(ident: str, *texts: str) -> None:
    now = utcnow()
    OutputLine.insert_many([{"subject_id": ident, "at": f"2026-12-06T10:00:0{i}Z", "stream": "stdout",
                             "text": text, "container": "abc", "created_at": now}
                            for i, text in enumerate(texts)]).execute()


def test_followers_get_the_lines_after_their_cursor_as_server_sent_events(client):
    one, two = create_deployment(client), create_deployment(client, subdomain="other")
    lines(one, "before")
    cursor = follow.follow(one)
    assert OutputFollow.get_by_id(one).until > utcnow()
    first, late = follow.Follower(one, "operator-1", cursor), follow.Follower(one, "operator-1", 0)
    mine = follow.Follower(two, "operator-1", follow.follow(two))
    lines(one, "after", "again")
    lines(two, "theirs")
    streams = follow.Streams()
    out = streams([first, late, mine])
    events = [json.loads(block.split("data: ", 1)[1]) for block in out[first].decode().strip().split("\n\n")]
    assert [e["text"] for e in events] == ["after", "again"]
    assert out[first].decode().startswith("id: ") and "event: line" in out[first].decode()
    assert out[late].count(b"event: line") == 3  # from its own cursor (a Last-Event-ID of 0)
    assert b"theirs" in out[mine] and b"after" not in out[mine]
    assert streams([first, late, mine]) == {}  # nothing new
    lines(one, "more")
    assert b"more" in streams([first])[first]


def test_one_worker_collects_a_follow_at_a_time(client, settings):
    ident = create_deployment(client)
    follow.follow(ident)
    a, b = follow.Collectors(settings, "worker-a"), follow.Collectors(settings, "worker-b")
    now = utcnow()
    assert a._hold(ident, now) and not b._hold(ident, now)
    assert a._hold(ident, now)  # renewing its own
    assert b._hold(ident, now + follow.LEASE + dt.timedelta(seconds=1))  # a lease that lapsed is taken over


def test_followers_keep_a_follow_alive_and_it_ends_after_they_leave(client, settings):
    ident = create_deployment(client)
    follow.follow(ident)
    OutputFollow.update(until=utcnow() - follow.FOLLOW_TTL * 2).execute()
    lines(ident, "old")
    OutputLine.update(created_at=utcnow() - follow.KEEP * 2).execute()
    follow.Collectors(settings, "w").tick()
    assert OutputFollow.select().count() == 0 and OutputLine.select().count() == 0


def test_a_host_is_reached_as_ansible_reaches_it():
    local = ContainerHost("h1", 1024, (20000, 20010), connection="local")
    assert follow.host_command(local, ["podman", "ps"]) == ["podman", "ps"]
    remote = ContainerHost("h2", 1024, (20000, 20010), address="10.0.0.5", port=2222, user="root",
                           key_file="/k", ssh_args="-o UserKnownHostsFile=/kh")
    argv = follow.host_command(remote, ["podman", "logs", "--since", "a b"])
    assert argv[:1] == ["ssh"] and "StrictHostKeyChecking=yes" in argv and "UserKnownHostsFile=/kh" in argv
    assert argv[-2:] == ["root@10.0.0.5", "podman logs --since 'a b'"] and argv[argv.index("-p") + 1] == "2222"


def test_following_needs_our_server_and_an_existing_deployment(client):
    ident = create_deployment(client)
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/output", params={"follow": "true"}, headers=auth())
    assert resp.status_code == 503 and resp.json["error"]["code"] == "follow_unavailable"
    other = client.simulate_get(f"/api/deploy/apps/{ident}/output", params={"follow": "true"},
                                headers=auth("operator-2"))
    assert other.status_code == 403
    bad = client.simulate_get(f"/api/deploy/apps/{ident}/output", params={"follow": "maybe"}, headers=auth())
    assert bad.status_code == 422


def test_a_run_stream_sends_every_line_from_the_first_then_the_run_then_ends(client):
    ident = create_deployment(client)
    run_id = "5b0f2c3e-0000-4000-8000-000000000001"
    Run.create(id=run_id, deployment=ident, command_encrypted="x", timeout_s=60, state="running",
               inserted_at=utcnow())
    lines(run_id, "one", "two")
    lines(ident, "the app's own")
    streams = follow.RunStreams(lambda run: json.dumps({"run": {"id": str(run.id), "state": run.state}}))
    f = follow.Follower(run_id, "operator-1", 0)
    first = streams([f])[f]
    assert first.count(b"event: line") == 2 and b"app's own" not in first and b"event: end" not in first
    assert streams([f]) == {}  # running, nothing new
    lines(run_id, "three")
    Run.update(state="failed", exit_code=4).where(Run.id == run_id).execute()
    last = streams([f])[f].decode()
    assert last.index("three") < last.index("event: end") and '"state": "failed"' in last
    assert streams([f]) == {f: None}  # then the stream ends
    resumed = follow.Follower(run_id, "operator-1", 0)  # a late follower gets it all, and the end
    assert streams([resumed])[resumed].count(b"event: line") == 3
    Run.delete().where(Run.id == run_id).execute()  # a run pruned meanwhile ends its stream
    gone = follow.Follower(run_id, "operator-1", 0)
    assert streams([gone])[gone].count(b"event: line") == 3 and streams([gone]) == {gone: None}


def test_following_a_run_is_its_owners_only(client):
    ident = create_deployment(client)
    run_id = "5b0f2c3e-0000-4000-8000-000000000002"
    Run.create(id=run_id, deployment=ident, command_encrypted="x", timeout_s=60, state="queued", inserted_at=utcnow())
    path = f"/api/deploy/apps/{ident}/runs/{run_id}"
    assert client.simulate_get(path, params={"follow": "true"}, headers=auth("operator-2")).status_code == 403
    unknown = client.simulate_get(path[:-1] + "9", params={"follow": "true"}, headers=auth())
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "run_not_found"
    mine = client.simulate_get(path, params={"follow": "true"}, headers=auth())
    assert mine.status_code == 503 and mine.json["error"]["code"] == "follow_unavailable"  # not our server


def test_a_restart_is_followed_in_both_containers_while_they_overlap(client, settings, podman):
    ident = create_deployment(client)
    labels = {"buddo.deployment_id": ident, "buddo.instance": settings.instance}
    podman.add("c-old", labels, created=time.time() - 60)
    podman.print("c-old", "before the follow", at=stamp(-60))
    podman.print("c-old", "serving")
    collector = follow.Collector(ident, LOCAL, settings.instance, settings.secret_key)
    collector.start()
    try:
        wait_for(lambda: stored(ident) == [("c-old", "stdout", "serving")], "the serving container's line")
        # A restart: the new container starts beside the serving one, which prints on until
        # the new one is healthy.
        podman.add("c-new", labels)
        podman.print("c-new", "booting")
        podman.print("c-old", "still serving")
        wait_for(lambda: ("c-new", "stdout", "booting") in stored(ident), "the new container's first line")
        podman.print("c-old", "stopping")
        podman.set("c-old", state="exited")
        podman.print("c-new", "ready", stream="stderr")
        wait_for(lambda: ("c-new", "stderr", "ready") in stored(ident)
                 and ("c-old", "stdout", "stopping") in stored(ident), "the last lines of both")
        lines = stored(ident)
        assert [text for container, _, text in lines if container == "c-old"] == ["serving", "still serving",
                                                                                  "stopping"]
        assert [text for container, _, text in lines if container == "c-new"] == ["booting", "ready"]
        assert lines.index(("c-new", "stdout", "booting")) < lines.index(("c-old", "stdout", "stopping"))
    finally:
        collector.stop()
        collector.join(10)


def test_a_container_started_again_is_followed_again_and_a_stop_ends_every_follow(client, settings, podman):
    ident = create_deployment(client, env_vars={"TOKEN": "s3cret-value"})
    labels = {"buddo.deployment_id": ident, "buddo.instance": settings.instance}
    podman.add("c-app", labels, created=time.time() - 60)
    podman.add("c-other", labels, created=time.time() - 60)
    podman.print("c-app", "up with s3cret-value")
    collector = follow.Collector(ident, LOCAL, settings.instance, settings.secret_key)
    collector.start()
    try:
        wait_for(lambda: len(stored(ident)) == 1, "the first line")
        podman.print("c-app", "crashed", stream="stderr")
        podman.set("c-app", state="exited")
        wait_for(lambda: "c-app" not in collector.follows, "the end of its follow")
        podman.set("c-app", state="running", started_at=int(time.time()) + 1)  # a heal's podman start
        podman.print("c-app", "up again")
        wait_for(lambda: len(stored(ident)) == 3, "the line after its start")
        assert stored(ident) == [("c-app", "stdout", f"up with {MASK}"), ("c-app", "stderr", "crashed"),
                                 ("c-app", "stdout", "up again")]
        wait_for(lambda: len(collector.follows) == 2, "a follow of each")
        processes = [f.process for f in collector.follows.values()]
    finally:
        collector.stop()
    assert [process.wait(10) for process in processes] == [-signal.SIGKILL] * 2
    collector.join(10)
    assert not collector.is_alive()


def test_a_runs_lines_are_collected_from_its_first_and_stored_before_its_end(client, settings, podman):
    ident = create_deployment(client)
    run_id = "5b0f2c3e-0000-4000-8000-000000000003"
    podman.add("c-run", {"buddo.run_id": run_id, "buddo.instance": settings.instance}, state="created")
    follow.collect_run(settings, run_id, ident, "container-host-1", 60)
    podman.print("c-run", "first", at=stamp(-60))
    podman.set("c-run", state="running", started_at=int(time.time()))
    wait_for(lambda: len(stored(run_id)) == 1, "the run's first line while it runs")
    podman.print("c-run", "last", stream="stderr")
    podman.set("c-run", state="exited")
    follow.end_run(run_id)
    assert stored(run_id) == [("c-run", "stdout", "first"), ("c-run", "stderr", "last")]
    assert stored(ident) == []


def test_a_follow_masks_the_env_of_the_release_that_served_as_well_as_the_desired_one(client, settings):
    """While a PATCH of an env value replaces the container, the old one still prints with the old
    value: a follow that starts then masks both."""
    ident = create_deployment(client, env_vars={"TOKEN": "old-value-7c1d"})
    run_job(settings, ran(1))  # release 1 ran with the old value
    resp = client.simulate_patch(f"/api/deploy/apps/{ident}", json={"env_vars": {"TOKEN": "new-value-9e2f"}},
                                 headers=auth())
    assert resp.status_code == 200, resp.text
    collector = follow.Collector(ident, LOCAL, settings.instance, settings.secret_key)
    assert collector._secrets() == ["new-value-9e2f", "old-value-7c1d"]
