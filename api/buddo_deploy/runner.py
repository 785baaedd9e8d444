"""The runner bridge: the only module that imports ansible_runner.

One private data dir per run, deleted afterwards. User-supplied strings reach
Ansible only as ``!unsafe`` values (``__ansible_unsafe`` JSON) in ``env/extravars`` (written here, so
``suppress_env_files=True`` keeps ansible-runner from writing anything else
there). Secrets never enter extravars, envvars or the command line: they go to a
0600 file on tmpfs whose *path* is passed, read by a ``no_log`` lookup and
removed when the run ends. Events are summarised through a callback and never
written to the artifacts directory. A run's environment is an allow-list (as
AWX's safe env): nothing else the worker was started with reaches the playbook.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import ansible_runner
import ptyprocess

from .results import EventSummary, PlaybookResult
from .settings import REPO_ROOT, STRATEGIES
from .warm import SOCKET_ENV, Pool

_pty_close = ptyprocess.PtyProcess.close


def _close(self: ptyprocess.PtyProcess, force: bool = True) -> None:
    """ptyprocess sleeps 0.1 s in close() (``delayafterclose``) to let a child it is about to
    hang up exit; ansible-runner closes the child only after it has exited, so every run waited
    0.1 s for nothing. A child still running is closed as before."""
    if not self.closed and not self.isalive():
        self.delayafterclose = 0
    _pty_close(self, force)


ptyprocess.PtyProcess.close = _close

DEFAULT_STRATEGY = STRATEGIES[0]
# This process's warm ansible-playbooks (warm.py): a run starts in a fork of one.
WARM = Pool()

KEPT_EVENTS = {
    "playbook_on_play_start", "playbook_on_task_start", "runner_on_ok", "runner_on_failed",
    "runner_on_unreachable", "runner_on_async_failed", "playbook_on_stats",
}
MAX_MESSAGE = 2000
# The whole environment of a playbook run, by name: ansible-runner starts from all of
# os.environ (BUDDO_JWT_SECRET, BUDDO_SECRET_KEY, the database URL, ...), hands it to
# ansible-playbook, every module and every podman they start, and writes it to
# artifacts/<id>/command. A run gets ansible_env() plus these, nothing else.
INHERITED_ENV = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
                 "XDG_RUNTIME_DIR", "SSH_AUTH_SOCK")
# What ansible-runner sets for its own event callback and fact cache.
RUNNER_ENV = ("ANSIBLE_CALLBACK_PLUGINS", "ANSIBLE_STDOUT_CALLBACK", "ANSIBLE_CACHE_PLUGIN",
              "ANSIBLE_CACHE_PLUGIN_CONNECTION", "AWX_ISOLATED_DATA_DIR", "RUNNER_OMIT_EVENTS",
              "RUNNER_ONLY_FAILED_EVENTS")


def unsafe(data: Any) -> Any:
    """``data`` with every string value as ``{"__ansible_unsafe": value}``: Ansible's JSON for ``!unsafe``, so it
    never templates them (keys stay plain: they are variable and field names)."""
    if isinstance(data, str):
        return {"__ansible_unsafe": data}
    if isinstance(data, Mapping):
        return {str(key): unsafe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [unsafe(value) for value in data]
    return data


def unsafe_json(data: Mapping[str, Any], indent: int | None = None) -> str:
    """Extra vars as JSON with every string ``!unsafe``. Ansible reads JSON several times faster than YAML (its
    YAML loader is pure Python): 0.4 s a run with 100 deployments."""
    return json.dumps(unsafe(dict(data)), indent=indent, sort_keys=True)


def secret_dir() -> Path:
    """This process's directory for per-run secret files, on tmpfs when there is one."""
    shm = Path("/dev/shm")  # noqa: S108 - tmpfs: secrets never touch a disk
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    path = base / f"buddo-secrets-{os.getpid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def sweep_stale_secrets() -> int:
    """Remove the secret dirs of processes that died without cleaning up (kill -9)."""
    removed = 0
    for base in (Path("/dev/shm"), Path(tempfile.gettempdir())):  # noqa: S108
        for path in base.glob("buddo-secrets-*") if base.is_dir() else ():
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed


