"""A warm ansible-playbook: Ansible imported once, each run a fork of that process.

ansible-playbook spends about 0.3 s importing Ansible before it reads a playbook, on every
run. The runner bridge starts ansible-runner as before, with one change: the command it runs
is a small launcher (stdlib only). The launcher hands its argv, environment, working directory
and stdio (the pty ansible-runner reads) over a unix socket to a process that has imported
Ansible: the zygote. The zygote forks; the child takes them over and runs Ansible's own
``ansible-playbook`` entry point, so ansible-runner sees the same output, events and exit code.

- A zygote serves one environment: the one it was started with. A run whose environment
  differs (but for the per-run paths ansible-runner sets) is refused, and so is every run once
  ansible.cfg or a file of the collection and role paths changed (the zygote then exits: its
  runs share the modules' zips, built from those files); the launcher runs the real
  ansible-playbook instead. So does a launcher that finds no zygote.
- Signals ansible-runner sends the launcher (SIGHUP, SIGINT, SIGTERM) go to the child's
  process group. When the launcher dies (ansible-runner's SIGKILL on a timeout or a cancel),
  the child kills every process below it, then its group.
- The socket is in a 0700 directory of the worker's user; the zygote exits with its parent.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any, NoReturn

# What ansible-runner sets per run: read when used, never at import (checked by the tests).
PER_RUN_ENV = frozenset({"ANSIBLE_CACHE_PLUGIN_CONNECTION", "AWX_ISOLATED_DATA_DIR"})
SOCKET_ENV = "BUDDO_ANSIBLE_WARM"
PLAYBOOK_ENV = "BUDDO_ANSIBLE_PLAYBOOK"
MAX_REQUEST = 1 << 20

# What a run of ansible-playbook imports (its start-up, then its plugins by their module names,
# which Ansible's plugin loader takes from sys.modules): imported once, by the zygote. Never
# collections' plugins (ansible_collections.*): a run's collection finder loads them.
PRELOAD = (
    "ansible.cli.playbook", "ansible.executor.playbook_executor", "ansible.plugins.strategy.linear",
    "ansible.plugins.inventory", "ansible.plugins.inventory.auto", "ansible.plugins.inventory.host_list",
    "ansible.plugins.inventory.ini", "ansible.plugins.inventory.yaml", "ansible.plugins.inventory.toml",
    "ansible.plugins.connection.local", "ansible.plugins.connection.ssh", "ansible.plugins.connection.paramiko_ssh",
    "ansible.plugins.shell.sh", "ansible.plugins.cache.memory", "ansible.plugins.vars.host_group_vars",
    "ansible.plugins.callback.default", "ansible.plugins.callback.minimal", "ansible.plugins.become.sudo",
    "ansible.playbook.handler_task_include", "ansible.parsing.yaml.dumper", "ansible.utils.encrypt",
    "ansible.utils._junit_xml", "multiprocessing.synchronize", "multiprocessing.popen_fork",
    "multiprocessing.shared_memory", "multiprocessing.resource_tracker", "pty", "tomllib",
)

LAUNCHER = r'''
"""Run ansible-playbook as a fork of the warm zygote (buddo_deploy.warm); the real one when it cannot."""
import array, json, os, signal, socket, sys


def cold():
    real = os.environ.get("{playbook_env}") or "ansible-playbook"
    os.execvp(real, [real, *sys.argv[1:]])


def main():
    path = os.environ.get("{socket_env}")
    if not path:
        cold()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        body = json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}).encode()
        data = len(body).to_bytes(4, "big") + body
        sent = conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
        conn.sendall(data[sent:])
        reader = conn.makefile("rb")
        first = reader.readline().split()
    except OSError:
        cold()
    if len(first) != 2 or first[0] != b"pid":
        cold()  # refused: another environment, or ansible.cfg or a collection or role file changed
    pid = int(first[1])

    def forward(signum, frame):
        try:
            os.killpg(pid, signum)
        except OSError:
            pass

    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    for line in reader:
        words = line.split()
        if len(words) == 2 and words[0] == b"exit":
            sys.exit(int(words[1]))
    sys.exit(1)  # the child and the zygote are gone without a word


main()
'''


def static_env(env: dict[str, str]) -> dict[str, str]:
    """What a zygote's environment and a run's must agree on."""
    return {k: v for k, v in env.items() if k not in PER_RUN_ENV and k not in (SOCKET_ENV, PLAYBOOK_ENV)}


def _config_stamp() -> tuple[str, float]:
    from ansible import constants as C

    path = str(getattr(C, "CONFIG_FILE", "") or "")
    try:
        return path, os.stat(path).st_mtime if path else 0.0
    except OSError:
        return path, -1.0


def _sources_stamp() -> tuple[tuple[str, float], ...]:
    """The modules a run may send that are not Ansible's own (which the zygote imported): every
    file of the configured collection and role paths, with its mtime."""
    from ansible import constants as C

    roots = [os.path.join(path, "ansible_collections") for path in C.COLLECTIONS_PATHS]  # type: ignore[attr-defined]
    roots += list(C.DEFAULT_ROLES_PATH)  # type: ignore[attr-defined]
    found = []
    for root in roots:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            for name in files:
                path = os.path.join(directory, name)
                with contextlib.suppress(OSError):
                    found.append((path, os.stat(path).st_mtime))
    return tuple(sorted(found))


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    fds = array.array("i")
    data, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    received = list(fds)
    if len(received) != 3 or len(data) < 4:
        raise ValueError("a request carries its length, its body and three file descriptors")
    size = int.from_bytes(data[:4], "big")
    if size > MAX_REQUEST:
        raise ValueError("request too large")
    body = data[4:]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ValueError("request cut short")
        body += more
    return json.loads(body), received


def kill_descendants(root: int) -> None:
    """SIGKILL every process below ``root``. Ansible's worker processes start sessions of their
    own, so a process-group kill misses them and the modules they run (a podman command would
    go on after its run timed out)."""
    for _ in range(3):  # what forked meanwhile
        parents: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as handle:
                        ppid = int(handle.read().rpartition(")")[2].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                parents.setdefault(ppid, []).append(int(entry.name))
        below, todo = [], list(parents.get(root, []))
        while todo:
            pid = todo.pop()
            below.append(pid)
            todo += parents.get(pid, [])
        if not below:
            return
        for pid in below:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


class Zygote:
    """The process that imported Ansible: one fork per run (see the module's docstring)."""

    def __init__(self, directory: Path, parent: int) -> None:
        self.directory = directory
        self.parent = parent
        self.env = static_env(dict(os.environ))
        self.children: dict[int, socket.socket] = {}
        for name in PRELOAD:  # the point of this process
            importlib.import_module(name)
        self.stamp = _config_stamp(), _sources_stamp()
        (directory / "ansiballz_cache").mkdir(mode=0o700, exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = directory / "socket"
        path.unlink(missing_ok=True)
        self.listener.bind(str(path))
        os.chmod(path, 0o600)
        self.listener.listen(64)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # its directory goes with it (main)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def serve(self) -> None:
        while os.getppid() == self.parent:
            for key, _ in self.selector.select(timeout=1.0):
                if key.fileobj is self.listener:
                    self.accept()
                else:
                    os.read(self.wake_r, 512)
            self.reap()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):  # the child could not say it: its launcher exits as a shell would
                with contextlib.suppress(OSError):
                    conn.sendall(b"exit %d\n" % (128 + os.WTERMSIG(status)))
            conn.close()

    def accept(self) -> None:
        conn: socket.socket | None
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            conn.settimeout(5)
            request, fds = _receive(conn)
            conn.settimeout(None)
            changed = (_config_stamp(), _sources_stamp()) != self.stamp
            if static_env(request["env"]) != self.env or changed:
                conn.sendall(b"refuse\n")
                if changed:  # the next run starts a zygote that read the new ansible.cfg, or
                    sys.exit(0)  # one whose children's module zips are built from the new files
                return
            pid = os.fork()
            if pid == 0:
                self.child(conn, fds, request)
            self.children[pid] = conn
            conn = None  # kept until the child is reaped
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"buddo warm ansible-playbook: bad request: {exc}", file=sys.stderr)
        finally:
            for fd in fds:
                os.close(fd)
            if conn is not None:
                conn.close()

    def child(self, conn: socket.socket, fds: list[int], request: dict[str, Any]) -> NoReturn:
        rc = 250
        done = threading.Event()
        try:
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            self.selector.close()
            self.listener.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            for other in self.children.values():
                other.close()
            for signum in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh Python
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.environ.clear()
            os.environ.update(request["env"])
            os.chdir(request["cwd"])
            sys.stdout.reconfigure(line_buffering=os.isatty(1))  # type: ignore[union-attr]
            conn.sendall(b"pid %d\n" % os.getpid())

            def watch() -> None:  # the launcher died (SIGKILL): so does this run, modules and all
                while conn.recv(64):
                    pass
                if not done.is_set():
                    kill_descendants(os.getpid())
                    os.killpg(0, signal.SIGKILL)

            threading.Thread(target=watch, daemon=True).start()
            self._fresh_process_state()
            from ansible.cli.playbook import main

            sys.argv = ["ansible-playbook", *request["argv"]]
            main(sys.argv)
            rc = 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - said on the run's own stderr
            traceback.print_exc()
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            done.set()
            try:
                conn.sendall(b"exit %d\n" % rc)
            finally:
                os._exit(rc)

    def _fresh_process_state(self) -> None:
        """What Ansible set up at import for its process: this run's own, not the zygote's."""
        from ansible import constants as C
        from ansible.utils.path import cleanup_tmp_file

        atexit.unregister(cleanup_tmp_file)  # the zygote's controller tmp dir stays the zygote's
        mine = tempfile.mkdtemp(prefix=f"ansible-local-{os.getpid()}", dir=os.path.dirname(C.DEFAULT_LOCAL_TMP))  # type: ignore[attr-defined]
        C.DEFAULT_LOCAL_TMP = mine  # type: ignore[attr-defined]
        atexit.register(cleanup_tmp_file, mine, warn=True)
        # The modules' zips (AnsiballZ), built once for all the zygote's runs: a zygote lives only
        # while the files they are built from stay as they were (accept), and Ansible locks
        # the cache's entries, as its forks of one run share them.
        os.symlink(self.directory / "ansiballz_cache", os.path.join(mine, "ansiballz_cache"))
        for name in ("CACHE_PLUGIN_CONNECTION",):  # PER_RUN_ENV's settings
            setattr(C, name, C.config.get_config_value(name))


