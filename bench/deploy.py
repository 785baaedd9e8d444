"""Time from POST /apps to `running` (and to the first 200 through Caddy) against `podman run -d`.

Both start the same image, already on the host, with the same limits and options;
the baseline polls the published port until the app answers. Median of --runs.
Run: make bench-deploy   (or .venv/bin/python bench/deploy.py --runs 5)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.timeline import job_timeline  # noqa: E402
from tests.e2e.conftest import Stack, start_stack, stop_stack  # noqa: E402

POLL_S = 0.02  # the baseline's, ours' and the restart's polls alike


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
            return True
    except OSError:
        return False


def baseline(image: str, run: int) -> float:
    name, port = f"bench-baseline-{run}", 23990 - run
    started = time.perf_counter()
    subprocess.run(
        ["podman", "run", "-d", "--name", name, "--memory", "1024m", "--cpus", "1", "--init",
         "--restart", "no", "-e", "GREETING=hi", "--label", "buddo.deployment_id=bench",
         "-p", f"127.0.0.1:{port}:3000", image],
        check=True, capture_output=True,
    )
    while not answers(port):
        time.sleep(POLL_S)
    elapsed = time.perf_counter() - started
    subprocess.run(["podman", "rm", "-f", name], check=True, capture_output=True)
    return elapsed


def ours(stack: Stack, image: str, run: int, profile: bool = False) -> tuple[float, float]:
    """POST /apps -> its status is running, and -> the first 200 through Caddy, both polled from the POST on.

    The first 200 is the figure the aim is about: the app serves before the job has finished (its run still
    reports, and the worker still records the outcome); the status is polled beside it, in a thread.
    """
    subdomain = f"bench-{run}"
    started = time.perf_counter()
    ident = stack.create(subdomain=subdomain, image=image, env_vars={"GREETING": "hi"})["id"]
    status: dict[str, Any] = {}

    def watch() -> None:
        while (now := stack.call("GET", f"/api/deploy/apps/{ident}/status").json()["status"]) not in {
            "running", "failed"
        }:
            time.sleep(POLL_S)
        status.update(status=now, at=time.perf_counter() - started)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    while not stack.https(subdomain).stdout.endswith("\n200"):
        if status.get("status") == "failed":
            raise RuntimeError(f"deploy failed: {stack.logs(ident)}")
        time.sleep(POLL_S)
    first_200 = time.perf_counter() - started
    watcher.join(timeout=120)
    if status.get("status") != "running":
        raise RuntimeError(f"deploy did not end running: {status}, {stack.logs(ident)}")
    if profile:
        print("\n".join(job_timeline(stack, ident)), flush=True)
    stack.destroy(ident)
    return status["at"], first_200


def restart(stack: Stack, ident: str, subdomain: str, version: str) -> float:
    """POST .../restart after ``version`` was pushed to the deployment's tag -> it serves ``version``."""
    started = time.perf_counter()
    resp = stack.call("POST", f"/api/deploy/apps/{ident}/restart")
    assert resp.status_code in {200, 202}, resp.text
    while True:
        answer = stack.https(subdomain).stdout
        if answer.endswith("\n200") and version in answer:
            return time.perf_counter() - started
        time.sleep(POLL_S)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print where each deploy's time went")
    parser.add_argument("--strategies", default="mitogen_linear,linear",
                        help="BUDDO_ANSIBLE_STRATEGY values to measure, one after the other in this run")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="buddo-bench-deploy-"))
    stack = start_stack(root)
    results: dict[str, tuple[list[float], list[tuple[float, float]]]] = {}
    restarts: dict[str, tuple[list[float], list[float]]] = {}
    try:
        image = stack.push("v1")
        subprocess.run(["podman", "pull", "-q", image], check=True, capture_output=True)
        for strategy in args.strategies.split(","):
            stack.restart_platform(stack.env | {"BUDDO_ANSIBLE_STRATEGY": strategy})
            ours(stack, image, 99)  # warm-up: Caddy's first certificate, Python caches
            runs_base, runs_ours = results.setdefault(strategy, ([], []))
            for run in range(args.runs):  # interleaved, so drift in machine load hits both
                runs_base.append(baseline(image, run))
                runs_ours.append(ours(stack, image, run, args.profile))
            # Restart -> the new version serves, against a bare run of that new image.
            subdomain = f"bench-restart-{strategy.replace('_', '-')}"
            ident = stack.create(subdomain=subdomain, image=image, env_vars={"GREETING": "hi"})["id"]
            stack.wait_for(ident, {"running"})
            runs_base, runs_ours = restarts.setdefault(strategy, ([], []))
            for run in range(args.runs):
                version = f"{strategy}-r{run}"
                stack.push(version)  # same tag: the restart pulls it
                runs_ours.append(restart(stack, ident, subdomain, version))
                if args.profile:
                    print("\n".join(job_timeline(stack, ident)), flush=True)
                runs_base.append(baseline(image, run))
            stack.destroy(ident)
    finally:
        stop_stack(stack)
        shutil.rmtree(root, ignore_errors=True)
    print(f"runs: {args.runs} per strategy (median); baseline: podman run -d + poll the port")
    for strategy, (runs_base, runs_ours) in results.items():
        base = statistics.median(runs_base)
        running = statistics.median(r[0] for r in runs_ours)
        first = statistics.median(r[1] for r in runs_ours)
        print(f"[{strategy}] baseline {base:5.2f} s | POST -> running {running:5.2f} s, ratio {running / base:5.2f}"
              f" | POST -> first 200 via Caddy {first:5.2f} s, ratio {first / base:5.2f}   (aim <= 5)")
    for strategy, (runs_base, runs_ours) in restarts.items():
        base, ours_s = statistics.median(runs_base), statistics.median(runs_ours)
        print(f"[{strategy}] restart -> new version serving {ours_s:5.2f} s (pull included) vs podman run -d of the"
              f" new image + poll {base:5.2f} s: ratio {ours_s / base:5.2f}")


if __name__ == "__main__":
    main()