@contextmanager
def secret_file(payload: Mapping[str, Any] | str) -> Iterator[str]:
    """A 0600 file on tmpfs (JSON, or the text as is) that exists only for the duration of one run."""
    fd, path = tempfile.mkstemp(prefix="run-", suffix=".json", dir=secret_dir())
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(payload if isinstance(payload, str) else json.dumps(dict(payload)))
        yield path
    finally:
        Path(path).unlink(missing_ok=True)


def _summarise(event: Mapping[str, Any]) -> EventSummary | None:
    name = str(event.get("event", ""))
    if name not in KEPT_EVENTS:
        return None
    data = event.get("event_data") or {}
    res = data.get("res") or {}
    status = {"runner_on_ok": "changed" if res.get("changed") else "ok", "runner_on_failed": "failed",
              "runner_on_unreachable": "unreachable", "runner_on_async_failed": "failed"}.get(name)
    message = None
    if name in {"runner_on_failed", "runner_on_unreachable", "runner_on_async_failed"}:
        message = str(res.get("msg") or res.get("stderr") or res.get("module_stderr") or "")[:MAX_MESSAGE]
        if status == "unreachable" and "Host key verification failed" in message:
            message = (f"{data.get('host')}: its SSH host key is unknown or changed (not the one pinned in the "
                       f"inventory's known_hosts): not connected. {message}")[:MAX_MESSAGE]
        if data.get("ignore_errors"):
            status = "ignored"
    elif name == "playbook_on_play_start":
        message = str(data.get("play") or "")
    elif name == "playbook_on_stats":
        message = json.dumps({k: data.get(k) for k in ("ok", "changed", "failures", "dark", "skipped")})
    return EventSummary(
        event=name,
        host=data.get("host") or data.get("remote_addr"),
        task=(data.get("task") or None) if name != "playbook_on_play_start" else None,
        status=status,
        message=message,
    )


