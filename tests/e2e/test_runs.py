"""One-off runs on the real stack: a command in a new container of the current release, with
the app's env (masked in its output), limits and network; its exit code; a run that overstays
is stopped; nothing of it is left, and the app served throughout."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import requests

from tests.e2e.conftest import Stack

SUBDOMAIN = "e2e-runs"


def run(stack: Stack, ident: str, command: list[str], timeout_s: int = 60) -> dict[str, Any]:
    started = stack.call("POST", f"/api/deploy/apps/{ident}/runs", json={"command": command, "timeout_s": timeout_s})
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    for _ in range(5):
        found = dict(stack.call("GET", location, params={"wait": "60"}, timeout=90).json()["run"])
        if found["state"] not in {"queued", "running"}:
            return found
    raise AssertionError(f"the run never ended: {found}")


def follow(stack: Stack, ident: str, command: list[str]) -> list[dict[str, Any]]:
    """Start a run and follow it (GET .../runs/{id}?follow=true): its events until the stream ends;
    a line event carries ``run_state``, the run's state read as it arrived."""
    started = stack.call("POST", f"/api/deploy/apps/{ident}/runs", json={"command": command, "timeout_s": 60})
    assert started.status_code == 202, started.text
    stream = requests.get(f"{stack.api}{started.headers['Location']}", params={"follow": "true"},
                          headers=stack.headers(), stream=True, timeout=120)
    assert stream.status_code == 200 and stream.headers["Content-Type"] == "text/event-stream", stream.text
    events: list[dict[str, Any]] = []
    kind = ""
    with stream:
        for line in stream.iter_lines(chunk_size=1):
            if line.startswith(b"event: "):
                kind = line[7:].decode()
            elif line.startswith(b"data: "):
                event = {"event": kind, "data": json.loads(line[6:])}
                if kind == "line":
                    event["run_state"] = stack.call("GET", started.headers["Location"]).json()["run"]["state"]
                events.append(event)
    return events


def test_a_run_prints_exits_with_its_code_and_one_that_overstays_is_stopped(stack: Stack) -> None:
    value = "r4n-s3cr3t-91c0"
    ident = stack.create(subdomain=SUBDOMAIN, image=stack.push("v1"), env_vars={"API_KEY": value})["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    [app] = stack.containers(SUBDOMAIN)

    script = 'echo "key=$API_KEY"; echo oops >&2; test "$(id -u)" = 0 && exit 3'
    done = run(stack, ident, ["/bin/busybox", "sh", "-c", script])
    assert (done["state"], done["exit_code"]) == ("failed", 3), (done["error"], done["output"])
    texts = [(line["stream"], line["text"]) for line in done["output"]]
    assert ("stdout", "key=********") in texts and ("stderr", "oops") in texts, texts
    assert value not in json.dumps(done)

    ok = run(stack, ident, ["/bin/busybox", "true"])
    assert (ok["state"], ok["exit_code"]) == ("succeeded", 0), ok

    # Followed: each line as it is printed (the first while the run still runs), then the run.
    script = 'echo "first $API_KEY"; sleep 3; echo second >&2; exit 4'
    events = follow(stack, ident, ["/bin/busybox", "sh", "-c", script])
    texts = [(e["data"]["stream"], e["data"]["text"]) for e in events if e["event"] == "line"]
    assert texts == [("stdout", "first ********"), ("stderr", "second")], events
    first, end = events[0], events[-1]
    assert end["event"] == "end" and first["run_state"] == "running", events
    assert (end["data"]["run"]["state"], end["data"]["run"]["exit_code"]) == ("failed", 4)
    assert value not in json.dumps(events)

    slow = run(stack, ident, ["/bin/busybox", "sleep", "300"], timeout_s=2)
    assert (slow["state"], slow["exit_code"]) == ("timed_out", None), slow

    # Nothing of the runs is left; the app's own container is the one it was and serves.
    left = subprocess.run(["podman", "ps", "--all", "--format", "json", "--filter", "label=buddo.managed_by=buddo-run",
                           "--filter", f"label=buddo.run_of={ident}"], check=True, capture_output=True, text=True)
    assert json.loads(left.stdout or "[]") == []
    assert [c["Id"] for c in stack.containers(SUBDOMAIN)] == [app["Id"]]
    assert "version v1" in stack.https(SUBDOMAIN).stdout
    entries = [(e["action"], e["status"], e["details"]["state"]) for e in stack.logs(ident) if e["action"] == "run"]
    assert entries == [("run", "failed", "failed"), ("run", "completed", "succeeded"), ("run", "failed", "failed"),
                       ("run", "failed", "timed_out")]
    stack.destroy(ident)
