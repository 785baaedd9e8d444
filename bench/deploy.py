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
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.timeline import job_timeline  # noqa: E402
from tests.e2e.conftest import Stack, start_stack, stop_stack  # noqa: E402


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
         "--restart", "always", "-e", "GREETING=hi", "--label", "buddo.deployment_id=bench",
         "-p", f"127.0.0.1:{port}:3000", image],
        check=True, capture_output=True,
    )
    while not answers(port):
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    subprocess.run(["podman", "rm", "-f", name], check=True, capture_output=True)
    return elapsed


def ours(stack: Stack, image: str, run: int, profile: bool = False) -> tuple[float, float]:
    subdomain = f"bench-{run}"
    started = time.perf_counter()
    ident = stack.create(subdomain=subdomain, image=image, env_vars={"GREETING": "hi"})["id"]
    while (status := stack.call("GET", f"/api/deploy/apps/{ident}/status").json()["status"]) not in {
        "running", "failed"
    }:
        time.sleep(0.05)
    if status != "running":
        raise RuntimeError(f"deploy failed: {stack.logs(ident)}")
    running = time.perf_counter() - started
    while not stack.https(subdomain).stdout.endswith("\n200"):
        time.sleep(0.05)
    first_200 = time.perf_counter() - started
    if profile:
        print("\n".join(job_timeline(stack, ident)), flush=True)
    stack.destroy(ident)
    return running, first_200


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print where each deploy's time went")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="buddo-bench-deploy-"))
    stack = start_stack(root)
    try:
        image = stack.push("v1")
        subprocess.run(["podman", "pull", "-q", image], check=True, capture_output=True)
        ours(stack, image, 99)  # warm-up: Caddy's first certificate, Python caches
        runs_ours, runs_base = [], []
        for run in range(args.runs):  # interleaved, so drift in machine load hits both
            runs_base.append(baseline(image, run))
            runs_ours.append(ours(stack, image, run, args.profile))
    finally:
        stop_stack(stack)
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(runs_base)
    running = statistics.median(r[0] for r in runs_ours)
    first = statistics.median(r[1] for r in runs_ours)
    print(f"runs: {args.runs} (median)")
    print(f"baseline podman run -d + poll port: {base:6.2f} s")
    print(f"POST /apps -> running:               {running:6.2f} s   ratio {running / base:.2f}")
    print(f"POST /apps -> first 200 via Caddy:   {first:6.2f} s   ratio {first / base:.2f}")


if __name__ == "__main__":
    main()