class Pool:
    """The bridge's zygotes, one per environment, for processes that run many playbooks.

    A process opts in with ``env_for(env, start=True)`` (runner.prewarm: the worker, a reconcile
    of many hosts); from then on a run of an environment with no zygote starts one, in the
    background. A one-shot process never pays for a zygote it would not use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.zygotes: dict[tuple[tuple[str, str], ...], tuple[subprocess.Popen[bytes], Path]] = {}
        self.keep_warm = False

    def env_for(self, env: dict[str, str], *, start: bool = False) -> dict[str, str]:
        """``env`` with what sends this run's ansible-playbook to a zygote of that environment.

        A zygote that does not listen yet is not waited for: the run starts cold (measured: on
        2 cores, waiting for one that imports beside the caller's own start-up costs more)."""
        key = tuple(sorted(static_env(env).items()))
        real = Path(sys.executable).with_name("ansible-playbook")
        with self.lock:
            self.keep_warm = self.keep_warm or start
            known = self.zygotes.get(key)
            if not self.keep_warm:
                return env | {PLAYBOOK_ENV: str(real)}
            if known is None or known[0].poll() is not None:
                directory = Path(tempfile.mkdtemp(prefix="buddo-warm-"))
                process = subprocess.Popen(  # noqa: S603 - our own module, our own interpreter
                    [sys.executable, "-m", "buddo_deploy.warm", str(directory), str(os.getpid())], env=env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True)
                known = self.zygotes[key] = (process, directory)
        return env | {SOCKET_ENV: str(known[1] / "socket"), PLAYBOOK_ENV: str(real)}

    def launcher(self) -> str:
        """The launcher script (one per process), written next to nothing else."""
        with self.lock:
            path = getattr(self, "_launcher", None)
            if path is None or not Path(path).exists():
                directory = Path(tempfile.mkdtemp(prefix="buddo-warm-launcher-"))
                script = directory / "ansible-playbook"
                script.write_text(f"#!{sys.executable} -IS\n"
                                  + LAUNCHER.format(socket_env=SOCKET_ENV, playbook_env=PLAYBOOK_ENV))
                script.chmod(0o700)
                atexit.register(shutil.rmtree, directory, True)
                path = self._launcher = str(script)
            return str(path)


def main() -> None:
    directory, parent = Path(sys.argv[1]), int(sys.argv[2])
    try:
        if os.getppid() == parent:  # else the process that started it is gone already
            Zygote(directory, parent).serve()
    finally:  # the zygote's alone: a child never returns here (os._exit)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
