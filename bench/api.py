"""Throughput and latency of GET /api/deploy/apps/{id}/status against a bare Falcon app.

Both run under gunicorn with the same settings in the same run; wrk drives them
one after the other. Prints requests/s, p50 and p99 for each and the ratio.
Run: make bench-api   (or .venv/bin/python bench/api.py --duration 10)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import JWT_SECRET, PRODUCTION_AUTH, token  # noqa: E402


def start(app: str, port: int, workers: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
           "--chdir", str(ROOT / "bench")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.1)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
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
    }
    subprocess.run([sys.executable, "-m", "buddo_deploy.cli", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    header = f"Authorization: Bearer {token('bench-operator')}"
    procs = []
    try:
        api = start("buddo_deploy.wsgi:app", 18931, args.workers, env)
        procs.append(api)
        created = requests.post("http://127.0.0.1:18931/api/deploy/apps", headers={"Authorization": header[15:]},
                                json={"subdomain": "bench", "image": "ghcr.io/bench/app:1", "tier": "btc-pro"},
                                timeout=10)
        created.raise_for_status()
        ident = created.json()["deployment"]["id"]
        bare = start("bare_app:app", 18932, args.workers, env)
        procs.append(bare)
        path = f"/api/deploy/apps/{ident}/status"
        wrk(f"http://127.0.0.1:18931{path}", header, 1, args.connections)  # warm-up
        wrk(f"http://127.0.0.1:18932{path}", header, 1, args.connections)
        ours = wrk(f"http://127.0.0.1:18931{path}", header, args.duration, args.connections)
        base = wrk(f"http://127.0.0.1:18932{path}", header, args.duration, args.connections)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"gunicorn --workers {args.workers}, wrk -c {args.connections} -d {args.duration}s")
    print(f"{'':10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in (("buddo", ours), ("bare", base)):
        print(f"{name:10} {row['rps']:10.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f}")
    print(f"ratio (buddo/bare throughput): {ours['rps'] / base['rps']:.2f}")


if __name__ == "__main__":
    main()