def mitogen_strategy_dir() -> str:
    """Where the pinned Mitogen keeps its Ansible strategy plugins (in this environment);
    found, not imported: only ansible-playbook loads Mitogen."""
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("BUDDO_ANSIBLE_STRATEGY=mitogen_linear needs the mitogen package (pyproject.toml)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "plugins" / "strategy")


def ansible_env(strategy: str = DEFAULT_STRATEGY) -> dict[str, str]:
    """Environment for ansible-playbook: our venv first, sbin for podman's netavark.

    ``strategy``: ``mitogen_linear`` runs every task of a host in one Python kept
    for the whole play (measured on the converge path: see bench/deploy.py);
    ``linear`` is Ansible's own, a fresh Python per module run.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    bindir = str(Path(sys.executable).parent)
    path = os.pathsep.join([bindir, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    inherited = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    chosen = {"ANSIBLE_STRATEGY": strategy}
    if strategy.startswith("mitogen"):
        chosen["ANSIBLE_STRATEGY_PLUGINS"] = mitogen_strategy_dir()
    return inherited | chosen | {
        "PATH": path,
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # ansible-runner appends its callback dir to this: not to the worker's value.
        "ANSIBLE_CALLBACK_PLUGINS": "",
    }


def _runner(private: Path, playbook: Path, inventory: Path, strategy: str, *, warm: bool = False,
            **options: Any) -> Any:
    """ansible-runner's Runner for one run, with the run's environment (an allow-list) and command
    (ansible-playbook forked from a warm one, in a process that keeps one: ``warm``, prewarm)."""
    envvars = ansible_env(strategy)
    runner = ansible_runner.interface.init_runner(
        private_data_dir=str(private), playbook=str(playbook), inventory=str(inventory), envvars=envvars,
        suppress_env_files=True, quiet=True, rotate_artifacts=1, **options)
    # The config merged os.environ in; keep only what the run is meant to have,
    # before Runner.run() writes artifacts/<id>/command and starts the process.
    allowed = {*envvars, *RUNNER_ENV}
    runner.config.env = WARM.env_for({k: v for k, v in runner.config.env.items() if k in allowed}, start=warm)
    if SOCKET_ENV in runner.config.env:
        runner.config.command[0] = WARM.launcher()
    return runner


def prewarm(strategy: str = DEFAULT_STRATEGY) -> Path:
    """This process runs many playbooks: start its warm ansible-playbook now, beside other start-up
    work (from then on, a run of another environment starts one of its own too); the socket it
    will listen on."""
    with tempfile.TemporaryDirectory(prefix="buddo-prewarm-") as private:
        runner = _runner(Path(private), Path(private) / "none.yml", Path(private) / "hosts", strategy, warm=True)
    return Path(runner.config.env[SOCKET_ENV])


def run_playbook(
    playbook: Path,
    inventory: Path,
    extravars: Mapping[str, Any],
    *,
    secrets: Mapping[str, Any] | None = None,
    secret_files: Mapping[str, str] | None = None,
    limit: str | None = None,
    check: bool = False,
    timeout_s: int = 600,
    on_event: Callable[[EventSummary], None] | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    work_dir: Path | None = None,
    keep_data_dir: bool = False,
    strategy: str = DEFAULT_STRATEGY,
) -> PlaybookResult:
    """Run one playbook through ansible-runner and summarise the outcome."""
    base = work_dir or Path(tempfile.gettempdir())
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix="buddo-job-", dir=base))
    outcome = PlaybookResult(status="failed", rc=None)

    def handle(event: dict[str, Any]) -> bool:
        summary = _summarise(event)
        if summary is None:
            return False
        if summary.status in {"failed", "unreachable"} and outcome.failed_task is None:
            outcome.failed_task, outcome.failed_host, outcome.message = summary.task, summary.host, summary.message
            outcome.failed_status = summary.status
        if summary.event == "playbook_on_stats":
            outcome.stats = dict((event.get("event_data") or {}).get("artifact_data") or {})
        if on_event is not None:
            on_event(summary)
        if summary.event == "runner_on_ok" and on_report is not None:
            # A set_stats task's result: what the run reports, as soon as it reports it.
            reported = ((event.get("event_data") or {}).get("res") or {}).get("ansible_stats") or {}
            if isinstance(reported.get("data"), dict) and reported["data"]:
                on_report(dict(reported["data"]))
        return False  # never write events (which may hold module args) to the artifacts dir

    try:
        (private / "env").mkdir(mode=0o700)
        variables = dict(extravars)
        with secret_file(secrets or {}) as secret_path, ExitStack() as more:
            variables["converge_env_file"] = secret_path
            # Other secrets (the Cloudflare token): extra var name -> a file holding the value.
            for name, value in (secret_files or {}).items():
                variables[name] = more.enter_context(secret_file(value))
            (private / "env" / "extravars").write_text(unsafe_json(variables))
            runner = _runner(private, playbook, inventory, strategy, limit=limit,
                             cmdline="--check" if check else None, timeout=timeout_s, event_handler=handle,
                             cancel_callback=should_cancel or (lambda: False))
            runner.run()
        outcome.status = str(runner.status)
        outcome.rc = runner.rc
        if outcome.status == "timeout":
            outcome.message = f"timed out after {timeout_s} s"
        elif outcome.status == "canceled":
            outcome.message = "canceled: the job's lease was lost"
        elif not outcome.ok and outcome.message is None:
            outcome.message = f"ansible-playbook exited with rc={runner.rc}"
        return outcome
    finally:
        if not keep_data_dir:
            shutil.rmtree(private, ignore_errors=True)
