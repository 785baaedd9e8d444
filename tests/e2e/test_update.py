"""PATCH on the real stack: one env value changed in place, with no failed request, then rolled back."""

from __future__ import annotations

import time

from tests.e2e.conftest import Poller, Stack, push_busybox_image

# Says its GREETING on every page: what the env makes of the app is what a client sees.
GREETING_APP = ("mkdir -p /tmp/www && echo \"version $GREETING\" > /tmp/www/index.html && "
                "exec /bin/busybox httpd -f -p 3000 -h /tmp/www")


def test_an_env_change_serves_the_new_value_with_no_failed_request_and_a_rollback_brings_the_old_back(
        stack: Stack) -> None:
    image = push_busybox_image("greeting", GREETING_APP, {})
    created = stack.create(subdomain="e2e-patch", image=image, env_vars={"GREETING": "hello", "KEEP": "kept"})
    ident = created["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    assert "version hello" in stack.https("e2e-patch").stdout

    key = {"Idempotency-Key": f"patch-{ident}"}
    with Poller(stack, "e2e-patch", ("bonjour", "hello")) as poll:
        answers = [stack.call("PATCH", f"/api/deploy/apps/{ident}", json={"env_vars": {"GREETING": "bonjour"}},
                              headers=stack.headers() | key) for _ in range(2)]  # the second: a client's retry
        assert [a.status_code for a in answers] == [200, 200], answers[0].text
        assert answers[1].headers["Idempotent-Replayed"] == "true"
        stack.wait_for_audit(ident, "update")
        time.sleep(0.5)
    assert len(poll.codes) > 10 and set(poll.codes) == {"200"}, poll.codes
    assert set(poll.versions) == {"hello", "bonjour"} and poll.versions[-1] == "bonjour"
    assert [e["action"] for e in stack.logs(ident)].count("update") == 1
    shown = stack.call("GET", f"/api/deploy/apps/{ident}").json()["deployment"]
    assert shown["id"] == ident and shown["env_var_names"] == ["GREETING", "KEEP"]
    [container] = stack.containers("e2e-patch")
    assert {"GREETING=bonjour", "KEEP=kept"} <= set(stack.inspect(container["Id"])["Config"]["Env"])
    releases = stack.call("GET", f"/api/deploy/apps/{ident}/releases").json()["releases"]
    assert [r["number"] for r in releases] == [2, 1]

    with Poller(stack, "e2e-patch", ("bonjour", "hello")) as poll:
        assert stack.call("POST", f"/api/deploy/apps/{ident}/rollback").status_code == 200
        stack.wait_for_entry(ident, lambda e: e["action"] == "deploy" and e["status"] == "completed"
                             and (e.get("details") or {}).get("rollback_to") == 1)
        time.sleep(0.5)
    seen = list(zip(poll.codes, poll.versions, strict=False))
    assert set(poll.codes) == {"200"} and poll.versions[-1] == "hello", seen
    stack.destroy(ident)


# Its health check (a CGI) answers 500 when the env says BREAK=yes, 200 otherwise.
HEALTH_CGI = """#!/bin/busybox sh
if [ -e /tmp/broken ]; then printf 'Status: 500 Internal Server Error\\r\\n\\r\\nbroken\\n'
else printf 'Status: 200 OK\\r\\n\\r\\nok\\n'; fi
"""
CHECKED_APP = ("mkdir -p /tmp/www/cgi-bin && cp /bin/health /tmp/www/cgi-bin/health && "
               "if [ \"$BREAK\" = yes ]; then touch /tmp/broken; fi && " + GREETING_APP)


def test_a_new_container_whose_health_check_answers_500_fails_and_the_old_one_keeps_serving(stack: Stack) -> None:
    image = push_busybox_image("checked", CHECKED_APP, {"health": HEALTH_CGI})
    created = stack.create(subdomain="e2e-check", image=image, env_vars={"GREETING": "one"},
                           health_check={"path": "/cgi-bin/health", "expected_status": 200, "grace_s": 5})
    ident = created["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    assert "version one" in stack.https("e2e-check").stdout
    with Poller(stack, "e2e-check", ("one", "two")) as poll:
        resp = stack.call("PATCH", f"/api/deploy/apps/{ident}", json={"env_vars": {"GREETING": "two", "BREAK": "yes"}})
        assert resp.status_code == 200, resp.text
        entry = stack.wait_for_entry(ident, lambda e: e["action"] == "update" and e["status"] == "failed")
    assert set(poll.codes) == {"200"} and set(poll.versions) == {"one"}, list(zip(poll.codes, poll.versions,
                                                                                    strict=False))
    assert entry["details"]["rolled_back"] is True
    assert "answered HTTP 500" in entry["details"]["message"], entry
    shown = stack.call("GET", f"/api/deploy/apps/{ident}").json()["deployment"]
    assert shown["status"] == "running" and shown["env_var_names"] == ["GREETING"]
    assert len(stack.containers("e2e-check")) == 1
    stack.destroy(ident)


def test_a_tier_change_keeps_the_id_runs_the_new_limits_and_bills_a_new_cycle(stack: Stack) -> None:
    """buddo-starter (256 MB, 500 points) to buddo-pro (512 MB, 2,000 points): the same id,
    subdomain and releases; the new container has the new memory limit and serves; the unused
    part of the old cycle comes back as an adjustment and the new cycle is charged now. (The
    switch without a failed request is the env change's test above: the same replacement.)"""
    image = push_busybox_image("greeting", GREETING_APP, {})
    headers = stack.headers()
    ident = stack.create(subdomain="e2e-tier", image=image, tier="buddo-starter", env_vars={"GREETING": "tier"})["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    [before] = stack.containers("e2e-tier")
    assert stack.inspect(before["Id"])["HostConfig"]["Memory"] == 256 * 2**20
    first = stack.call("GET", "/api/deploy/billing", headers=headers).json()
    balance, seen = first["points_balance"], max((e["id"] for e in first["ledger"]), default=0)

    changed = stack.call("PATCH", f"/api/deploy/apps/{ident}", json={"tier": "buddo-pro"}, headers=headers)
    assert changed.status_code == 200, changed.text
    stack.wait_for_entry(ident, lambda e: e["action"] == "update" and e["status"] == "completed")
    assert "version tier" in stack.https("e2e-tier").stdout
    shown = changed.json()["deployment"]
    assert (shown["id"], shown["subdomain"], shown["tier"], shown["memory_limit_mb"]) == (
        ident, "e2e-tier", "buddo-pro", 512)
    [after] = [c for c in stack.containers("e2e-tier") if c["State"] == "running"]
    assert after["Id"] != before["Id"] and stack.inspect(after["Id"])["HostConfig"]["Memory"] == 512 * 2**20
    releases = stack.call("GET", f"/api/deploy/apps/{ident}/releases", headers=headers).json()["releases"]
    assert [r["number"] for r in releases] == [2, 1]

    billing = stack.call("GET", "/api/deploy/billing", headers=headers).json()
    new = [e for e in billing["ledger"] if e["id"] > seen]
    [refund] = [e for e in new if e["kind"] == "adjustment" and e["deployment_id"] == ident
                and e["details"]["reason"] == "tier_change"]
    assert 0 < refund["amount"] <= 500  # the unused part of the starter cycle, pro rata
    # The new cycle at the new price, charged now.
    [charge] = [e for e in new if e["deployment_id"] == ident and e["amount"] == -2000]
    assert charge["cycle"] == 1
    assert billing["points_balance"] == balance + sum(e["amount"] for e in new if e["track"] == "buddo_points")
    stack.destroy(ident)
