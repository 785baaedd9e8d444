"""Reconcile of one host with N deployments, against one empty playbook run in the same run.

N deployments (default 100, busybox httpd containers) are created through the API
and brought up by one reconcile (`buddo-deploy reconcile`, the cron path). Then:
- a reconcile with no drift,
- a reconcile that repairs --drift deployments (containers removed by hand),
- the baseline: one ansible-runner run of a playbook with no tasks on the same host.
Aims (issue): no-drift reconcile of 100 < 10 s, repair of 10 < 30 s.
Run: make bench-reconcile   (or .venv/bin/python bench/reconcile.py -n 20 --drift 5)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from buddo_deploy import runner  # noqa: E402

from tests.e2e.conftest import ADMIN, Stack, start_stack, stop_stack  # noqa: E402


def reconcile(stack: Stack) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = stack.cli("reconcile", "--json")
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        report = json.loads(proc.stdout)["hosts"][0] if proc.stdout.startswith("{") else {}
        raise RuntimeError(f"reconcile failed ({proc.returncode}): {report.get('message')} {proc.stderr[-2000:]}")
    return elapsed, json.loads(proc.stdout)["hosts"][0]


def empty_run(stack: Stack, root: Path, *, cold: bool = False) -> float:
    """One ansible-runner run of a playbook with no tasks: warm as a worker's runs are (after
    runner.prewarm), or ``cold`` (the real ansible-playbook, as every run was before warm.py and
    as a one-shot `buddo-deploy reconcile` of one host runs it)."""
    playbook = root / "empty.yml"
    playbook.write_text("- name: Nothing\n  hosts: container_hosts\n  gather_facts: false\n  tasks: []\n")
    launcher = runner.WARM.launcher
    if cold:
        runner.WARM.launcher = lambda: str(Path(sys.executable).with_name("ansible-playbook"))  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        result = runner.run_playbook(playbook, stack.inventory, {}, limit="container-host-1", work_dir=root / "runner")
        elapsed = time.perf_counter() - started
    finally:
        runner.WARM.launcher = launcher  # type: ignore[method-assign]
    assert result.ok, result
    return elapsed


def reconcile_timeline(stack: Stack) -> list[str]:
    """The latest reconcile job's events: where its wall time went."""
    import sqlite3

    with sqlite3.connect(stack.env["BUDDO_DATABASE_URL"].removeprefix("sqlite:///")) as db:
        job_id, started, finished = db.execute("SELECT id, started_at, finished_at FROM jobs WHERE action = "
                                               "'reconcile' ORDER BY id DESC LIMIT 1").fetchone()
        events = db.execute("SELECT created_at, event, task FROM job_events WHERE job_id = ? ORDER BY id",
                            (job_id,)).fetchall()
    lines, previous = [f"reconcile job {job_id}"], started
    for at, event, task in [*events, (finished, "job finished", "")]:
        lines.append(f"  {(dt.datetime.fromisoformat(at) - dt.datetime.fromisoformat(previous)).total_seconds():6.2f} s"
                     f"  -> {event} {task or ''}")
        previous = at
    return lines


def profile(stack: Stack, root: Path) -> None:
    import pstats

    out = root / "reconcile.prof"
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "buddo_deploy.cli", "reconcile",
                           "--json"], env=stack.env, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"profiled reconcile failed: {proc.stderr[-2000:]}")
    pstats.Stats(str(out)).sort_stats("cumulative").print_stats(25)
    print("\n".join(reconcile_timeline(stack)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--deployments", type=int, default=100)
    parser.add_argument("--drift", type=int, default=10)
    parser.add_argument("--profile", action="store_true",
                        help="also profile one no-drift reconcile (cProfile of the CLI, top 25 by cumulative time)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="buddo-bench-reconcile-"))

    def room_for_all(inventory: Path) -> list[str]:
        """Capacity for N buddo-starter deployments (256 MB): the bench measures reconcile, not placement."""
        hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
        host = hosts["container_hosts"]["hosts"]["container-host-1"]
        host["buddo_host_memory_mb"] = max(host["buddo_host_memory_mb"], 256 * args.deployments)
        (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
        return [ADMIN]

    stack = start_stack(root, room_for_all)
    # The bench's reconciles are the only runs: no worker, no health prober.
    for worker in stack.workers:
        worker.terminate()
        worker.wait()
    stack.workers.clear()
    stack.env["BUDDO_JOB_TIMEOUT"] = "1800"  # the first reconcile brings up every deployment
    ids: list[str] = []
    try:
        image = stack.push("v1")
        for i in range(args.deployments):
            resp = stack.call("POST", "/api/deploy/apps", headers=stack.headers(f"bench-op-{i}"),
                              json={"subdomain": f"bench-r{i}", "image": image, "tier": "buddo-starter"})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["deployment"]["id"])
            stack.subdomains.add(f"bench-r{i}")
        first, report = reconcile(stack)
        assert sum(1 for d in report["deployments"] if d["ok"]) == args.deployments, report
        listening = runner.prewarm()  # as a worker does at its start
        while not listening.exists():
            time.sleep(0.05)
        baseline = min(empty_run(stack, root) for _ in range(3))
        cold = min(empty_run(stack, root, cold=True) for _ in range(3))
        no_drift = []
        for _ in range(3):
            elapsed, report = reconcile(stack)
            assert not any(d["drift"] for d in report["deployments"]), report
            no_drift.append(elapsed)
        if args.profile:
            profile(stack, root)
        victims = [c["Id"] for i in range(args.drift) for c in stack.containers(f"bench-r{i}")]
        subprocess.run(["podman", "rm", "-f", "-t", "0", *victims], check=True, capture_output=True)
        repair, report = reconcile(stack)
        assert sum(1 for d in report["deployments"] if d["drift"]) == args.drift, report
        for ident in ids:
            stack.call("DELETE", f"/api/deploy/apps/{ident}", headers=stack.headers(
                f"bench-op-{ids.index(ident)}"))
        teardown, _ = reconcile(stack)
    finally:
        stop_stack(stack)
        shutil.rmtree(root, ignore_errors=True)
    quiet = min(no_drift)
    print(f"deployments: {args.deployments}, drifted: {args.drift}")
    print(f"baseline: one empty playbook run (ansible-runner): {baseline:6.2f} s (cold, without warm.py: {cold:.2f} s)")
    print(f"reconcile, no drift (best of 3):      {quiet:6.2f} s   ratio {quiet / baseline:5.2f}"
          f" (against the cold run: {quiet / cold:5.2f})   aim < 10 s")
    print(f"reconcile repairing {args.drift:3d} deployments:   {repair:6.2f} s   ratio {repair / baseline:5.2f}"
          "   aim < 30 s")
    print(f"first reconcile, bringing up {args.deployments}:  {first:6.2f} s   ratio {first / baseline:5.2f}")
    print(f"reconcile tearing down {args.deployments}:        {teardown:6.2f} s   ratio {teardown / baseline:5.2f}")


if __name__ == "__main__":
    main()
