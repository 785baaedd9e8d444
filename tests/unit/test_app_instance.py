"""buddo.deploy.app_instance converges many deployments in one run, each failure its own.

The module runs in-process against tests/unit/fake_podman.py (state in a temp dir, every call
recorded) and small HTTP servers standing in for the apps.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))

from ansible_collections.buddo.deploy.plugins.modules import app_instance  # noqa: E402

FAKE = Path(__file__).with_name("fake_podman.py")
SECRET = "s3cr3t-env-value"


class Podman:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.binary = root / "podman"
        self.binary.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
        self.binary.chmod(0o755)

    def state(self) -> dict[str, Any]:
        path = self.root / "state.json"
        return dict(json.loads(path.read_text())) if path.exists() else {"containers": [], "networks": [], "images": []}

    def set_state(self, **state: Any) -> None:
        (self.root / "state.json").write_text(json.dumps({"containers": [], "networks": [], "images": [], **state}))

    def calls(self) -> list[dict[str, Any]]:
        path = self.root / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Podman:
    monkeypatch.setenv("FAKE_PODMAN_DIR", str(tmp_path))
    return Podman(tmp_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def app_ports() -> Iterator[list[int]]:
    """Ports on which an 'app' answers HTTP."""
    servers = []
    for _ in range(4):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [int(s.server_address[1]) for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def run(podman: Podman, capsys: pytest.CaptureFixture[str], **args: Any) -> tuple[dict[str, Any], str]:
    with patch_module_args({"podman": str(podman.binary), **args}), pytest.raises(SystemExit):
        app_instance.main()
    out = capsys.readouterr().out
    return dict(json.loads(out)), out


def deployment(ident: str, port: int, **over: Any) -> dict[str, Any]:
    return {"deployment_id": ident, "name": f"app-{ident}", "image": f"registry.test/{ident}:v1",
            "spec": f"spec-{ident}", "host_ports": [port, free_port()], "labels": {"buddo.host": "h1"}, **over}


def test_one_run_starts_many_and_a_failure_stays_its_own(
        podman: Podman, app_ports: list[int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = [deployment("d1", app_ports[0]), deployment("bad", app_ports[1], image="registry.test/missing:v1"),
             deployment("d3", app_ports[2]), deployment("deaf", free_port()), deployment("d5", app_ports[3])]
    env = {"deaf": {"TOKEN": SECRET}, "d1": {"A": "one line", "B": "two\nlines"}}
    result, out = run(podman, capsys, deployments=items, env=env, wait_timeout=1, output_dir=str(tmp_path / "out"))
    assert "failed" not in result and result["changed"] is True
    entries = {e["deployment_id"]: e for e in result["deployments"]}
    assert list(entries) == ["d1", "bad", "d3", "deaf", "d5"]
    for ident, port in (("d1", app_ports[0]), ("d3", app_ports[2]), ("d5", app_ports[3])):
        assert not entries[ident]["failed"], entries[ident]
        assert entries[ident]["container"] == {"id": f"id-app-{ident}", "name": f"app-{ident}", "host_port": port,
                                               "image_digest": "sha256:feed"}
        assert entries[ident]["others"] == []
    assert entries["bad"]["failed"] and entries["bad"]["failure_kind"] == "app"
    assert "image registry.test/missing:v1 could not be pulled: initializing source" in entries["bad"]["msg"]
    assert entries["deaf"]["failed"] and entries["deaf"]["failure_kind"] == "app"
    assert entries["deaf"]["msg"].startswith("app did not answer on http://127.0.0.1:")
    assert result["msg"].startswith("2 of 5 deployment(s) failed: bad: image registry.test/missing:v1")
    # The one that never answered is gone, its output kept, masked.
    names = [c["name"] for c in podman.state()["containers"]]
    assert sorted(names) == ["app-d1", "app-d3", "app-d5"]
    kept = (tmp_path / "out" / "deaf.json").read_text()
    assert "TOKEN=********" in kept and SECRET not in kept
    assert SECRET not in out
    # Each deployment on its own network; env through the pipe, a multi-line value as a podman
    # secret (its data from a pipe too): no value on any command line.
    assert sorted(podman.state()["networks"]) == ["buddo-d1", "buddo-d3", "buddo-d5", "buddo-deaf"]
    [d1_create] = [c for c in podman.calls() if c["args"][0] == "create" and "app-d1" in c["args"]]
    assert d1_create["stdin"] == "A=one line"
    secret = f"bd1-spec-d1-{hashlib.sha256(b'B').hexdigest()[:12]}"
    assert podman.state()["secrets"] == {secret: "two\nlines"}
    assert f"{secret},type=env,target=B" in d1_create["args"]
    assert not any(value in arg for c in podman.calls() for arg in c["args"]
                   for value in ("one line", "two\nlines", SECRET))
    # Its own user namespace, only the kept capabilities, its own IPC, volumes in its layer; started after create.
    args = d1_create["args"]
    assert {"--init", "buddo.host=h1", "--security-opt", "no-new-privileges"} <= set(args)
    assert args[args.index("--userns") + 1] == "auto:size=65536"
    assert args[args.index("--cap-drop") + 1] == "all"
    assert {args[i + 1] for i, a in enumerate(args) if a == "--cap-add"} == {
        "CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL", "NET_BIND_SERVICE"}
    assert args[args.index("--ipc") + 1] == "none" and args[args.index("--image-volume") + 1] == "ignore"
    assert ["start", "id-app-d1"] in [c["args"] for c in podman.calls()]
    assert {c["state"] for c in podman.state()["containers"]} == {"running"}


def test_deployments_are_worked_on_at_the_same_time(
        podman: Podman, app_ports: list[int], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_PODMAN_RUN_SECONDS", "0.5")
    items = [deployment(f"d{i}", port) for i, port in enumerate(app_ports)]

    def runs_overlap() -> bool:
        runs = sorted((c["start"], c["end"]) for c in podman.calls() if c["args"][0] == "create")
        assert len(runs) == 4
        return any(later[0] < earlier[1] for earlier, later in zip(runs, runs[1:], strict=False))

    result, _ = run(podman, capsys, deployments=items, parallel=4)
    assert not any(e["failed"] for e in result["deployments"]) and runs_overlap()
    podman.set_state()
    (podman.root / "calls.jsonl").unlink()
    result, _ = run(podman, capsys, deployments=items, parallel=1)
    assert not any(e["failed"] for e in result["deployments"]) and not runs_overlap()


def test_a_podman_error_fails_its_deployment_only_and_masks_the_env(
        podman: Podman, app_ports: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    items = [deployment("d1", app_ports[0], image="registry.test/echo-env:v1"), deployment("d2", app_ports[1])]
    result, out = run(podman, capsys, deployments=items, env={"d1": {"TOKEN": SECRET}, "d2": {"OTHER": "x"}})
    first, second = result["deployments"]
    assert first["failed"] and first["failure_kind"] == "app" and "TOKEN=********" in first["msg"]
    assert not second["failed"] and second["container"]["name"] == "app-d2"
    assert SECRET not in out


def test_bad_items_are_named_and_fail_the_task_before_any_podman_call(
        podman: Podman, capsys: pytest.CaptureFixture[str]) -> None:
    items = [deployment("d1", 20000), {"deployment_id": "d2", "name": "app-d2", "port": "abc"},
             {"name": "anonymous", "image": "i", "spec": "s", "host_ports": [1, 2], "colour": "red"},
             deployment("d1", 20002)]
    result, out = run(podman, capsys, deployments=items, env={"d1": {"TOKEN": SECRET}})
    assert result["failed"] is True
    errors = result["errors"]
    assert any(e.startswith("deployments[1] (d2): argument 'port' is of type str") for e in errors), errors
    assert "deployments[1] (d2): state=started needs image, spec, host_ports" in errors
    assert any(e.startswith("deployments[2]: missing required arguments: deployment_id") for e in errors), errors
    assert any(e.startswith("deployments[2]: Unsupported parameters: colour") for e in errors), errors
    assert "deployments[3] (d1): listed twice" in errors
    assert "Traceback" not in out and SECRET not in out and podman.calls() == []

    result, _ = run(podman, capsys, state="retired", deployments=[{"deployment_id": "d1", "name": "app-d1"}])
    assert result["errors"] == ["deployments[0] (d1): state=retired needs keep"]


def test_retire_renames_each_and_prunes_once(podman: Podman, capsys: pytest.CaptureFixture[str]) -> None:
    def container(ident: str, name: str, cid: str) -> dict[str, Any]:
        return {"id": cid, "name": name, "state": "running", "image": "registry.test/x:v1", "host_port": 1, "env": "",
                "labels": {"buddo.deployment_id": ident}}

    podman.set_state(containers=[container("d1", "app-d1", "old1"), container("d1", "app-d1-next", "new1"),
                                 container("d2", "app-d2", "old2"), container("d2", "app-d2-next", "new2"),
                                 container("d3", "app-d3", "old3")],
                     images=["registry.test/x@sha256:aa", "registry.test/x:buddo-keep-d2-bb"])
    items = [{"deployment_id": "d1", "name": "app-d1", "keep": "new1", "keep_images": ["registry.test/x@sha256:aa"]},
             {"deployment_id": "d2", "name": "app-d2", "keep": "new2"},
             {"deployment_id": "d3", "name": "app-d3", "keep": "gone3"}]
    result, _ = run(podman, capsys, state="retired", deployments=items)
    d1, d2, d3 = result["deployments"]
    assert d1["container"]["name"] == "app-d1" and d1["actions"] == [
        "retired 1 old container(s)", "renamed app-d1-next to app-d1", "kept registry.test/x@sha256:aa"]
    assert d2["actions"] == ["retired 1 old container(s)", "renamed app-d2-next to app-d2", "dropped 1 kept image(s)"]
    assert d3["failed"] and d3["failure_kind"] == "host" and d3["msg"] == "container gone3 of deployment d3 is gone"
    assert sorted(c["name"] for c in podman.state()["containers"]) == ["app-d1", "app-d2", "app-d3"]
    assert [c["args"] for c in podman.calls() if c["args"][:2] == ["image", "prune"]] == [["image", "prune", "--force"]]


def test_stop_and_absent_of_many(podman: Podman, app_ports: list[int], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    items = [deployment(f"d{i}", port) for i, port in enumerate(app_ports[:3])]
    run(podman, capsys, deployments=items)
    ids = [{"deployment_id": i["deployment_id"], "name": i["name"]} for i in items]
    result, _ = run(podman, capsys, state="stopped", deployments=ids)
    assert [e["actions"] for e in result["deployments"]] == [["stopped 1 container(s)"]] * 3
    assert {c["state"] for c in podman.state()["containers"]} == {"exited"}

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "d0.json").write_text("{}")
    gone = [{**i, "image": items[n]["image"]} for n, i in enumerate(ids)]
    result, _ = run(podman, capsys, state="absent", deployments=gone, output_dir=str(tmp_path / "out"))
    assert result["changed"] and not any(e["failed"] for e in result["deployments"])
    assert result["deployments"][0]["actions"] == ["removed 1 container(s)", "removed network buddo-d0",
                                                   "removed the kept output"]
    state = podman.state()
    assert state["containers"] == [] and state["networks"] == [] and state["images"] == []
    result, _ = run(podman, capsys, state="absent", deployments=gone)
    assert result["changed"] is False


def test_check_mode_changes_nothing(podman: Podman, app_ports: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    items = [deployment("d1", app_ports[0]), deployment("d2", app_ports[1])]
    result, _ = run(podman, capsys, deployments=items, _ansible_check_mode=True)
    assert result["changed"] and [e["actions"] for e in result["deployments"]] == [["would start a new container"]] * 2
    assert podman.state()["containers"] == [] and not any(c["args"][0] == "run" for c in podman.calls())


def test_podman_may_use_every_cpu_even_when_the_module_was_pinned_to_one(
        podman: Podman, app_ports: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    """Mitogen pins what it starts to one CPU (on a local connection, this module too)."""
    every = os.sched_getaffinity(0)
    result: dict[str, Any] = {}

    def pinned() -> None:  # affinity is per thread: pin only this one, as Mitogen pins its child
        os.sched_setaffinity(0, {min(every)})
        result.update(run(podman, capsys, deployments=[deployment("d1", app_ports[0])])[0])

    thread = threading.Thread(target=pinned)
    thread.start()
    thread.join()
    [run_call] = [c for c in podman.calls() if c["args"][0] == "create"]
    assert not result["deployments"][0]["failed"] and set(run_call["cpus"]) == every


def test_every_pull_asks_the_registry_with_the_operators_own_login(
        podman: Podman, app_ports: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    private = "registry.test/private/app:v1"
    token = base64.b64encode(b"alice:alice-registry-pw").decode()
    login = {"registry.test": {"auth": token}}
    # The image is cached on the host (another tenant pulled it): without a login, still refused.
    podman.set_state(images=[private])
    items = [deployment("bob", app_ports[0], image=private), deployment("alice", app_ports[1], image=private)]
    result, out = run(podman, capsys, deployments=items, registry_auth={"alice": login})
    bob, alice = result["deployments"]
    assert bob["failed"] and bob["failure_kind"] == "app" and "unauthorized" in bob["msg"], bob
    assert not alice["failed"] and alice["container"]["name"] == "app-alice"
    # Bob's container was made beside the registry's answer (the image is cached), never started,
    # and is gone with his network: nothing of a refused deploy stays.
    state = podman.state()
    assert [c["name"] for c in state["containers"]] == ["app-alice"] and state["networks"] == ["buddo-alice"]
    assert not [c for c in podman.calls() if c["args"][0] == "start" and "app-bob" in " ".join(c["args"])]
    assert token not in out
    pulls = [c["args"] for c in podman.calls() if c["args"][0] == "pull"]
    assert len(pulls) == 2 and all(args[args.index("--authfile") + 1].startswith("/proc/self/fd/") for args in pulls)
    assert not any(token in arg or "alice-registry-pw" in arg for c in podman.calls() for arg in c["args"])
    # A local image (no registry: the smoke test's) is not pulled.
    podman.set_state(images=["localhost/smoke:1"])
    (podman.root / "calls.jsonl").unlink()
    result, _ = run(podman, capsys, deployments=[deployment("s", app_ports[2], image="localhost/smoke:1")])
    assert not result["deployments"][0]["failed"]
    assert not [c for c in podman.calls() if c["args"][0] == "pull"]


def test_a_stopped_container_starts_again_only_with_the_registrys_yes(
        podman: Podman, app_ports: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    """A suspended deployment's container, its image cached: its restart asks the registry with the
    operator's login (by the cached digest), and a login the registry refuses now keeps it stopped."""
    private = "registry.test/private/app:v1"
    pushed = "registry.test/private/app@sha256:95017a675552a5"
    login = {"registry.test": {"auth": base64.b64encode(b"alice:alice-registry-pw").decode()}}
    podman.set_state(images=[private], repo_digests={private: [pushed]})
    item = deployment("alice", app_ports[0], image=private)
    result, _ = run(podman, capsys, deployments=[item], registry_auth={"alice": login})
    assert not result["deployments"][0]["failed"], result
    run(podman, capsys, state="stopped", deployments=[{"deployment_id": "alice", "name": "app-alice"}])
    (podman.root / "calls.jsonl").unlink()

    result, _ = run(podman, capsys, deployments=[item])  # the login was removed meanwhile
    [entry] = result["deployments"]
    assert entry["failed"] and entry["failure_kind"] == "app" and "unauthorized" in entry["msg"], entry
    assert not [c for c in podman.calls() if c["args"][0] == "start"]
    assert {c["state"] for c in podman.state()["containers"]} == {"exited"}

    result, _ = run(podman, capsys, deployments=[item], registry_auth={"alice": login})
    [entry] = result["deployments"]
    assert not entry["failed"] and "started container app-alice again" in entry["actions"], entry
    assert [c["args"][-1] for c in podman.calls() if c["args"][0] == "pull"] == [pushed, pushed]


