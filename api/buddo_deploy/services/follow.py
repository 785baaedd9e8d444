"""Followed output: a deployment's lines as it prints them (GET .../output?follow=true, SSE),
and a one-off run's (GET .../runs/{run_id}?follow=true).

The API never reaches a host. A follower marks the deployment followed (``output_follows``,
``until`` a while ahead, renewed while it follows) and reads ``output_lines`` by id. A
worker's :class:`Collectors` timer starts one :class:`Collector` per followed deployment
(one worker at a time: a lease on the follow row). A collector runs ``podman logs --follow``
of each of the deployment's containers that runs on its host (directly on a local host, over
ssh with the inventory's connection on another), masks env values and appends each line as it
comes, with its container. It looks for containers every second: a restart starts the new
container beside the serving one, and both print until the old one is stopped; a container
started again is followed again from its last line. When nobody follows any more, the
collector stops; old lines are pruned.

A one-off run's lines are collected always, by the worker that runs it, from its container's
start until it is gone (:func:`collect_run`, :func:`end_run`); its followers read them from
the first, and get the run itself (``event: end``) once it finished and they read them all.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

import peewee

from ..crypto import decrypt_env
from ..db import connect_thread, write_transaction
from ..inventory import ContainerHost, container_host
from ..models import Deployment, OutputFollow, OutputLine, Release, Run, database_proxy, utcnow
from ..settings import Settings
from ..vocabulary import FINISHED_RUN_STATES
from .output import _instant, mask

log = logging.getLogger(__name__)

# A follow lasts this long after its followers last said they follow.
FOLLOW_TTL = dt.timedelta(seconds=30)
# Followers say so this often (their stream's poll).
TOUCH_EVERY = dt.timedelta(seconds=10)
# A collector holds its follow this long without renewing it.
LEASE = dt.timedelta(seconds=15)
# Lines are kept this long (followers read them within seconds).
KEEP = dt.timedelta(minutes=10)
# Streams one operator may hold open in one API process, and how long one lasts (then the
# client reconnects with Last-Event-ID, as SSE clients do).
FOLLOWERS_PER_OPERATOR = 10
MAX_FOLLOW_S = 3600
# Lines sent to one follower in one poll at most (the rest on the next).
BATCH = 500
# How often a collector writes what it read, and looks again for a container.
FLUSH_S = 0.1
IDLE_S = 1.0
START_BACK = dt.timedelta(seconds=2)
# How often a run's collector looks for its container until it started, and how long the end
# of a run waits for its collector to store the last lines (its container is gone by then).
RUN_LOOK_S = 0.1
RUN_DRAIN_S = 5.0
# Releases whose env values a follow masks besides the current env (a replaced container's).
MASKED_RELEASES = 3


# --- the API's side -------------------------------------------------------------------------

def follow(deployment_id: str, now: dt.datetime | None = None) -> int:
    """Mark the deployment followed; the id after which its new lines come (a follower's cursor)."""
    now = now or utcnow()
    touch([deployment_id], now)
    last = OutputLine.select(peewee.fn.MAX(OutputLine.id)).where(OutputLine.subject_id == deployment_id).scalar()
    return int(last or 0)


def touch(deployment_ids: Collection[str], now: dt.datetime | None = None) -> None:
    """The deployments are followed for FOLLOW_TTL from now."""
    now = now or utcnow()
    until = now + FOLLOW_TTL
    with write_transaction(database_proxy.obj):
        for ident in sorted(set(deployment_ids)):
            updated = OutputFollow.update(until=until).where(OutputFollow.deployment_id == ident).execute()
            if not updated:
                OutputFollow.insert(deployment_id=ident, until=until).on_conflict_ignore().execute()


def lines_after(cursors: dict[str, int]) -> dict[str, list[OutputLine]]:
    """Per subject (a deployment or a run), its lines after its cursor (BATCH at most each),
    oldest first; one query."""
    if not cursors:
        return {}
    condition: Any = None
    for ident, after in cursors.items():
        mine = (OutputLine.subject_id == ident) & (OutputLine.id > after)
        condition = mine if condition is None else condition | mine
    found: dict[str, list[OutputLine]] = {}
    for row in OutputLine.select().where(condition).order_by(OutputLine.id).limit(BATCH * len(cursors)):
        kept = found.setdefault(row.subject_id, [])
        if len(kept) < BATCH:
            kept.append(row)
    return found


class Follower:
    """One follower's stream: what it follows (a deployment's or a run's id), whose it is,
    and how far it has read (the SSE event id)."""

    __slots__ = ("cursor", "ended", "operator_id", "subject_id")

    def __init__(self, subject_id: str, operator_id: str, cursor: int) -> None:
        self.subject_id, self.operator_id, self.cursor = subject_id, operator_id, cursor
        self.ended = False


def sse(row: OutputLine) -> bytes:
    data = json.dumps({"at": row.at, "stream": row.stream, "text": row.text, "container": row.container})
    return f"id: {row.id}\nevent: line\ndata: {data}\n\n".encode()


class Streams:
    """The poll of this API process's follow streams (serving.py calls it every WAKE_S)."""

    def __init__(self) -> None:
        self.touched: dict[str, dt.datetime] = {}

    def __call__(self, followers: Collection[Follower]) -> dict[Any, bytes | None]:
        connect_thread()
        now = utcnow()
        due = {f.subject_id for f in followers
               if now - self.touched.get(f.subject_id, dt.datetime.min) >= TOUCH_EVERY}
        if due:
            touch(due, now)
            self.touched.update(dict.fromkeys(due, now))
        return _send_lines(followers)


def _send_lines(followers: Collection[Follower]) -> dict[Any, bytes | None]:
    """Each follower's new lines as events (its cursor moved past them)."""
    cursors: dict[str, int] = {}
    for f in followers:
        cursors[f.subject_id] = min(cursors.get(f.subject_id, f.cursor), f.cursor)
    rows = lines_after(cursors)
    out: dict[Any, bytes | None] = {}
    for f in followers:
        mine = [row for row in rows.get(f.subject_id, []) if row.id > f.cursor]
        if mine:
            f.cursor = mine[-1].id
            out[f] = b"".join(sse(row) for row in mine)
    return out


STREAMS = Streams()


class RunStreams:
    """The poll of this API process's run streams: their lines, then ``event: end`` with the
    run (``render``: its JSON) once it finished and they sent every line, then the stream's end."""

    def __init__(self, render: Callable[[Run], str]) -> None:
        self.render = render

    def __call__(self, followers: Collection[Follower]) -> dict[Any, bytes | None]:
        connect_thread()
        out: dict[Any, bytes | None] = {f: None for f in followers if f.ended}
        going = [f for f in followers if not f.ended]
        if not going:
            return out
        # The runs' states first, then the lines: a run finished before this read had its lines stored.
        states = {str(row.id): row.state for row in Run.select(Run.id, Run.state).where(
            Run.id.in_(sorted({f.subject_id for f in going})))}
        done = [ident for ident, state in states.items() if state in FINISHED_RUN_STATES]
        sent = _send_lines(going)
        finished = {str(run.id): run for run in Run.select().where(Run.id.in_(done))} if done else {}
        for f in going:
            lines = sent.get(f) or b""
            if f.subject_id not in states:  # pruned meanwhile: nothing more to say
                f.ended = True
                out[f] = lines or None
            elif f.subject_id in finished and lines.count(b"event: line") < BATCH:
                f.ended = True
                out[f] = lines + f"event: end\ndata: {self.render(finished[f.subject_id])}\n\n".encode()
            elif lines:
                out[f] = lines
        return out


# --- the worker's side ----------------------------------------------------------------------

def host_command(host: ContainerHost, argv: list[str]) -> list[str]:
    """``argv`` run on ``host``: as it is on a local host, else over ssh as Ansible connects."""
    if host.connection == "local":
        return argv
    address = host.address or host.name
    target = f"{host.user}@{address}" if host.user else address
    options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", *shlex.split(host.ssh_args)]
    if host.port:
        options += ["-p", str(host.port)]
    if host.key_file:
        options += ["-i", host.key_file]
    return ["ssh", *options, target, shlex.join(argv)]


class _Follow:
    """One container's ``podman logs --follow``: its process, its pipes still open, the env values
    its lines are masked of, and the time its lines start after (a follow again from the
    container's last line may read that line again)."""

    __slots__ = ("after", "open_pipes", "process", "secrets")

    def __init__(self, process: subprocess.Popen[bytes], secrets: list[str], after: dt.datetime | None) -> None:
        self.process, self.secrets, self.after = process, secrets, after
        self.open_pipes = 2


class Collector(threading.Thread):
    """Follows the output of a deployment's containers on its host into ``output_lines``: each
    one while it runs, with its own ``podman logs --follow`` (a restart starts the new container
    beside the serving one, and both print until the old one is stopped), the lines stored as
    they arrive; with ``run_id``, that run's one container from its first line until it is gone
    (or ``until``)."""

    def __init__(self, deployment_id: str, host: ContainerHost, instance: str, secret_key: str,
                 run_id: str = "", until: float | None = None) -> None:
        super().__init__(name=f"follow-{(run_id or deployment_id)[:8]}", daemon=True)
        self.deployment_id, self.host, self.instance, self.secret_key = deployment_id, host, instance, secret_key
        self.run_id, self.until = run_id, until
        self.subject_id = run_id or deployment_id
        self.label = f"buddo.run_id={run_id}" if run_id else f"buddo.deployment_id={deployment_id}"
        self.stopping = threading.Event()
        # The containers followed now, by id (stop() ends their follows from another thread).
        self.follows: dict[str, _Follow] = {}
        self.follows_lock = threading.Lock()
        self.read: queue.Queue[tuple[str, str, bytes | None]] = queue.Queue()
        # Per container: the time of its last line stored (podman's RFC 3339), where its next
        # follow starts, and the start (podman's StartedAt) its last follow read (a container
        # started again, e.g. by a heal, is followed again).
        self.since: dict[str, str] = {}
        self.started: dict[str, Any] = {}
        # A container created since the collector began is read from its first line; one from
        # before, from a little before it began: the lines printed while the timer noticed the
        # follow (a run's container: from its first line).
        self.began = int(time.time())
        self.start_back = "" if run_id else (utcnow() - START_BACK).isoformat(timespec="microseconds") + "Z"
        self.look_at = 0.0

    def stop(self) -> None:
        self.stopping.set()
        with self.follows_lock:
            for f in self.follows.values():
                if f.process.poll() is None:
                    f.process.kill()

    def run(self) -> None:
        connect_thread()
        try:
            while not self.stopping.is_set() and (self.until is None or time.monotonic() < self.until):
                if time.monotonic() >= self.look_at:
                    self._look()
                    if self.run_id and self.started and not self.follows:
                        return  # the run's container ended (or is gone), and every line it printed is stored
                    self.look_at = self._next_look()
                self._collect()
        except Exception:
            log.exception("following the output of %s failed", self.subject_id)
        finally:
            self.stop()
            for f in list(self.follows.values()):
                f.process.wait()
            database_proxy.obj.close()

    def _next_look(self) -> float:
        """A deployment's containers are looked for every IDLE_S (a restart starts one beside the
        serving one); a run's one until it is followed, then once its follow ended."""
        if not self.run_id:
            return time.monotonic() + IDLE_S
        return float("inf") if self.follows else time.monotonic() + RUN_LOOK_S

    def _look(self) -> None:
        """Follow each container that runs and is not followed, or that ran since it was last read
        (started again, or started and ended between two looks)."""
        for container in self._containers():
            ident, state = str(container["Id"]), container.get("State")
            if ident in self.follows or state not in ("running", "exited", "stopped"):
                continue  # followed, or not started yet
            if state == "running" or container.get("StartedAt") != self.started.get(ident):
                self._follow(ident, container)

    def _containers(self) -> list[dict[str, Any]]:
        """The deployment's containers on its host (a run's: its one), in every state; none when
        podman ps fails."""
        argv = ["podman", "ps", "--all", "--format", "json", "--filter", f"label={self.label}",
                "--filter", f"label=buddo.instance={self.instance}"]
        done = subprocess.run(host_command(self.host, argv), capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            return []
        return list(json.loads(done.stdout or "[]"))

    def _follow(self, ident: str, container: dict[str, Any]) -> None:
        """Start ``podman logs --follow`` of the container from its last line stored (one seen the
        first time: from its first line if it was created since the collector began, else from
        START_BACK before)."""
        if ident not in self.since:
            created = container.get("Created")
            fresh = isinstance(created, int | float) and created >= self.began
            self.since[ident] = "" if fresh else self.start_back
        since, secrets = self.since[ident], self._secrets()
        argv = ["podman", "logs", "--follow", "--timestamps", *(["--since", since] if since else []), ident]
        with self.follows_lock:
            if self.stopping.is_set():
                return
            process = subprocess.Popen(host_command(self.host, argv), stdout=subprocess.PIPE,  # noqa: S603
                                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            self.follows[ident] = _Follow(process, secrets, _instant(since) if since else None)
        self.started[ident] = container.get("StartedAt")
        for stream, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
            threading.Thread(target=_pump, args=(ident, stream, pipe, self.read), daemon=True).start()

    def _secrets(self) -> list[str]:
        """The env values to mask: the deployment's as desired now, and those of its newest releases
        (a container followed while a change replaces it runs with the env of the one that served)."""
        d = Deployment.get_or_none(Deployment.id == self.deployment_id)
        if d is None:
            return []
        served = (Release.select(Release.env_vars_encrypted)
                  .where((Release.deployment == d.id) & Release.env_vars_encrypted.is_null(False))
                  .order_by(Release.number.desc()).limit(MASKED_RELEASES))
        sealed = [d.env_vars_encrypted, *(row.env_vars_encrypted for row in served)]
        return sorted({v for token in sealed if token for v in decrypt_env(self.secret_key, token).values() if v})

    def _collect(self) -> None:
        """Store what the follows read (within FLUSH_S, in the order it came), then end the follows
        whose pipes both closed (their container stopped, or their podman logs ended)."""
        batch: list[tuple[str, str, bytes]] = []
        ended: list[str] = []
        try:
            ident, stream, raw = self.read.get(timeout=FLUSH_S)
            while True:
                if raw is not None:
                    batch.append((ident, stream, raw))
                else:
                    self.follows[ident].open_pipes -= 1
                    if not self.follows[ident].open_pipes:
                        ended.append(ident)
                ident, stream, raw = self.read.get_nowait()
        except queue.Empty:
            pass
        if batch:
            self._store(batch)
        for ident in ended:
            with self.follows_lock:
                process = self.follows.pop(ident).process
            process.wait()
            # It may have been started again (or, a run's, be gone): look soon.
            self.look_at = min(self.look_at, time.monotonic() + (RUN_LOOK_S if self.run_id else IDLE_S))

    def _store(self, batch: list[tuple[str, str, bytes]]) -> None:
        rows: list[dict[str, Any]] = []
        newest: dict[str, tuple[dt.datetime, str]] = {}
        for ident, stream, raw in batch:
            f = self.follows[ident]
            at, _, text = raw.decode("utf-8", "replace").rstrip("\n").partition(" ")
            when = _instant(at)
            if when is None or (f.after is not None and when <= f.after):
                continue  # already stored (a follow again from the container's last line)
            line = mask([{"at": at, "stream": stream, "text": text}], f.secrets)[0]
            rows.append({"subject_id": self.subject_id, "at": at[:64], "stream": stream,
                         "text": line["text"][:16384], "container": ident[:12]})
            if ident not in newest or when > newest[ident][0]:
                newest[ident] = (when, at)
        if not rows:
            return
        now = utcnow()
        with write_transaction(database_proxy.obj):
            OutputLine.insert_many([{**row, "created_at": now} for row in rows]).execute()
        for ident, (when, at) in newest.items():
            last = _instant(self.since[ident]) if self.since[ident] else None
            if last is None or when > last:
                self.since[ident] = at


def _pump(container: str, stream: str, pipe: IO[bytes] | None,
          out: queue.Queue[tuple[str, str, bytes | None]]) -> None:
    """A follow's pipe into the collector's queue, then None: the pipe closed."""
    try:
        for raw in iter(pipe.readline, b"") if pipe is not None else ():
            out.put((container, stream, raw))
    finally:
        out.put((container, stream, None))


class Collectors:
    """The worker's follow timer: a collector for each followed deployment this worker holds."""

    def __init__(self, settings: Settings, owner: str) -> None:
        self.settings, self.owner = settings, owner
        self.running: dict[str, Collector] = {}

    def tick(self) -> None:
        now = utcnow()
        wanted = {row.deployment_id for row in OutputFollow.select(OutputFollow.deployment_id).where(
            OutputFollow.until > now)}
        for ident, collector in list(self.running.items()):
            if ident not in wanted or not collector.is_alive() or not self._hold(ident, now):
                collector.stop()
                del self.running[ident]
        for ident in sorted(wanted - set(self.running)):
            if self._hold(ident, now):
                started = self._start(ident)
                if started is not None:
                    self.running[ident] = started
        with write_transaction(database_proxy.obj):
            OutputFollow.delete().where(OutputFollow.until < now - FOLLOW_TTL).execute()
            OutputLine.delete().where(OutputLine.created_at < now - KEEP).execute()

    def _hold(self, ident: str, now: dt.datetime) -> bool:
        """Take or renew the follow's lease: one collector per deployment among the workers."""
        return bool(OutputFollow.update(owner=self.owner, lease_until=now + LEASE).where(
            (OutputFollow.deployment_id == ident)
            & (OutputFollow.owner.is_null() | (OutputFollow.owner == self.owner)
               | (OutputFollow.lease_until < now))).execute())

    def _start(self, ident: str) -> Collector | None:
        d = Deployment.get_or_none(Deployment.id == ident)
        host = _host(self.settings, d.host) if d is not None and d.host else None
        if host is None:
            return None
        collector = Collector(ident, host, self.settings.instance, self.settings.secret_key)
        collector.start()
        return collector

    def stop(self) -> None:
        for collector in self.running.values():
            collector.stop()
        self.running.clear()


def _host(settings: Settings, name: str) -> ContainerHost | None:
    return container_host(Path(settings.inventory), name, settings.host_port_range)


# A one-off run's collector, by run id, in the worker running it (tasks/run.py).
_RUNS: dict[str, Collector] = {}
_RUNS_LOCK = threading.Lock()


def collect_run(settings: Settings, run_id: str, deployment_id: str, host_name: str, seconds: float) -> None:
    """Collect the run's lines while its job runs (at most ``seconds``)."""
    host = _host(settings, host_name)
    if host is None:
        return
    collector = Collector(deployment_id, host, settings.instance, settings.secret_key, run_id=run_id,
                          until=time.monotonic() + seconds)
    with _RUNS_LOCK:
        _RUNS[run_id] = collector
    collector.start()


def end_run(run_id: str) -> None:
    """The run's job ended (its container is gone): its collector stores the last lines, then stops."""
    with _RUNS_LOCK:
        collector = _RUNS.pop(run_id, None)
    if collector is not None:
        collector.join(RUN_DRAIN_S)
        collector.stop()
