"""Releases and rollback on the real stack (issue 10)."""

from __future__ import annotations

import subprocess
import time

from tests.e2e.conftest import Poller, Stack


def test_rollback_from_a_broken_v3_to_v2_without_a_failed_request(stack: Stack) -> None:
    image = stack.push("v2", tag="rb")
    ident = stack.create(subdomain="e2e-rollback", image=image)["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    # v3 answers, but wrongly: a restart makes it release 2 (and moves the tag off v2).
    stack.push("v3-broken", tag="rb")
    assert stack.call("POST", f"/api/deploy/apps/{ident}/restart").status_code == 200
    stack.wait_for_audit(ident, "restart")
    releases = stack.call("GET", f"/api/deploy/apps/{ident}/releases").json()["releases"]
    assert [r["number"] for r in releases] == [2, 1], releases
    v3, v2 = releases
    assert v3["image_digest"] != v2["image_digest"] and all(r["kept"] for r in releases)
    assert "version v3-broken" in stack.https("e2e-rollback").stdout
    # The retire after the restart pruned dangling images, but not v2's: it is a kept release.
    repository = image.rsplit(":", 1)[0]
    assert subprocess.run(["podman", "image", "exists", f"{repository}@{v2['image_digest']}"],
                          check=False).returncode == 0

    with Poller(stack, "e2e-rollback", ("v3-broken", "v2")) as poll:
        resp = stack.call("POST", f"/api/deploy/apps/{ident}/rollback")
        assert resp.status_code == 200, resp.text
        entry = stack.wait_for_entry(ident, lambda e: e["action"] == "deploy" and e["status"] in {
            "completed", "failed"} and (e["details"] or {}).get("rollback_to") == 1)
        time.sleep(0.5)
    assert entry["status"] == "completed", entry
    assert len(poll.codes) > 20 and set(poll.codes) == {"200"}, poll.codes
    assert set(poll.versions) == {"v3-broken", "v2"} and poll.versions[-1] == "v2", set(poll.versions)

    [container] = stack.containers("e2e-rollback")
    assert container["Image"] == f"{repository}@{v2['image_digest']}"
    newest = stack.call("GET", f"/api/deploy/apps/{ident}/releases").json()["releases"][0]
    assert (newest["number"], newest["image_digest"], newest["pinned"], newest["rollback_of"]) == (
        3, v2["image_digest"], True, 1)
    deployment = stack.call("GET", f"/api/deploy/apps/{ident}").json()["deployment"]
    assert deployment["image_digest"] == v2["image_digest"] and deployment["status"] == "running"

    # A release that does not exist: 422, nothing changed.
    resp = stack.call("POST", f"/api/deploy/apps/{ident}/rollback", json={"release": 42})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "release_not_found"
    stack.destroy(ident)
    # The destroy removed the kept images' tags with the containers: nothing of the app stays.
    assert subprocess.run(["podman", "image", "exists", f"{repository}@{v2['image_digest']}"],
                          check=False).returncode != 0
