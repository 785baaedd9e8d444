"""One-off runs: a command in a new container of a deployment's current release.

Like ``heroku run --detached`` or ``kamal app exec``: the API stores the run and queues a
``run`` job; a worker runs ``run.yml`` on the deployment's host (module app_run: the
release's image by digest, the deployment's env, limits, network and user namespace, no
published port), waits up to the run's timeout (then stops it) and stores its exit code and
the last ``MAX_LINES`` lines of its output, env values masked. The command may hold a
secret: it is stored encrypted and reaches the host through the run's secret file, never
its extra vars, and no audit entry or job event names it.

Bounds: ``schemas.MAX_RUN_TIMEOUT_S`` a run, ``ACTIVE_PER_DEPLOYMENT`` runs queued or running per
deployment (their containers have the deployment's caps: the tier's memory, CPU, processes and
disk; a run holds its memory on the host while queued or running, as placement counts it, and
is refused with 503 when the host has no room for it), and retention (``BUDDO_RETENTION_DAYS``)
for finished runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Hashable
from typing import Any

from .. import jobqueue
from ..auth import Principal
from ..crypto import decrypt_secret, encrypt_secret
from ..db import HOST_LOCK, advisory_lock, connect_thread, write_transaction
from ..domain_errors import Forbidden, Invalid, LimitReached, NotFound, Unavailable
from ..inventory import container_host
from ..models import Deployment, Job, Run, database_proxy, utcnow
from ..results import PlaybookResult
from ..settings import Settings
from ..vocabulary import FINISHED_RUN_STATES, DesiredState, RunState
from . import engine, output, placement, releases, state

ACTIVE_PER_DEPLOYMENT = 1
MAX_LINES = 1000
# What a run's job takes beyond the command: pulling the image, creating and removing the container.
JOB_OVERHEAD_S = 300


class Runs:
    """The API's side: start a run, read one, list a deployment's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secret_key = settings.secret_key

    @staticmethod
    def _owned(principal: Principal, deployment_id: uuid.UUID, *, lock: bool = False) -> Deployment:
        """The caller's deployment (locked, to change it), else 404 or 403."""
        d = state.locked(deployment_id) if lock else Deployment.get_or_none(Deployment.id == deployment_id)
        if d is None:
            raise NotFound("Deployment not found", code="deployment_not_found")
        if d.operator_id != principal.operator_id:
            raise Forbidden("Deployment belongs to another operator", code="forbidden")
        return d

    def create(self, principal: Principal, deployment_id: uuid.UUID, command: list[str], timeout_s: int) -> Run:
        now = utcnow()
        with write_transaction(database_proxy.obj):
            d = self._owned(principal, deployment_id, lock=True)
            if d.desired_state == DesiredState.ABSENT:
                raise Invalid("The deployment is destroyed", code="deployment_destroyed")
            if d.billing_status == "suspended":
                raise Invalid("The deployment is suspended until its account pays", code="deployment_suspended")
            if not d.image_digest:
                raise Invalid("The deployment has no release to run yet (wait until it ran once)",
                              code="no_release")
            active = Run.select().where((Run.deployment == d.id)
                                        & Run.state.in_([RunState.QUEUED, RunState.RUNNING])).count()
            if active >= ACTIVE_PER_DEPLOYMENT:
                raise LimitReached(f"At most {ACTIVE_PER_DEPLOYMENT} run at a time per deployment",
                                   code="run_limit_reached", details={"limit": ACTIVE_PER_DEPLOYMENT})
            self._check_room(d)
            run = Run.create(id=uuid.uuid4(), deployment=d.id, timeout_s=timeout_s, state=RunState.QUEUED,
                             command_encrypted=encrypt_secret(self.secret_key, json.dumps(command)),
                             initiated_by=principal.client_id, inserted_at=now)
            job = Job.create(deployment=d.id, action="run", host=d.host, lock_key=f"run/{run.id}",
                             timeout_s=timeout_s + JOB_OVERHEAD_S, run_after=now, created_at=now, updated_at=now,
                             result=json.dumps({"run_id": str(run.id)}))
            Run.update(job_id=job.id).where(Run.id == run.id).execute()
            run.job_id = job.id
        return run

    def _check_room(self, d: Deployment) -> None:
        """The run's container holds the deployment's memory beside it: the host must have that room
        (counted and taken under the host's lock, as placement does)."""
        advisory_lock(HOST_LOCK, d.host)
        host = container_host(self.settings.inventory, d.host, self.settings.host_port_range)
        if host is None or placement.free_mb(host.memory_mb, d.host) < d.memory_limit_mb:
            raise Unavailable(f"The deployment's host has no room for a run now ({d.memory_limit_mb} MB); "
                              "try again later", code="capacity_exhausted",
                              details={"memory_mb": d.memory_limit_mb}, headers={"Retry-After": "60"})

    def get(self, principal: Principal, deployment_id: uuid.UUID, run_id: uuid.UUID) -> Run:
        run = Run.get_or_none((Run.id == run_id) & (Run.deployment == deployment_id))
        if run is None:
            raise NotFound("Run not found", code="run_not_found")
        self._owned(principal, deployment_id)  # a run's deployment exists: 403 for another's
        return run

    def list(self, principal: Principal, deployment_id: uuid.UUID, limit: int) -> list[Run]:
        """The deployment's newest ``limit`` runs, newest first."""
        d = self._owned(principal, deployment_id)
        return list(Run.select().where(Run.deployment == d.id).order_by(Run.inserted_at.desc(), Run.id.desc())
                    .limit(limit))


