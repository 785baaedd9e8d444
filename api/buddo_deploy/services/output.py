"""App output: what a deployment's container printed, read on its host by a worker.

The API never runs Ansible and never waits for it. A read is an ``output`` job: a worker
runs ``output.yml`` (one ``podman logs``) and stores the lines, env values masked (the
module did already; this is the second line), in the job row. GET .../output answers at
once from the latest read: fresh enough (``BUDDO_OUTPUT_MAX_AGE``), as it is; older, as
it is too, while a new read is queued (stale-while-revalidate); none yet, 202 with the
queued read. Reads coalesce: while one is queued or running, or the latest is fresh (or
failed) within the max age, no GET queues another. Each deployment keeps one read's
lines (a newer read clears the older ones); destroy clears them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..crypto import decrypt_env
from ..db import OUTPUT_READ_LOCK, advisory_lock, write_transaction
from ..models import Deployment, Job, database_proxy, utcnow
from ..results import PlaybookResult
from . import state

JOB_TIMEOUT_S = 30
MASK = "********"
# What a read asks for at least, so that the usual requests (tail up to the default) share one.
READ_TAIL = 100
_NANOS = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True)
class Output:
    """What GET .../output answers: the lines of the latest read that covers the request
    (none yet: ``collected_at`` is None), and the read under way or the latest one's failure."""

    lines: list[dict[str, Any]]
    container: dict[str, Any] | None
    collected_at: dt.datetime | None
    age_s: float | None
    pending: Job | None
    failed: Job | None


def _result(job: Job | None) -> dict[str, Any]:
    return dict(json.loads(job.result or "{}")) if job is not None else {}


def _reads(deployment_id: Any) -> tuple[Job | None, Job | None]:
    """(the latest read, whatever its state; the latest read with lines)."""
    reads = Job.select().where((Job.deployment == deployment_id) & (Job.action == "output")).order_by(Job.id.desc())
    latest = reads.first()
    if latest is None or (latest.state == "succeeded" and latest.result):
        return latest, latest
    kept = reads.where((Job.state == "succeeded") & Job.result.is_null(False)).first()
    return latest, kept


def _covers(read: Job | None, tail: int) -> bool:
    """A read of N lines answers any tail up to N; one that found fewer lines than it asked
    for has them all, so it answers any tail."""
    if read is None:
        return False
    data = _result(read)
    asked = int((data.get("request") or {}).get("tail") or 0)
    return asked >= tail or len(data.get("lines") or []) < asked


def _fresh(read: Job | None, max_age_s: float, now: dt.datetime) -> bool:
    return bool(read is not None and read.finished_at is not None
                and now - read.finished_at <= dt.timedelta(seconds=max_age_s))


def _instant(stamp: str) -> dt.datetime | None:
    """RFC 3339 with up to nanoseconds (podman's) as an aware datetime; None when it is not one."""
    try:
        parsed = dt.datetime.fromisoformat(_NANOS.sub(r"\1", stamp.replace("Z", "+00:00")))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def select_lines(lines: list[dict[str, Any]], tail: int, since: dt.datetime | None) -> list[dict[str, Any]]:
    """The last ``tail`` lines after ``since`` (as ``podman logs --since --tail`` would have
    read them: lines are in time order, so the newest ``tail`` of a longer read are the same)."""
    if since is not None:
        lines = [line for line in lines if (at := _instant(str(line.get("at", "")))) is None or at > since]
    return lines[-tail:]


def current(d: Deployment, *, tail: int, since: dt.datetime | None, max_age_s: float) -> Output:
    """The answer to GET .../output, queueing a read when none is under way, fresh or failed lately."""
    now = utcnow()
    latest, read = _reads(d.id)
    if not (_covers(read, tail) and _fresh(read, max_age_s, now)):
        with write_transaction(database_proxy.obj):
            advisory_lock(OUTPUT_READ_LOCK, str(d.id))  # two API processes must not both queue one
            latest, read = _reads(d.id)
            latest = _queue_unless_under_way(d, latest, read, tail, max_age_s, utcnow())
    now = utcnow()
    pending = latest if latest is not None and latest.state in {"queued", "running"} else None
    failed = latest if latest is not None and latest.state == "failed" else None
    if read is None or read.finished_at is None or not _covers(read, tail):
        return Output([], None, None, None, pending, failed)
    data = _result(read)
    return Output(select_lines(list(data.get("lines") or []), tail, since), data.get("container") or None,
                  read.finished_at, round(max(0.0, (now - read.finished_at).total_seconds()), 1), pending, failed)


