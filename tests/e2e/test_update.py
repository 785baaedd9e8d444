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
