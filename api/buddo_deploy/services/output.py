"""App output: what a deployment's container printed, read from its host by a worker.

The API never runs Ansible in a request (DESIGN.md), so GET .../output queues a
short ``output`` job, waits a bounded time for a worker to run ``output.yml`` (one
``podman logs``), and answers with the lines. The worker masks env values (the
module did already; this is the second line) before it stores the lines in the
job row; the API deletes them once read. A result nobody waits for any more is
not stored.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

from ..crypto import decrypt_env
from ..db import write_transaction
from ..errors import ApiError
from ..models import Deployment, Job, database_proxy, utcnow
from ..runner import PlaybookResult
from . import state

POLL_S = 0.1
JOB_TIMEOUT_S = 30
MASK = "********"


def enqueue(d: Deployment, tail: int, since: dt.datetime | None) -> int:
    """Queue the read; its own lock key, so it never waits behind a converge of the deployment."""
    now = utcnow()
    request = {"tail": tail, "since": since.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if since else ""}
    with write_transaction(database_proxy.obj):
        job = Job.create(deployment=d.id, action="output", host="", lock_key=f"output/{uuid.uuid4()}",
                         timeout_s=JOB_TIMEOUT_S, run_after=now, created_at=now, updated_at=now,
                         result=json.dumps({"request": request}))
    return int(job.id)


def wait(job_id: int, wait_s: float) -> dict[str, Any]:
    """The job's lines once a worker stored them (deleted from the row as they are read).

    ``wait_s`` (BUDDO_OUTPUT_WAIT): how long the API waits for a worker; then the job has no reader.
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        job = Job.get_by_id(job_id)
        if job.state in {"succeeded", "failed"}:
            with write_transaction(database_proxy.obj):
                Job.update(result=None).where(Job.id == job_id).execute()
            if job.state == "failed":
                raise ApiError(f"Could not read the app's output: {job.last_error or 'the run failed'}",
                               code="output_failed", status="502 Bad Gateway")
            return dict(json.loads(job.result or "{}"))
        time.sleep(POLL_S)
    with write_transaction(database_proxy.obj):  # not started yet: nobody needs it any more
        Job.update(state="failed", finished_at=utcnow(), updated_at=utcnow(), last_error="abandoned").where(
            (Job.id == job_id) & (Job.state == "queued")).execute()
    raise ApiError(f"No worker read the app's output within {wait_s:g} s; try again", code="output_timeout",
                   status="504 Gateway Timeout")


def start(job: Job, owner: str, secret_key: str) -> tuple[str, list[dict[str, Any]], list[str],
                                                           dict[str, dict[str, str]]] | None:
    """(host, [request], known, secrets) for the worker's Plan; None when there is nothing to read."""
    from .. import jobqueue

    d = state.locked(job.deployment_id)
    request = json.loads(job.result or "{}").get("request")
    if d is None or request is None:
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


def finish(job: Job, owner: str, result: PlaybookResult, secrets: dict[str, dict[str, str]],
           wait_s: float) -> None:
    from .. import jobqueue

    data = result.stats.get("buddo_output") if result.ok else None
    late = utcnow() - job.created_at > dt.timedelta(seconds=wait_s + 1)  # the API stopped waiting
    with write_transaction(database_proxy.obj):
        if data is None:
            jobqueue.finish(job, owner, succeeded=False, error=result.message or "the playbook run failed")
            return
        values = [v for env in secrets.values() for v in env.values()]
        body = None if late else json.dumps({"lines": mask(list(data.get("lines") or []), values),
                                             "container": data.get("container") or {}})
        jobqueue.finish(job, owner, succeeded=True, result=body)
