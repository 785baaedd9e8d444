"""An operator runs only images their own credentials can pull, on the real stack.

A second registry (Debian's docker-registry) behind htpasswd holds alice's private image.
Alice stores her login (PUT /registry-logins/{host}) and her deployment runs; bob, with no
login or a wrong one, is refused with the registry's reason, even once alice's pull left the
image cached on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests

from tests.e2e.conftest import PRIVATE_REGISTRY, Stack

ALICE_PASSWORD = "alice-registry-pw-7d1e"


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("private-registry")
    hashed = bcrypt.hashpw(ALICE_PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    (root / "htpasswd").write_text(f"alice:{hashed}\n")
    (root / "config.yml").write_text(json.dumps({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")}},
        "http": {"addr": PRIVATE_REGISTRY},
        "auth": {"htpasswd": {"realm": "buddo-private", "path": str(root / "htpasswd")}},
    }))
    log = (root / "registry.log").open("ab")
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(root / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://{PRIVATE_REGISTRY}/v2/", timeout=2).status_code == 401:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            raise AssertionError((root / "registry.log").read_text())
        yield PRIVATE_REGISTRY
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def push_private(stack: Stack, registry: str) -> str:
    """The stack's demo image, pushed to the private registry as alice."""
    public = stack.push("v1", tag="private")
    private = f"{registry}/alice/private-{os.getpid()}:v1"
    subprocess.run(["podman", "tag", public, private], check=True)
    auth = Path(stack.root / "alice-auth.json")
    subprocess.run(["podman", "login", "--tls-verify=false", "--authfile", str(auth), "-u", "alice",
                    "--password-stdin", registry], input=ALICE_PASSWORD, text=True, check=True, capture_output=True)
    subprocess.run(["podman", "push", "--tls-verify=false", "--authfile", str(auth), private], check=True,
                   capture_output=True)
    subprocess.run(["podman", "rmi", private], check=False, capture_output=True)
    auth.unlink()
    return private


def entries(stack: Stack, ident: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    return list(stack.call("GET", f"/api/deploy/apps/{ident}/logs", headers=headers).json()["logs"])


def wait(stack: Stack, ident: str, headers: dict[str, str], done: Callable[[list[dict[str, Any]]], bool],
         timeout: float = 120) -> list[dict[str, Any]]:
    """Bob's audit log (another operator than the stack's own) until ``done`` says so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = entries(stack, ident, headers)
        if done(found):
            return found
        time.sleep(0.5)
    raise AssertionError(entries(stack, ident, headers))


def test_an_operator_runs_only_private_images_their_own_login_can_pull(stack: Stack, private_registry: str) -> None:
    image = push_private(stack, private_registry)
    # Alice is the stack's own operator (its helpers read her deployments); bob is another.
    alice, bob = stack.headers(), stack.headers("bob-operator")
    login = f"/api/deploy/registry-logins/{private_registry}"

    # Bob first, with no login: the registry's reason, nothing runs.
    refused = stack.call("POST", "/api/deploy/apps", headers=bob, json={
        "subdomain": "e2e-reg-bob", "image": image, "tier": "btc-pro", "port": 3000})
    assert refused.status_code == 201, refused.text
    stack.subdomains.add("e2e-reg-bob")
    bob_id = refused.json()["deployment"]["id"]

    # Alice stores her login; it is write-only.
    stored = stack.call("PUT", login, headers=alice, json={"username": "alice", "password": ALICE_PASSWORD})
    assert stored.status_code == 201, stored.text
    assert ALICE_PASSWORD not in stored.text
    made = stack.call("POST", "/api/deploy/apps", headers=alice, json={
        "subdomain": "e2e-reg-alice", "image": image, "tier": "btc-pro", "port": 3000})
    assert made.status_code == 201, made.text
    stack.subdomains.add("e2e-reg-alice")
    alice_id = made.json()["deployment"]["id"]

    failed = wait(stack, bob_id, bob, lambda log: any(e["status"] == "failed" for e in log))
    assert stack.call("GET", f"/api/deploy/apps/{bob_id}", headers=bob).json()["deployment"]["status"] == "failed"
    reason = json.dumps(failed)
    assert "could not be pulled" in reason and ("unauthorized" in reason or "authentication required" in reason), reason
    assert stack.wait_for(alice_id, {"running", "failed"})["status"] == "running", stack.logs(alice_id)
    assert "version v1" in stack.https("e2e-reg-alice").stdout

    # Alice's pull left the image on the host: bob's restart still asks the registry (with a
    # wrong login this time) and is refused again; nothing of bob's runs.
    assert subprocess.run(["podman", "image", "exists", image], check=False).returncode == 0
    wrong = stack.call("PUT", login, headers=bob, json={"username": "alice", "password": "guessed"})
    assert wrong.status_code == 201, wrong.text
    assert stack.call("POST", f"/api/deploy/apps/{bob_id}/restart", headers=bob).status_code == 200
    log = wait(stack, bob_id, bob, lambda log: any(e["action"] == "restart" and e["status"] == "failed" for e in log))
    assert stack.containers("e2e-reg-bob") == []
    reason = json.dumps([e for e in log if e["action"] == "restart"])
    assert "unauthorized" in reason or "authentication required" in reason, reason

    # The password reached no file of the stack.
    hits = subprocess.run(["grep", "-rl", ALICE_PASSWORD, str(stack.root)], capture_output=True, text=True,
                          check=False).stdout
    assert hits == "", hits
    for ident, headers in ((alice_id, alice), (bob_id, bob)):
        assert stack.call("DELETE", f"/api/deploy/apps/{ident}", headers=headers).status_code == 200
