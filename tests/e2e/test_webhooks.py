"""Webhooks on the real stack: every event of a create, restart, failed update, heal and destroy
reaches a local receiver, each signature verified with the Standard Webhooks reference
library; a receiver that answers 500 is retried, and its delivery log shows it."""

from __future__ import annotations

import subprocess
import time

from tests.e2e.conftest import Stack
from tests.helpers import Receiver

SUBDOMAIN = "e2e-hooks"


def test_every_event_of_a_story_is_delivered_signed_and_a_failing_receiver_is_retried(stack: Stack) -> None:
    good, bad = Receiver(), Receiver()
    bad.status = 500
    try:
        registered = stack.call("POST", "/api/deploy/webhooks", json={"url": good.url})
        assert registered.status_code == 201, registered.text
        secret = registered.json()["secret"]
        failing = stack.call("POST", "/api/deploy/webhooks", json={"url": bad.url, "event_types": ["deploy.succeeded"]})
        assert failing.status_code == 201, failing.text

        ident = stack.create(subdomain=SUBDOMAIN, image=stack.push("v1"))["id"]
        assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
        assert stack.call("POST", f"/api/deploy/apps/{ident}/restart").status_code == 200
        stack.wait_for_audit(ident, "restart")
        broken = stack.call("PATCH", f"/api/deploy/apps/{ident}", json={"image": "127.0.0.1:5000/e2e/none:v0"})
        assert broken.status_code == 200, broken.text
        stack.wait_for_entry(ident, lambda e: e["action"] == "update" and e["status"] == "failed", timeout=120)
        subprocess.run(["podman", "rm", "-f", *[c["Id"] for c in stack.containers(SUBDOMAIN)]], check=True,
                       capture_output=True)
        stack.wait_for_entry(ident, lambda e: e["action"] == "restart" and e["status"] == "completed"
                             and (e["details"] or {}).get("reason") == "container_exited", timeout=90)
        stack.destroy(ident)

        wanted = ["deploy.succeeded", "restart.succeeded", "update.failed", "deployment.rolled_back",
                  "deployment.unhealthy", "deployment.healed", "deployment.destroyed"]
        deadline = time.monotonic() + 60
        while len(good.received) < len(wanted) and time.monotonic() < deadline:
            time.sleep(0.2)
        messages = good.verified(secret)  # raises unless every signature and timestamp verifies
        assert sorted(m["type"] for m in messages) == sorted(wanted), messages
        assert [m["type"] for m in messages][0] == "deploy.succeeded"
        assert {m["data"]["deployment_id"] for m in messages} == {ident}
        assert len({r["headers"]["webhook-id"] for r in good.received}) == len(wanted)

        # The failing receiver: its one event tried again 5 s after the first attempt.
        log_url = f"/api/deploy/webhooks/{failing.json()['webhook']['id']}/deliveries"
        deadline = time.monotonic() + 30
        while len(bad.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(bad.received) >= 2 and len({r["headers"]["webhook-id"] for r in bad.received}) == 1
        [delivery] = stack.call("GET", log_url).json()["deliveries"]
        assert delivery["attempts"] >= 2 and delivery["last_status"] == 500 and delivery["state"] == "pending"
    finally:
        good.server.shutdown()
        bad.server.shutdown()
