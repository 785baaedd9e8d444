"""Anything the platform waits on has a deadline: a dripping app fails alone, on the real stack.

The app answers its first request (so it comes up), then sends every later answer a byte a
second, forever. Its health verdicts go bad on time; its batch-mate comes up; another
tenant's create reaches running while it drips; the others' health verdicts keep coming.
With DRIP_FIRST set it drips from its first answer: its deploy fails, on time, alone.
"""

from __future__ import annotations

import time

from tests.e2e.conftest import Stack, push_busybox_image

DRIP = """#!/bin/busybox sh
if [ -e /tmp/served ] || [ -n "$DRIP_FIRST" ]; then
  for c in H T T P / 1 . 0 ' ' 2 0 0 ' ' O K; do printf '%s' "$c"; /bin/busybox sleep 1; done
  /bin/busybox sleep 3600
else
  /bin/busybox touch /tmp/served
  printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n'
fi
"""


def push_drip_image() -> str:
    serve = "while true; do /bin/busybox nc -l -p 3000 -e /bin/drip; done"
    return push_busybox_image("drip", serve, {"drip": DRIP})


def status(stack: Stack, ident: str) -> dict[str, str]:
    return dict(stack.call("GET", f"/api/deploy/apps/{ident}/status").json())


def test_a_dripping_app_fails_alone_and_the_host_goes_on(stack: Stack) -> None:
    drip_image = push_drip_image()
    healthy_image = stack.push("v1", tag="deadline")
    drip = stack.create(subdomain="e2e-drip", image=drip_image)["id"]
    mate = stack.create(subdomain="e2e-drip-mate", image=healthy_image)["id"]
    for ident in (drip, mate):  # its first answer is prompt: both come up
        assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)

    # Now every answer of the drip app takes 15 s and more: its health goes bad, on time.
    deadline = time.monotonic() + 120
    while status(stack, drip)["health_status"] == "healthy":
        assert time.monotonic() < deadline, status(stack, drip)
        time.sleep(1)
    # Meanwhile the host goes on: another tenant's create comes up, and the mate's verdicts keep coming.
    before = status(stack, mate)["last_health_check"]
    other = stack.create(subdomain="e2e-drip-other", image=healthy_image)["id"]
    assert stack.wait_for(other, {"running", "failed"}, timeout=90)["status"] == "running", stack.logs(other)
    deadline = time.monotonic() + 60
    while status(stack, mate)["last_health_check"] == before:
        assert time.monotonic() < deadline, "the mate's health verdicts stopped"
        time.sleep(1)
    assert status(stack, mate)["health_status"] == "healthy"
    for ident in (drip, mate, other):
        stack.destroy(ident)


def test_an_app_that_drips_from_its_first_answer_fails_its_own_deploy_only(stack: Stack) -> None:
    drip_image = push_drip_image()
    healthy_image = stack.push("v1", tag="deadline")
    with stack.workers_paused() as resume:  # both creates queue up for one run of the host
        drip = stack.create(subdomain="e2e-drip-first", image=drip_image, env_vars={"DRIP_FIRST": "1"})["id"]
        mate = stack.create(subdomain="e2e-drip-first-mate", image=healthy_image)["id"]
        resume()
        assert stack.wait_for(mate, {"running", "failed"}, timeout=120)["status"] == "running", stack.logs(mate)
        failed = stack.wait_for(drip, {"running", "failed"}, timeout=120)
    assert failed["status"] == "failed", stack.logs(drip)
    deploy = stack.logs(drip)[1]
    assert deploy["action"] == "deploy" and deploy["status"] == "failed", deploy
    # Its own wait's deadline ended it (converge_wait_timeout), not the job's timeout.
    assert "did not answer" in str(deploy["details"]), deploy
    assert "version v1" in stack.https("e2e-drip-first-mate").stdout
    for ident in (drip, mate):
        stack.destroy(ident)
