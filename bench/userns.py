"""First start of an app container with and without its own user namespace (--userns=auto).

Runs buddo.deploy.app_instance (in this process, against this host's real Podman and storage
pool) to start one deployment until it answers HTTP, alternating with and without ``userns``,
on a small image and on one with many files (an id-mapped start must present every file to
the container's root). Every container keeps running until the image's series ends, as the
serving container does while its successor starts: so each --userns=auto start takes an id
range no running container holds, and pays for a layer mapped to it (a removed container's
range would be handed out again, with its mapped layer still cached, which is not what a
replacement beside a serving container sees). Prints the medians and their ratio, measured
in the same run. Run: .venv/bin/python bench/userns.py [--runs 7]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.testing import patch_module_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.buddo.deploy.plugins.modules import app_instance  # noqa: E402

SMALL = "localhost/buddo-smoke:1"  # playbooks/bootstrap.yml builds it
MANY = "localhost/buddo-bench-files:1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def module(**args: Any) -> dict[str, Any]:
    out = io.StringIO()
    with patch_module_args(args), contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        app_instance.main()
    return dict(json.loads(out.getvalue()))


def build_many_files(files: int) -> None:
    """busybox plus ``files`` small files in 100 directories, owned by root."""
    if subprocess.run(["podman", "image", "exists", MANY], check=False).returncode == 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        (root / "bin").mkdir(parents=True)
        (root / "www").mkdir()
        subprocess.run(["cp", subprocess.run(["sh", "-c", "command -v busybox"], capture_output=True, text=True,
                                             check=True).stdout.strip(), str(root / "bin" / "busybox")], check=True)
        (root / "www" / "index.html").write_text("many\n")
        for i in range(files):
            folder = root / "data" / f"d{i % 100}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i}").write_bytes(b"x" * 1024)
        subprocess.run(["tar", "-C", str(root), "-cf", f"{tmp}/rootfs.tar", "."], check=True)
        cmd = 'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]'
        subprocess.run(["podman", "import", "--change", cmd, f"{tmp}/rootfs.tar", MANY], check=True,
                       capture_output=True)


SHARED = {"instance": "buddo-bench", "wait_timeout": 30}


def first_start(image: str, userns: bool, name: str) -> float:
    item = {"deployment_id": name, "name": name, "image": image, "spec": name, "port": 8080,
            "host_ports": [free_port()], "memory_limit_mb": 64, "disk_limit_mb": 512}
    started = time.perf_counter()
    result = module(state="started", deployments=[item], userns=userns, **SHARED)
    elapsed = time.perf_counter() - started
    [entry] = result["deployments"]
    if entry["failed"]:
        raise RuntimeError(entry["msg"])
    return elapsed


def remove(names: list[str]) -> None:
    module(state="absent", deployments=[{"deployment_id": n, "name": n} for n in names], remove_image=False,
           **SHARED)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    build_many_files(args.files)
    for label, image in (("busybox (2 MB, 3 files)", SMALL), (f"{args.files} files", MANY)):
        times: dict[bool, list[float]] = {True: [], False: []}
        names: list[str] = []
        try:
            for run in range(args.runs):
                for userns in (False, True):  # alternate: the machine's noise hits both alike
                    names.append(f"bench-userns-{run}-{int(userns)}")
                    times[userns].append(first_start(image, userns, names[-1]))
        finally:
            remove(names)
        plain, mapped = statistics.median(times[False]), statistics.median(times[True])
        print(f"{label}: first start to HTTP answer, median of {args.runs}: without userns {plain:.3f} s, "
              f"with --userns=auto {mapped:.3f} s, ratio {mapped / plain:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
