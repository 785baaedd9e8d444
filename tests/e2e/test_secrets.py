"""Secrets never reach a file: a whole lifecycle with a worker killed mid-run, then every file searched.

The worker keeps every ansible-runner data dir (BUDDO_KEEP_RUNNER_DATA=1), so what a
run wrote (artifacts/<id>/command holds its environment, the fact cache, stdout) is
still there to search, as it would be after any run a SIGKILL cut short.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.conftest import Stack
from tests.helpers import JWT_SECRET

SUBDOMAIN = "e2e-secret"


def runs_of(stack: Stack, subdomain: str) -> set[Path]:
    """The kept runner data dirs of the playbook runs for ``subdomain`` that ansible-runner started."""
    return {extravars.parents[1] for extravars in (stack.root / "var" / "runner").glob("*/env/extravars")
            if subdomain in extravars.read_text() and any(extravars.parents[1].glob("artifacts/*/command"))}


def files_under(*roots: Path) -> Iterator[tuple[Path, bytes]]:
    """Every regular file under ``roots`` with its content (tmpfs is shared: files may vanish)."""
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = Path(directory) / name
                if path.is_file() and not path.is_symlink():
                    try:
                        yield path, path.read_bytes()
                    except FileNotFoundError:
                        continue


def in_flight() -> list[Path]:
    """The secret files of the playbook runs going on now (each is removed when its run ends)."""
    bases = (Path("/dev/shm"), Path(tempfile.gettempdir()))  # noqa: S108
    return [path for base in bases for path in base.glob("buddo-secrets-*/run-*")]


def test_secrets_stay_out_of_every_file(stack: Stack) -> None:
    value = "s3cr3t-value-7f1e2d"
    payload = "{{ lookup('pipe', 'touch /tmp/buddo-pwned') }}"
    created = stack.create(subdomain=SUBDOMAIN, image=stack.push("v1"),
                           env_vars={"API_KEY": value, "TEMPLATE": payload})
    ident = created["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    [container] = stack.containers(SUBDOMAIN)
    env = stack.inspect(container["Id"])["Config"]["Env"]
    assert f"TEMPLATE={payload}" in env and f"API_KEY={value}" in env  # data, never templated
    assert not Path("/tmp/buddo-pwned").exists()

    # A restart whose run dies with its worker (SIGKILL: no cleanup of any kind).
    before = runs_of(stack, SUBDOMAIN)
    assert stack.call("POST", f"/api/deploy/apps/{ident}/restart").status_code == 200
    deadline = time.monotonic() + 60
    while not runs_of(stack, SUBDOMAIN) - before:
        assert time.monotonic() < deadline, "the restart's playbook run never started"
        time.sleep(0.1)
    stack.crash_workers()
    assert stack.wait_for_audit(ident, "restart", timeout=180)["details"]["attempt"] == 2
    stack.call("POST", f"/api/deploy/apps/{ident}/stop")
    stack.wait_for_audit(ident, "stop")
    stack.destroy(ident)
    # The destroy is recorded when its run reports, a moment before that run ends and removes
    # its secret file: wait for every run in flight to end (a file kept after that is a leak).
    deadline = time.monotonic() + 60
    while in_flight() and time.monotonic() < deadline:
        time.sleep(0.1)

    needles = {
        "the JWT secret": JWT_SECRET,
        "the encryption key": stack.env["BUDDO_SECRET_KEY"],
        "the database password": stack.env["PGPASSWORD"],
        "the Cloudflare token": stack.env["BUDDO_CLOUDFLARE_API_TOKEN"],
        "an env var value": value,
    }
    # Every file of the stack (var/: database, runner dirs, Caddy, logs) and whatever
    # runs left on tmpfs; nothing there holds one of them by design.
    temp = [p for p in Path(tempfile.gettempdir()).glob("buddo-*") if p.is_dir()]
    files = dict(files_under(stack.root, Path("/dev/shm"), *temp))  # noqa: S108
    assert stack.root / "var" / "buddo.db" in files
    assert len(runs_of(stack, SUBDOMAIN)) >= 3  # deploy, the killed restart, its retry, stop, destroy
    hits = sorted(f"{what} in {path}" for path, content in files.items() for what, needle in needles.items()
                  if needle.encode() in content)
    assert hits == []
    with sqlite3.connect(stack.root / "var" / "buddo.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert SUBDOMAIN in dump and not [what for what, needle in needles.items() if needle in dump]
