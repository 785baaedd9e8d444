"""The API under `buddo-deploy serve`'s server setup, against a bare Falcon app in the same run.

1. Throughput and latency of GET /api/deploy/apps/{id}/status (wrk), ours and a bare
   Falcon app answering the same JSON (no auth, no database), both under gunicorn with
   gunicorn_conf.py (the gthread worker of serving.py, --workers/--threads as serve has
   them), in alternating rounds. Prints requests/s, p50 and p99 of each (medians) and the
   ratio. GUNICORN_CMD_ARGS="--worker-class sync" (or gthread) measures another worker.
2. App output: time to an answer of GET .../output (p50, p95) while three operators poll
   their new apps' output, the time until their first lines, and the reads that cost; a
   stand-in worker answers the reads (``--read-s``: how long a read takes; the real one is
   a short playbook run).
3. Availability: another operator's GET /api/deploy/tiers (p50, p95, max) while six
   slowloris connections trickle request heads and the three pollers run.
   ``--against-sync`` measures 1. and 3. on gunicorn's sync workers too (the server before
   serving.py: each slow client holds a whole worker; a request can take 30 s and more).
Run: make bench-api   (or .venv/bin/python bench/api.py --duration 10)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "api")]

from tests.helpers import JWT_SECRET, PRODUCTION_AUTH, Slowloris, free_port, token  # noqa: E402

CONFIG = "python:buddo_deploy.gunicorn_conf"


def start(app: str, port: int, workers: int, threads: int, env: dict[str, str],
          *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gunicorn", app, "--config", CONFIG, "--bind", f"127.0.0.1:{port}",
           "--workers", str(workers), "--threads", str(threads), "--chdir", str(ROOT / "bench"), *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=5)
            return proc
        except requests.RequestException:
            time.sleep(0.1)
    proc.terminate()
    proc.wait(timeout=10)
    raise RuntimeError(f"{app} did not start")


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise RuntimeError(f"cannot parse wrk latency {value!r}")
    number, unit = match.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, header: str, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s", "--latency", "-H", header, url],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} non-2xx responses")
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def bearer(operator: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(operator)}"}


def create(base: str, operator: str, subdomain: str) -> str:
    created = requests.post(f"{base}/api/deploy/apps", headers=bearer(operator), timeout=10,
                            json={"subdomain": subdomain, "image": "ghcr.io/bench/app:1", "tier": "btc-pro"})
    created.raise_for_status()
    return str(created.json()["deployment"]["id"])


class StandInWorker:
    """Answers output reads as `buddo-deploy worker` would, after ``read_s`` (no Ansible here)."""

    def __init__(self, env: dict[str, str], read_s: float) -> None:
        self.env, self.read_s = env, read_s
        self.stop = threading.Event()
        self.reads = 0
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        from buddo_deploy import jobqueue
        from buddo_deploy.db import open_database
        from buddo_deploy.results import PlaybookResult
        from buddo_deploy.services import output

        db = open_database(self.env["BUDDO_DATABASE_URL"])
        lines = [{"at": f"2026-12-05T10:00:{i:02d}Z", "stream": "stdout", "text": f"line {i}"} for i in range(60)]
        while not self.stop.is_set():
            job = jobqueue.claim("bench-worker", 30)
            if job is None:
                self.stop.wait(0.05)  # BUDDO_WORKER_POLL
                continue
            if job.action != "output":  # the creates' converges: nothing to run here
                jobqueue.finish(job, "bench-worker", succeeded=True)
                continue
            found = output.start(job, "bench-worker", self.env["BUDDO_SECRET_KEY"])
            if found is None:
                continue
            time.sleep(self.read_s)
            stats = {"buddo_output": {"lines": lines, "container": {"id": "c", "name": "n", "state": "running",
                                                                    "exit_code": None}}}
            output.finish(job, "bench-worker", PlaybookResult(status="successful", rc=0, stats=stats),
                          found[3])
            self.reads += 1
        db.close()


def poll_output(base: str, operator: str, ident: str, until: float, times: list[float], codes: Counter[int],
                first_lines: list[float]) -> None:
    """One operator polling its app's output as a `logs -f` would: ask, then again after
    Retry-After (202) or a second."""
    began = time.perf_counter()
    with requests.Session() as session:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                resp = session.get(f"{base}/api/deploy/apps/{ident}/output", params={"tail": "20"},
                                   headers=bearer(operator), timeout=60)
            except requests.RequestException:
                times.append(time.perf_counter() - started)
                codes[0] += 1  # no answer
                continue
            times.append(time.perf_counter() - started)
            codes[resp.status_code] += 1
            if resp.status_code == 200 and began is not None:
                first_lines.append(time.perf_counter() - began)
                began = None
            time.sleep(float(resp.headers.get("Retry-After", "1")) if resp.status_code == 202 else 1.0)


def under_load(base: str, port: int, idents: dict[str, str], duration: float, slowloris: int) -> dict[str, Any]:
    """Output pollers (and slowloris connections) for ``duration``; another operator's /tiers meanwhile."""
    until = time.monotonic() + duration
    output_s: list[float] = []
    first_lines: list[float] = []
    codes: Counter[int] = Counter()
    pollers = [threading.Thread(target=poll_output, args=(base, op, ident, until, output_s, codes, first_lines))
               for op, ident in idents.items()]
    slow = Slowloris(f"http://127.0.0.1:{port}", slowloris, interval=0.5) if slowloris else None
    tiers_s: list[float] = []
    try:
        time.sleep(0.3)
        for thread in pollers:
            thread.start()
        while time.monotonic() < until:
            started = time.perf_counter()
            resp = requests.get(f"{base}/api/deploy/tiers", headers=bearer("bystander"), timeout=300)
            resp.raise_for_status()
            tiers_s.append(time.perf_counter() - started)
            time.sleep(0.2)
        for thread in pollers:
            thread.join()
    finally:
        if slow is not None:
            slow.close()
    return {"output_s": output_s, "codes": codes, "tiers_s": tiers_s, "first_lines_s": first_lines}