def retry_after_s(failed: Job, max_age_s: float) -> int:
    """Seconds until a GET queues a new read after ``failed`` (at least 1)."""
    finished = failed.finished_at or utcnow()
    return max(1, math.ceil(max_age_s - (utcnow() - finished).total_seconds()))


def _queue_unless_under_way(d: Deployment, latest: Job | None, read: Job | None, tail: int, max_age_s: float,
                            now: dt.datetime) -> Job | None:
    """The latest read after this request: a new one unless one is queued or running, or the
    latest covers it and is fresh, or failed within the max age (no read per GET while a host is down)."""
    if latest is not None and latest.state in {"queued", "running"}:
        asked = int((_result(latest).get("request") or {}).get("tail") or 0)
        if latest.state == "queued" and asked < tail:  # not started yet: let it read enough for this one too
            Job.update(result=json.dumps({"request": {"tail": max(tail, READ_TAIL), "since": ""}}),
                       updated_at=now).where(
                (Job.id == latest.id) & (Job.state == "queued")).execute()
        return latest
    if latest is not None and latest.state == "failed" and _fresh(latest, max_age_s, now):
        return latest
    if _covers(read, tail) and _fresh(read, max_age_s, now):
        return latest
    return enqueue(d, max(tail, READ_TAIL))


def enqueue(d: Deployment, tail: int) -> Job:
    """Queue a read of the last ``tail`` lines; its own lock key, so it never waits behind a
    converge of the deployment, and reads of one deployment run in order."""
    now = utcnow()
    with write_transaction(database_proxy.obj):
        job: Job = Job.create(deployment=d.id, action="output", host="", lock_key=f"output/{d.id}",
                              timeout_s=JOB_TIMEOUT_S, run_after=now, created_at=now, updated_at=now,
                              result=json.dumps({"request": {"tail": tail, "since": ""}}))
    return job


def forget(deployment_id: Any) -> None:
    """Drop every read's lines of a deployment (it is destroyed); call inside its transaction."""
    Job.update(result=None).where((Job.deployment == deployment_id) & (Job.action == "output")
                                  & (Job.state != "queued") & Job.result.is_null(False)).execute()


def start(job: Job, owner: str, secret_key: str) -> tuple[str, list[dict[str, Any]], list[str],
                                                           dict[str, dict[str, str]]] | None:
    """(host, [request], known, secrets) for the worker's Plan; None when there is nothing to read."""
    from .. import jobqueue

    with write_transaction(database_proxy.obj):
        d = state.locked(job.deployment_id)
        request = json.loads(job.result or "{}").get("request")
        if d is None or request is None or d.desired_state == "absent":
            jobqueue.finish(job, owner, succeeded=False, error="nothing to read")
            return None
        try:
            env = decrypt_env(secret_key, d.env_vars_encrypted) if d.env_vars_encrypted else {}
        except RuntimeError as exc:
            jobqueue.finish(job, owner, succeeded=False, error=str(exc))
            return None
        item = {"id": str(d.id), "host": d.host, "container_name": d.container_name, **request}
        return d.host, [item], [], {str(d.id): env} if env else {}


def mask(lines: list[dict[str, Any]], secrets: list[str]) -> list[dict[str, Any]]:
    values = sorted({s for s in secrets if s}, key=len, reverse=True)
    out = []
    for line in lines:
        text = str(line.get("text", ""))
        for value in values:
            text = text.replace(value, MASK)
        out.append({"at": str(line.get("at", "")), "stream": str(line.get("stream", "")), "text": text})
    return out


def finish(job: Job, owner: str, result: PlaybookResult, secrets: dict[str, dict[str, str]]) -> None:
    """Store the read's lines (masked) in its job row, and drop the older reads' lines."""
    from .. import jobqueue

    data = result.stats.get("buddo_output") if result.ok else None
    with write_transaction(database_proxy.obj):
        if data is None:
            jobqueue.finish(job, owner, succeeded=False, error=result.message or "the playbook run failed")
            return
        values = [v for env in secrets.values() for v in env.values()]
        request = json.loads(job.result or "{}").get("request") or {}
        body: str | None = json.dumps({"request": request, "lines": mask(list(data.get("lines") or []), values),
                           "container": data.get("container") or {}})
        if Deployment.select(Deployment.desired_state).where(Deployment.id == job.deployment_id).scalar() == "absent":
            body = None  # destroyed while it was read: nothing of it is kept
        if jobqueue.finish(job, owner, succeeded=True, result=body):
            Job.update(result=None).where((Job.deployment == job.deployment_id) & (Job.action == "output")
                                          & (Job.id < job.id) & (Job.state != "queued")
                                          & Job.result.is_null(False)).execute()