def test_a_dripping_app_fails_alone_and_on_time(podman: Podman, app_ports: list[int],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """An app that answers a byte every 0.2 s: its wait ends at wait_timeout, the others start."""
    from tests.unit.test_http_deadline import Server

    drip = Server("drip")
    try:
        items = [deployment("drip", drip.port), deployment("d1", app_ports[0]), deployment("d2", app_ports[1])]
        result, _ = run(podman, capsys, deployments=items, wait_timeout=1)
    finally:
        drip.close()
    entries = {e["deployment_id"]: e for e in result["deployments"]}
    assert entries["drip"]["failed"] and entries["drip"]["msg"].startswith("app did not answer"), entries["drip"]
    assert not entries["d1"]["failed"] and not entries["d2"]["failed"]
    assert drip.sent < 100  # the wait gave up long before the app's 2,000 bytes


def test_a_cached_image_is_pulled_again_by_a_digest_the_registry_knows(
        podman: Podman, app_ports: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    """A locally built digest first (unknown to the registry, and with '401' in its hex), then the
    pushed one: the second pull succeeds, the tag is not pulled (the cached version stays)."""
    image = "registry.test/app:v1"
    local, pushed = "registry.test/app@sha256:92625d5401b0d9", "registry.test/app@sha256:95017a675552a5"
    podman.set_state(images=[image], repo_digests={image: [local, pushed]}, unknown=[local])
    result, _ = run(podman, capsys, deployments=[deployment("d1", app_ports[0], image=image)])
    assert not result["deployments"][0]["failed"], result
    assert [c["args"][-1] for c in podman.calls() if c["args"][0] == "pull"] == [local, pushed]
    assert ["image", "rm", pushed] in [c["args"] for c in podman.calls()]  # no name of the pull stays


def test_a_cached_image_the_registry_no_longer_has_is_made_again_from_the_tag_it_approved(
        podman: Podman, app_ports: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    """The container is created beside the registry's answer from the cached version; when the
    registry knows none of its digests and says yes to the tag as it is now, that container may
    run another image than the approved one: it is removed and made again, from the tag."""
    image = "registry.test/app:v1"
    old = "registry.test/app@sha256:0ld0ld0ld0ld"
    podman.set_state(images=[image], repo_digests={image: [old]}, unknown=[old])
    result, _ = run(podman, capsys, deployments=[deployment("d1", app_ports[0], image=image)])
    [entry] = result["deployments"]
    assert not entry["failed"] and f"pulled {image}" in entry["actions"], entry
    calls = [c["args"] for c in podman.calls()]
    assert [args[-1] for args in calls if args[0] == "pull"] == [old, image]
    creates = [i for i, args in enumerate(calls) if args[0] == "create"]
    removed = [i for i, args in enumerate(calls) if args[0] == "rm"]
    assert len(creates) == 2 and len(removed) == 1 and creates[0] < removed[0] < creates[1]
    assert [c["name"] for c in podman.state()["containers"]] == ["app-d1"]


def test_deployments_of_one_cached_image_untag_its_digest_once_after_every_create(
        podman: Podman, app_ports: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    """Each pull asks the registry (its operator's login); the digest name the pulls add goes once,
    after the containers were made: an untag racing another deployment's pull would remove the image."""
    image = "registry.test/app:v1"
    pushed = "registry.test/app@sha256:95017a675552a5"
    podman.set_state(images=[image], repo_digests={image: [pushed]})
    items = [deployment(f"d{i}", port, image=image) for i, port in enumerate(app_ports[:3])]
    result, _ = run(podman, capsys, deployments=items)
    assert not any(entry["failed"] for entry in result["deployments"]), result
    calls = [c["args"] for c in podman.calls()]
    assert [args[-1] for args in calls if args[0] == "pull"] == [pushed] * 3
    removals = [i for i, args in enumerate(calls) if args[:2] == ["image", "rm"]]
    assert [calls[i] for i in removals] == [["image", "rm", pushed]]
    assert removals[0] > max(i for i, args in enumerate(calls) if args[0] == "create")


def test_an_image_removed_by_another_runs_destroy_before_the_create_is_pulled_again(
        podman: Podman, app_ports: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    """Runs of one host overlap: a destroy drops an image reference no container uses yet, between
    this deployment's pull and its create. The create asks the registry again, once, and goes on."""
    image = "registry.test/app:v1"
    pushed = "registry.test/app@sha256:95017a675552a5"
    podman.set_state(images=[image], repo_digests={image: [pushed]}, vanished=[image])
    result, _ = run(podman, capsys, deployments=[deployment("d1", app_ports[0], image=image)])
    [entry] = result["deployments"]
    assert not entry["failed"], entry
    assert f"pulled {image} again: it was removed meanwhile" in entry["actions"]
    calls = [c["args"] for c in podman.calls()]
    assert [args[-1] for args in calls if args[0] == "pull"] == [pushed, image]
    assert len([args for args in calls if args[0] == "create"]) == 2