def show(label: str, values: list[float]) -> str:
    return (f"{label}: n={len(values)} p50 {percentile(values, 50) * 1000:.1f} ms, "
            f"p95 {percentile(values, 95) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms")


def throughput(urls: dict[str, str], header: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """wrk against each URL in alternating rounds; the medians (the other processes of a
    small machine move them all alike)."""
    for url in urls.values():
        wrk(url, header, 1, args.connections)  # warm-up
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    for _ in range(args.rounds):
        for name, url in urls.items():
            rounds[name].append(wrk(url, header, args.duration, args.connections))
    return {name: median_row(rows) for name, rows in rounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run and each load phase")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs of each app, alternating (medians)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--read-s", type=float, default=1.5, help="how long the stand-in worker takes per read")
    parser.add_argument("--against-sync", action="store_true",
                        help="also measure gunicorn's sync workers (the server before serving.py); slow")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk; `make bench-api` does it)")
    tmp = Path(tempfile.mkdtemp(prefix="buddo-bench-"))
    env = os.environ | {
        "BUDDO_VAR_DIR": str(tmp), "BUDDO_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "BUDDO_JWT_SECRET": JWT_SECRET, "BUDDO_SECRET_KEY": "bench", **PRODUCTION_AUTH,
        # Rate limiting stays on (it is part of the cost), with a budget the bench cannot exhaust.
        "BUDDO_RATE_LIMIT_READ": "1000000000", "BUDDO_RATE_LIMIT_WRITE": "1000000000",
        "BUDDO_RATE_LIMITS_ENABLED": os.environ.get("BUDDO_RATE_LIMITS_ENABLED", "true"),
        # The create below pays its first cycle (btc-pro).
        "BUDDO_BILLING_STARTING_SATS": "1000000",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "api"), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run([sys.executable, "-m", "buddo_deploy.cli", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    header = f"Authorization: Bearer {token('bench-operator')}"
    servers = {"buddo": ("buddo_deploy.wsgi:app", args.threads), "bare": ("bare_app:app", args.threads)}
    if args.against_sync:
        servers |= {"buddo sync": ("buddo_deploy.wsgi:app", 1), "bare sync": ("bare_app:app", 1)}
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    worker = StandInWorker(env, args.read_s)
    try:
        for name, (app, threads) in servers.items():
            ports[name] = free_port()
            extra = ("--worker-class", "sync") if name.endswith("sync") else ()
            procs.append(start(app, ports[name], args.workers, threads, env, *extra))
        base = f"http://127.0.0.1:{ports['buddo']}"
        path = f"/api/deploy/apps/{create(base, 'bench-operator', 'bench')}/status"
        rows = throughput({name: f"http://127.0.0.1:{port}{path}" for name, port in ports.items()}, header, args)

        pollers = {f"poller-{i}": create(base, f"poller-{i}", f"poll-{i}") for i in range(3)}
        worker.thread.start()
        quiet = under_load(base, ports["buddo"], pollers, args.duration, slowloris=0)
        loaded = under_load(base, ports["buddo"], pollers, args.duration, slowloris=6)
        reads = worker.reads
        sync = None
        if args.against_sync:
            sync = under_load(f"http://127.0.0.1:{ports['buddo sync']}", ports["buddo sync"], pollers,
                              args.duration, slowloris=6)
    finally:
        worker.stop.set()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"GET .../status: gunicorn {CONFIG} --workers {args.workers} --threads {args.threads} "
          f"(sync: --worker-class sync), wrk -c {args.connections} -d {args.duration}s, "
          f"median of {args.rounds} alternating rounds")
    print(f"{'':12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in rows.items():
        print(f"{name:12} {row['rps']:8.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f}")
    print(f"ratio (buddo/bare throughput): {rows['buddo']['rps'] / rows['bare']['rps']:.2f}")
    if args.against_sync:
        print(f"ratio on sync workers (buddo sync/bare sync): "
              f"{rows['buddo sync']['rps'] / rows['bare sync']['rps']:.2f}")
    print(f"\nGET .../output, 3 operators polling their new apps ({args.duration} s; the stand-in worker "
          f"takes {args.read_s:g} s a read; answers {dict(sorted(quiet['codes'].items()))}):")
    print("  " + show("time to an answer", quiet["output_s"]))
    print("  " + show("time to the first lines (202, Retry-After, 200)", quiet["first_lines_s"]))
    print(f"  reads the worker ran: {reads} for "
          f"{sum(quiet['codes'].values()) + sum(loaded['codes'].values())} requests")
    print("\nanother operator's GET /tiers, every 0.2 s:")
    print("  " + show("beside 3 output pollers", quiet["tiers_s"]))
    print("  " + show("beside 3 output pollers + 6 slowloris", loaded["tiers_s"]))
    print("  " + show(f"  (the pollers' GET .../output: {dict(sorted(loaded['codes'].items()))})",
                      loaded["output_s"]))
    if sync is not None:
        print("  " + show(f"sync workers, 3 output pollers + 6 slowloris "
                          f"(output: {dict(sorted(sync['codes'].items()))})", sync["tiers_s"]))


if __name__ == "__main__":
    main()
