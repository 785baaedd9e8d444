"""Where a deploy's time goes: the last job of a deployment, from its recorded events.

The worker stores each playbook event when it receives it, so the gap between a
task's start and the next event is that task's cost (module runs, includes and
handlers alike). The API shows whole seconds; this reads the stack's SQLite
database for the stored microseconds. Used by the benches' --profile.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any


def _at(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def job_timeline(stack: Any, ident: str) -> list[str]:
    """Lines: claim latency, runner start-up, each task, and the finish, for the deployment's last job."""
    path = stack.env["BUDDO_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        job = db.execute("SELECT j.id, j.created_at, j.started_at, j.finished_at, j.attempts FROM jobs j "
                         "JOIN job_targets t ON t.job_id = j.id WHERE t.deployment_id IN (?, ?) "
                         "ORDER BY j.id DESC LIMIT 1", (ident, ident.replace("-", ""))).fetchone()
        if job is None:
            return ["no job recorded"]
        job_id, created, started, finished, attempts = job
        events = db.execute("SELECT created_at, event, task, status FROM job_events WHERE job_id = ? "
                            "AND attempt = ? ORDER BY id", (job_id, attempts)).fetchall()
    lines = [f"job {job_id}, attempt {attempts}, {len(events)} events"]
    lines.append(f"  {(_at(started) - _at(created)).total_seconds():6.2f} s  queued -> claimed")
    previous, label = _at(started), "claimed -> first event (runner + ansible-playbook start-up)"
    for at_text, event, task, status in events:
        at = _at(at_text)
        gap = (at - previous).total_seconds()
        if gap >= 0.02 or event == "playbook_on_stats":
            lines.append(f"  {gap:6.2f} s  {label}")
        previous = at
        label = task or event if event == "playbook_on_task_start" else f"  after {event} {status or ''}: {task or ''}"
    if finished:
        lines.append(f"  {(_at(finished) - previous).total_seconds():6.2f} s  {label} -> job finished")
    return lines


def playbook_runs(stack: Any, idents: list[str]) -> int:
    """How many playbook runs brought these deployments up: the host converges that had them as targets."""
    path = stack.env["BUDDO_DATABASE_URL"].removeprefix("sqlite:///")
    runs = set()
    with sqlite3.connect(path) as db:
        for ident in idents:
            row = db.execute("SELECT job_id FROM job_targets WHERE deployment_id IN (?, ?) AND state = 'succeeded' "
                             "ORDER BY job_id LIMIT 1", (ident, ident.replace("-", ""))).fetchone()
            if row:
                runs.add(row[0])
    return len(runs)
