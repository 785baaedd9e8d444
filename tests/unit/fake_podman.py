"""A stand-in for the podman commands app_instance runs, for unit tests of the module.

State (containers, networks, images) lives in ``state.json`` beside the script, every call is
appended to ``calls.jsonl`` with its start and end; a file lock serialises the state, not the
calls, so calls of different deployments overlap as real ones do. Images whose name contains
``missing`` cannot be pulled, those containing ``private`` only with the auth file
``{"auths": {"registry.test": ...}}`` podman is given; ``create`` of an image containing
``echo-env`` fails and prints the env it read (to test masking); ``create`` takes
``FAKE_PODMAN_RUN_SECONDS``. Secrets (``secret create NAME -``) keep their data in the state.

``logs --follow`` (the output collectors', services/follow.py) reads what a container printed
from ``logs/<id>`` beside the script, one ``<RFC 3339 time> <stdout|stderr> <text>`` a line as
the test appends them, the lines after ``--since`` to the stream they were printed to, until
the container does not run any more (or is gone). A container's ``created`` and ``started_at``
(Unix seconds, as the state gives them) are podman ps's ``Created`` and ``StartedAt``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(os.environ.get("FAKE_PODMAN_DIR", Path(__file__).resolve().parent))


def load() -> dict[str, Any]:
    path = HERE / "state.json"
    state = json.loads(path.read_text()) if path.exists() else {"containers": [], "networks": [], "images": []}
    state.setdefault("secrets", {})
    return dict(state)


def ps_entry(c: dict[str, Any]) -> dict[str, Any]:
    return {"Id": c["id"], "Names": [c["name"]], "State": c["state"], "Labels": c["labels"], "Image": c["image"],
            "Ports": [{"host_port": c["host_port"]}], "Created": c.get("created", 0),
            "StartedAt": c.get("started_at", 0)}


def handle(state: dict[str, Any], args: list[str], stdin: str) -> tuple[int, str, str]:
    containers: list[dict[str, Any]] = state["containers"]
    by_ref = {**{c["id"]: c for c in containers}, **{c["name"]: c for c in containers}}
    command = " ".join(args[:2])
    if args[0] == "ps" and "--quiet" in args:
        image = args[-1].removeprefix("ancestor=")
        return 0, "".join(c["id"] + "\n" for c in containers if c["image"] == image), ""
    if args[0] == "ps":  # every --filter label=key=value must match
        wanted = [args[i + 1].removeprefix("label=").split("=", 1) for i, a in enumerate(args) if a == "--filter"]
        return 0, json.dumps([ps_entry(c) for c in containers
                              if all(c["labels"].get(key) == value for key, value in wanted)]), ""
    if command == "network ls":
        return 0, json.dumps([{"name": n, "labels": {"buddo.deployment_id": n.removeprefix("buddo-")}}
                              for n in state["networks"]]), ""
    if command == "network exists":
        return (0 if args[2] in state["networks"] else 1), "", ""
    if command == "network create":
        if args[-1] in state["networks"]:
            return 125, "", f"Error: network name {args[-1]} already used\n"
        state["networks"].append(args[-1])
        return 0, args[-1] + "\n", ""
    if command == "network rm":
        state["networks"].remove(args[2])
        return 0, "", ""
    if command == "image exists":
        return (0 if args[2] in state["images"] else 1), "", ""
    if command == "image inspect":  # {{json .RepoDigests}}: what set_state(repo_digests=...) says
        if args[-1] not in state["images"]:
            return 125, "", f"Error: {args[-1]}: image not known\n"
        return 0, json.dumps(state.get("repo_digests", {}).get(args[-1], [])), ""
    if args[0] == "pull":
        if args[-1] in state.get("unknown", []):
            return 125, "", f"Error: reading manifest {args[-1].partition('@')[2]}: manifest unknown\n"
        if "missing" in args[-1]:
            return 125, "", f"Trying to pull {args[-1]}...\nError: initializing source {args[-1]}: manifest unknown\n"
        auths = json.loads(Path(args[args.index("--authfile") + 1]).read_text())["auths"]
        if "private" in args[-1] and "registry.test" not in auths:
            return 125, "", f"Error: initializing source {args[-1]}: reading manifest: unauthorized\n"
        state["images"].append(args[-1])
        return 0, "sha256:1\n", ""
    if args[0] == "create":
        image = args[-1]
        if image in state.get("vanished", []):  # another run's destroy removed the reference: once
            state["vanished"].remove(image)
            return 125, "", f"Error: {image}: image not known\n"
        if "echo-env" in image:
            return 126, "", f"Error: could not start with env {stdin.strip()}\n"
        name = args[args.index("--name") + 1]
        address, port, _ = args[args.index("--publish") + 1].split(":")
        labels = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--label")
        secrets = dict(args[i + 1].split(",")[0::2] for i, arg in enumerate(args) if arg == "--secret")
        containers.append({"id": f"id-{name}", "name": name, "state": "created", "labels": labels, "image": image,
                           "host_port": int(port), "env": stdin, "secrets": sorted(secrets)})
        return 0, f"id-{name}\n", ""
    if command == "secret inspect":
        return (0 if args[2] in state["secrets"] else 125), "", ""
    if command == "secret create":
        state["secrets"][args[2]] = stdin
        return 0, "", ""
    if command == "secret ls":
        return 0, "".join(name + "\n" for name in state["secrets"]), ""
    if command == "secret rm":
        for name in args[2:]:
            state["secrets"].pop(name, None)
        return 0, "", ""
    if args[0] == "inspect" and "{{.ID}} {{.ImageDigest}}" in args:
        return 0, "".join(f"{by_ref[ref]['id']} sha256:feed\n" for ref in args[3:] if ref in by_ref), ""
    if args[0] == "inspect" and "{{.State.Status}} {{.State.ExitCode}}" in args:
        return 0, f"{by_ref[args[-1]]['state']} 0\n", ""
    if args[0] == "inspect":
        return 0, json.dumps([{"State": {"ExitCode": 0}}]), ""
    if args[0] == "logs":
        return 0, f"2026-01-01T00:00:00Z starting with {by_ref[args[-1]]['env'].strip()}\n", ""
    if args[0] in ("rm", "stop", "start"):
        for ref in args[1:]:
            if ref in by_ref:
                if args[0] == "rm":
                    containers.remove(by_ref[ref])
                else:
                    by_ref[ref]["state"] = "exited" if args[0] == "stop" else "running"
        return 0, "", ""
    if args[0] == "rename":
        by_ref[args[1]]["name"] = args[2]
        return 0, "", ""
    if args[0] == "images":
        return 0, "".join(image + "\n" for image in state["images"]), ""
    if args[0] == "tag":
        state["images"].append(args[2])
        return 0, "", ""
    if command == "image rm":
        if args[2] in state["images"]:
            state["images"].remove(args[2])
        return 0, "", ""
    if command == "image prune":
        return 0, "", ""
    return 125, "", f"Error: the fake knows no {' '.join(args)}\n"


def follow_logs(args: list[str]) -> int:
    """``logs --follow [--since TIME] ID``: its lines after TIME as they come, until it stops."""
    since = datetime.fromisoformat(args[args.index("--since") + 1]) if "--since" in args else None
    log, read = HERE / "logs" / args[-1], 0
    while True:
        with open(HERE / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            container = next((c for c in load()["containers"] if args[-1] in (c["id"], c["name"])), None)
        data = log.read_bytes()[read:] if log.exists() else b""
        data = data[:data.rfind(b"\n") + 1]  # whole lines only
        read += len(data)
        for line in data.decode().splitlines():
            at, stream, text = line.split(" ", 2)
            if since is None or datetime.fromisoformat(at) > since:
                out = sys.stdout if stream == "stdout" else sys.stderr
                out.write(f"{at} {text}\n")
                out.flush()
        if container is None or container["state"] != "running":
            return 0
        time.sleep(0.02)


def main() -> int:
    args = sys.argv[1:]
    if args[0] == "logs" and "--follow" in args:
        return follow_logs(args)
    stdin = sys.stdin.read() if "--env-file" in args or args[:2] == ["secret", "create"] else ""
    started = time.monotonic()
    if args[0] == "create":
        time.sleep(float(os.environ.get("FAKE_PODMAN_RUN_SECONDS", "0")))
    with open(HERE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load()
        rc, out, err = handle(state, args, stdin)
        (HERE / "state.json").write_text(json.dumps(state))
        with open(HERE / "calls.jsonl", "a") as calls:
            calls.write(json.dumps({"args": args, "start": started, "end": time.monotonic(), "stdin": stdin,
                                    "cpus": sorted(os.sched_getaffinity(0))}) + "\n")
    sys.stdout.write(out)
    sys.stderr.write(err)
    return rc


if __name__ == "__main__":
    sys.exit(main())
