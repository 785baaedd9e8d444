"""What the worker changes: job start, outcome, lost workers and health, each in one transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .. import jobqueue
from ..crypto import decrypt_env
from ..db import write_transaction
from ..models import AuditEntry, Deployment, Job, JobEvent, database_proxy, utcnow
from ..runner import EventSummary, PlaybookResult

# Deploy-type jobs bring the deployment up; these statuses mean the operator has
# since asked for something else, so the job has nothing left to do.
_SUPERSEDING = {"stopped", "destroyed"}
# Jobs that bring a deployment up (and read its env values).
_BRINGS_UP = frozenset({"deploy", "restart"})


@dataclass(frozen=True)
class Plan:
    job: Job
    deployment: Deployment
    playbook: str
    extravars: dict[str, Any]
    secrets: dict[str, str]


def extravars_for(deployment: Deployment) -> dict[str, Any]:
    return {
        "deployment_id": str(deployment.id),
        "deployment_subdomain": deployment.subdomain,
        "deployment_container_name": deployment.container_name,
        "deployment_image": deployment.container_image,
        "deployment_port": deployment.port,
        "deployment_host_port": deployment.host_port,
        "deployment_memory_limit_mb": deployment.memory_limit_mb,
        "deployment_cpu_limit_millicores": deployment.cpu_limit_millicores,
        "deployment_custom_domain": deployment.custom_domain or "",
    }


def _touch_audit(entry_id: Any, status: str, details: dict[str, Any] | None = None) -> None:
    if entry_id is None:
        return
    values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
    if details is not None:
        values["details"] = json.dumps(details)
    AuditEntry.update(**values).where(AuditEntry.id == entry_id).execute()


def _fail_deployment(deployment_id: Any, **extra: Any) -> None:
    """A deployment still on its way up ends `failed`; one the operator stopped or destroyed keeps that."""
    Deployment.update(status="failed", updated_at=utcnow(), **extra).where(
        (Deployment.id == deployment_id) & (Deployment.status.in_(("pending", "deploying")))
    ).execute()


def start(job: Job, owner: str, secret_key: str) -> Plan | None:
    """Mark the work as begun; None when there is nothing to run (and the job is now finished)."""
    with write_transaction(database_proxy.obj):
        deployment = Deployment.get_by_id(job.deployment_id)
        if job.action in _BRINGS_UP and deployment.status in _SUPERSEDING:
            if jobqueue.finish(job, owner, succeeded=False, error="cancelled"):
                _touch_audit(job.audit_entry_id, "failed", {
                    "reason": "cancelled",
                    "message": f"the deployment was {deployment.status} before this {job.action} ran",
                })
            return None
        try:
            secrets = decrypt_env(secret_key, deployment.env_vars_encrypted) if job.action in _BRINGS_UP else {}
        except RuntimeError as exc:  # a changed BUDDO_SECRET_KEY: retrying cannot help
            if jobqueue.finish(job, owner, succeeded=False, error=str(exc)):
                _touch_audit(job.audit_entry_id, "failed", {"reason": "error", "message": str(exc)})
                _fail_deployment(job.deployment_id)
            return None
        if job.action in _BRINGS_UP:
            Deployment.update(status="deploying", updated_at=utcnow()).where(
                Deployment.id == deployment.id
            ).execute()
        _touch_audit(job.audit_entry_id, "running")
    return Plan(job, deployment, f"{job.action}.yml", extravars_for(deployment), secrets)


def finish(plan: Plan, owner: str, result: PlaybookResult, duration_s: float) -> bool:
    """Record the outcome; False when the lease was lost (another worker owns the job now)."""
    job, now = plan.job, utcnow()
    with write_transaction(database_proxy.obj):
        if not jobqueue.finish(job, owner, succeeded=result.ok, error=None if result.ok else result.message):
            return False  # nothing written: the new owner records the outcome
        details: dict[str, Any] = {"attempt": job.attempts, "duration_s": round(duration_s, 1)}
        deploying = Deployment.id == plan.deployment.id
        if result.ok:
            digest = result.stats.get("deployment_image_digest")
            if job.action in _BRINGS_UP:
                details["image_digest"] = digest
                Deployment.update(
                    status="running", health_status="healthy", last_health_check=now, updated_at=now,
                    image_digest=digest,
                ).where(deploying & (Deployment.status == "deploying")).execute()
            elif job.action == "stop":
                Deployment.update(health_status="unknown", updated_at=now).where(deploying).execute()
            _touch_audit(job.audit_entry_id, "completed", details)
        else:
            details |= {"reason": result.status, "task": result.failed_task, "message": result.message}
            if job.action in _BRINGS_UP:
                _fail_deployment(plan.deployment.id, health_status="unhealthy")
            _touch_audit(job.audit_entry_id, "failed", details)
    return True


def expired(item: jobqueue.Expired) -> None:
    """A job lost its worker on every attempt: fail it visibly (inside the claim transaction)."""
    job = item.job
    _touch_audit(job.audit_entry_id, "failed", {"reason": "worker_lost", "message": item.reason,
                                                "attempt": job.attempts})
    if job.action in _BRINGS_UP:
        _fail_deployment(job.deployment_id)


def record_event(job: Job, summary: EventSummary) -> None:
    JobEvent.create(
        job=job.id, attempt=job.attempts, created_at=utcnow(), event=summary.event,
        host=summary.host, task=(summary.task or None) and summary.task[:500], status=summary.status,
        message=summary.message,
    )


def running_on(host: str) -> list[Deployment]:
    return list(Deployment.select().where((Deployment.host == host) & (Deployment.status == "running")))


def record_health(deployment: Deployment, healthy: bool) -> None:
    now = utcnow()
    with write_transaction(database_proxy.obj):
        Deployment.update(
            health_status="healthy" if healthy else "unhealthy", last_health_check=now,
        ).where((Deployment.id == deployment.id) & (Deployment.status == "running")).execute()