def runs_finished(keys: Collection[Hashable]) -> set[Hashable]:
    """The check of parked run waits (serving.py): of the run ids, those finished (or gone)."""
    connect_thread()  # the waker's own thread
    ids = [str(key) for key in keys]
    going = {str(row.id) for row in Run.select(Run.id).where(
        Run.id.in_(ids) & Run.state.not_in(list(FINISHED_RUN_STATES)))}
    return {key for key in keys if str(key) not in going}


# --- the worker's side (tasks/run.py) -------------------------------------------------------

def start(job: Job, owner: str, secret_key: str) -> engine.Plan | None:
    """The run's Plan, its state running; None when there is nothing to run (finished as such)."""
    run_id = json.loads(job.result or "{}").get("run_id")
    with write_transaction(database_proxy.obj):
        run = Run.get_or_none(Run.id == run_id) if run_id else None
        d = state.locked(run.deployment_id) if run is not None else None
        if run is None or run.state in FINISHED_RUN_STATES:
            jobqueue.finish(job, owner, succeeded=False, error="nothing to run")
            return None
        why = None
        if d is None or d.desired_state == DesiredState.ABSENT or not d.image_digest:
            why = "the deployment was destroyed before the run started"
        else:
            image = releases.by_digest(d.container_image, d.image_digest)
            item = {"id": str(d.id), "state": "running", "image": image}
            try:
                command = json.loads(decrypt_secret(secret_key, run.command_encrypted, "a run's command"))
                env = engine.env_values([item], {str(d.id): d}, secret_key)
                logins = engine.registry_auths([item], {str(d.id): d}, secret_key)
            except RuntimeError as exc:
                why = str(exc)
        if why is not None:
            _end(run, RunState.ERROR, None, [], why)
            jobqueue.finish(job, owner, succeeded=False, error=why)
            return None
        assert d is not None
        Run.update(state=RunState.RUNNING, started_at=utcnow()).where(Run.id == run.id).execute()
    request = {
        "run_id": str(run.id), "deployment_id": str(d.id), "name": f"{d.container_name}-run-{run.id.hex[:8]}",
        "image": image, "spec": state.spec_of(d), "timeout_s": run.timeout_s, "max_lines": MAX_LINES,
        "memory_limit_mb": d.memory_limit_mb, "cpu_limit_millicores": d.cpu_limit_millicores,
        "pids_limit": d.tier.pids_limit, "log_max_size_mb": d.tier.log_max_size_mb,
        "disk_limit_mb": d.tier.disk_limit_mb,
    }
    secrets: dict[str, Any] = {**env, f"command:{run.id}": command}
    return engine.Plan(job, "run.yml", d.host, [request], [], secrets, registry_auth=logins,
                       variables={"run_request": request})


def finish(plan: engine.Plan, owner: str, result: PlaybookResult) -> None:
    """Store how the run ended and what it printed (masked again: the module masked already)."""
    request = plan.items[0]
    data = result.stats.get("buddo_run") if result.ok else None
    env = plan.secrets.get(request["deployment_id"]) or {}
    with write_transaction(database_proxy.obj):
        run = Run.get_or_none(Run.id == request["run_id"])
        if run is None:
            jobqueue.finish(plan.job, owner, succeeded=False, error="the run is gone")
            return
        if data is None:
            _end(run, RunState.ERROR, None, [], result.message or "the playbook run failed")
        else:
            code = data.get("exit_code")
            code = int(code) if isinstance(code, int) or (isinstance(code, str) and code.lstrip("-").isdigit()) \
                else None
            timed_out = data.get("timed_out") in (True, "True", "true")
            error = str(data.get("error") or "") or None
            ended = (RunState.ERROR if error else RunState.TIMED_OUT if timed_out
                     else RunState.SUCCEEDED if code == 0 else RunState.FAILED)
            _end(run, ended, code, output.mask(list(data.get("lines") or []), list(env.values())), error)
        jobqueue.finish(plan.job, owner, succeeded=data is not None, error=None if data else result.message)


def _end(run: Run, ended: RunState, exit_code: int | None, lines: list[dict[str, Any]], error: str | None) -> None:
    """The run's end and its audit entry (in the caller's transaction)."""
    Run.update(state=ended, exit_code=exit_code, output=json.dumps(lines), error=error, finished_at=utcnow()).where(
        Run.id == run.id).execute()
    d = Deployment.get_or_none(Deployment.id == run.deployment_id)
    if d is not None:
        state.audit(d, "run", "completed" if ended == RunState.SUCCEEDED else "failed", run.initiated_by,
                    details={"run_id": str(run.id), "state": str(ended), "exit_code": exit_code,
                             **({"message": error} if error else {})})
