"""`buddo` on the real stack: log in against a real OAuth provider (PKCE), whose tokens an API
process of the stack takes through its JWKS; then deploy, follow output, set an env value,
roll back and destroy, all with `buddo`. And `buddo apps create --wait` read off a tmux
screen: the states pass by and the URL is printed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import BIN, Stack, push_busybox_image
from tests.fakes.oidc import Provider
from tests.helpers import free_port, token, wait_until_up

# It prints its greeting reversed: env values are masked in output.
TICKER = ("(while true; do echo \"says $(echo $GREETING | /bin/busybox rev)\"; sleep 0.3; done) & mkdir -p /tmp/www && "
          "echo \"version $GREETING\" > /tmp/www/index.html && exec /bin/busybox httpd -f -p 3000 -h /tmp/www")
AUDIENCE = "buddo-e2e"


@pytest.fixture
def oidc_api(stack: Stack, tmp_path: Path) -> Iterator[tuple[Provider, str]]:
    """The provider, and a second API process of the stack (same database, same worker) that
    takes the provider's tokens."""
    provider = Provider(AUDIENCE, subject="e2e-oidc-operator")
    port = free_port()
    env = stack.env | {  # tokens: the provider's only (public-key algorithms, from its JWKS)
        "BUDDO_JWT_JWKS_URL": f"{provider.url}/jwks", "BUDDO_JWT_ALGORITHMS": "RS256",
        "BUDDO_JWT_ISSUER": provider.url, "BUDDO_JWT_AUDIENCE": AUDIENCE}
    api = subprocess.Popen([str(BIN / "buddo-deploy"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
                           env=env, stdout=(tmp_path / "api.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/deploy/openapi.json", api)
        yield provider, f"http://127.0.0.1:{port}"
    finally:
        api.terminate()
        api.wait(timeout=30)
        provider.close()


def buddo(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "buddo"), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_login_then_deploy_follow_change_roll_back_and_destroy_with_buddo(stack: Stack, oidc_api, tmp_path: Path):
    provider, api = oidc_api
    env = {**os.environ, "BUDDO_API_URL": api, "BUDDO_CONFIG_DIR": str(tmp_path / "config"), "COLUMNS": "200"}
    env.pop("BUDDO_TOKEN", None)
    login = subprocess.Popen([str(BIN / "buddo"), "login", "--issuer", provider.url, "--no-browser", "--timeout", "60"],
                             env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(login.stderr or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not any("/authorize?" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    [url] = re.findall(r"http://\S+/authorize\?\S+", "".join(lines))
    assert httpx.get(url, follow_redirects=True, timeout=30).status_code == 200  # the browser
    assert login.wait(timeout=60) == 0, lines

    image = push_busybox_image("cli", TICKER, {})
    stack.subdomains.add("e2e-cli")
    created = buddo(env, "apps", "create", "e2e-cli", "--image", image, "--tier", "btc-pro", "-e", "GREETING=hi",
                    "--wait", "--json")
    assert created.returncode == 0, created.stderr
    app = json.loads(created.stdout)
    assert app["status"] == "running" and app["subdomain"] == "e2e-cli"

    follower = subprocess.Popen([str(BIN / "buddo"), "output", "e2e-cli", "-f", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: list[str] = []
        threading.Thread(target=lambda: seen.extend(follower.stdout or []), daemon=True).start()
        deadline = time.monotonic() + 60
        while not any("says ih" in line for line in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert buddo(env, "env", "set", "e2e-cli", "GREETING=bonjour", "--wait").returncode == 0
        deadline = time.monotonic() + 90
        while not any("says ruojnob" in line for line in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("says ih" in line for line in seen), seen[-5:]
        assert any("says ruojnob" in line for line in seen), seen[-5:]  # the new container's, same stream
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    assert "version bonjour" in stack.https("e2e-cli").stdout

    releases = json.loads(buddo(env, "releases", "e2e-cli", "--json").stdout)
    assert [r["number"] for r in releases] == [2, 1]
    assert buddo(env, "rollback", "e2e-cli", "--wait").returncode == 0
    assert "version hi" in stack.https("e2e-cli").stdout
    # A one-off run: its first line shows while it still runs; buddo exits with its code.
    ran = subprocess.Popen([str(BIN / "buddo"), "run", "e2e-cli", "--", "/bin/busybox", "sh", "-c",
                            'echo early; sleep 3; echo late; exit 5'],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed: list[tuple[str, str]] = []  # (the run's state as buddo printed the line, the line)

    def run_state() -> str:
        with contextlib.closing(sqlite3.connect(stack.root / "var" / "buddo.db")) as db:
            return str(db.execute("SELECT state FROM runs WHERE deployment_id = ? ORDER BY inserted_at DESC "
                                  "LIMIT 1", (app["id"],)).fetchone()[0])

    reading = threading.Thread(target=lambda: printed.extend((run_state(), line) for line in ran.stdout or []),
                               daemon=True)
    reading.start()
    assert ran.wait(timeout=120) == 5, ran.stderr.read() if ran.stderr else ""
    reading.join(10)
    assert [line.split()[-1] for _, line in printed] == ["early", "late"], printed
    assert printed[0][0] == "running", printed  # streamed, not printed at the end
    logs = buddo(env, "logs", "e2e-cli")
    assert logs.returncode == 0 and "update" in logs.stdout and "deploy" in logs.stdout
    assert buddo(env, "apps", "destroy", "e2e-cli", "--yes").returncode == 0
    gone = buddo(env, "apps", "status", app["id"], "--wait", "--json")
    assert gone.returncode == 0 and json.loads(gone.stdout)["status"] == "destroyed", gone.stderr
    # The app is the OIDC subject's: the stack's own operator does not see it.
    mine = stack.call("GET", "/api/deploy/apps").json()["deployments"]
    assert app["id"] not in {d["id"] for d in mine}


def test_apps_create_wait_on_a_terminal_shows_the_states_and_the_url(stack: Stack, tmp_path: Path):
    session = f"buddo-e2e-{os.getpid()}"
    stack.subdomains.add("e2e-tmux")
    env = f"BUDDO_API_URL={stack.api} BUDDO_TOKEN={token('e2e-operator', client_id='e2e-client')} COLUMNS=120"
    command = (f"env {env} {BIN / 'buddo'} apps create e2e-tmux --image {stack.push('v1')} --tier btc-pro --wait; "
               f"echo EXIT=$?; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50", command], check=True)
    try:
        screen, deadline = "", time.monotonic() + 180
        while "EXIT=" not in screen and time.monotonic() < deadline:
            time.sleep(0.5)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                    check=True).stdout
        assert "EXIT=0" in screen, screen
        states = [line.strip() for line in screen.splitlines() if line.strip() in {"pending", "deploying", "running"}]
        assert states[0] == "pending" and states[-1] == "running", screen
        assert "https://e2e-tmux.localhost" in screen, screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)
    [created] = [d for d in stack.call("GET", "/api/deploy/apps").json()["deployments"] if d["subdomain"] == "e2e-tmux"]
    stack.destroy(created["id"])
