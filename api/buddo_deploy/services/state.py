"""Desired state, generations and the contract's status derived from them.

Every change to what a deployment should be (the API, health verdicts, later the
billing clock) goes through :func:`change`: it locks the row, bumps the
generation with a compare-and-set, derives the status, writes an audit entry
for the action and makes sure a converge job is queued, in the caller's
transaction. Workers record how far a deployment converged with
:func:`record_outcome`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, cast

from .. import jobqueue
from ..db import lock_row
from ..domain_errors import Conflict
from ..models import AuditEntry, Deployment, utcnow
from ..vocabulary import (
    AuditAction,
    AuditStatus,
    CustomDomainStatus,
    DeploymentStatus,
    DesiredState,
    Health,
)
from . import releases, webhooks

# What each audit action asks the deployment to be.
INTENT: dict[str, DesiredState] = {
    AuditAction.CREATE: DesiredState.RUNNING, AuditAction.DEPLOY: DesiredState.RUNNING,
    AuditAction.RESTART: DesiredState.RUNNING, AuditAction.REACTIVATE: DesiredState.RUNNING,
    AuditAction.UPDATE: DesiredState.RUNNING,
    AuditAction.STOP: DesiredState.STOPPED, AuditAction.SUSPEND: DesiredState.STOPPED,
    AuditAction.DESTROY: DesiredState.ABSENT,
}
OPEN_AUDIT = (AuditStatus.PENDING, AuditStatus.RUNNING)


def locked(deployment_id: Any) -> Deployment | None:
    """The deployment's row, locked until the transaction ends (db.lock_row)."""
    return cast("Deployment | None", lock_row(Deployment, deployment_id))


def serving(deployment: Deployment) -> bool:
    return deployment.serving_port is not None


def derive_status(d: Deployment, *, working: bool = False) -> DeploymentStatus:
    """The contract's status from desired and observed state (DESIGN.md)."""
    if d.desired_state == DesiredState.ABSENT:
        return DeploymentStatus.DESTROYED
    if d.desired_state == DesiredState.STOPPED:
        return DeploymentStatus.STOPPED
    if d.observed_generation >= d.generation and serving(d):
        return DeploymentStatus.RUNNING
    if d.failed_generation == d.generation and not serving(d):
        return DeploymentStatus.FAILED
    if not working and d.generation == 1 and d.observed_generation == 0:
        return DeploymentStatus.PENDING  # created, nothing asked since, no worker on it yet
    return DeploymentStatus.DEPLOYING


def env_digest(d: Deployment) -> str:
    # The ciphertext never changes for a deployment, so its hash tells env changes apart
    # without the key.
    return hashlib.sha256((d.env_vars_encrypted or "").encode()).hexdigest()[:16]


# How app containers are isolated (user namespace, capabilities, disk quota): raised when that
# changes, so every container made before is replaced (beside the serving one, as any spec change).
ISOLATION = 2


def spec_of(d: Deployment) -> str:
    """Everything that makes a container: a different spec means a new container."""
    parts: list[Any] = [d.container_image, d.port, d.memory_limit_mb, d.cpu_limit_millicores, env_digest(d),
                        d.revision, ISOLATION, d.tier.disk_limit_mb]
    if d.pinned_digest:  # only then, so the spec of every unpinned container stays what it was
        parts.append(d.pinned_digest)
    if d.health_check:  # likewise: its labels tell the prober how to probe it
        parts.append(d.health_check)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def routed_custom_domain(d: Deployment) -> str:
    """Caddy routes a custom domain only once its DNS points at the app: otherwise anyone could
    claim a name (and its certificate) that merely has a dangling CNAME to the platform."""
    return (d.custom_domain or "") if d.custom_domain_status == CustomDomainStatus.ACTIVE else ""


def desired_item(d: Deployment, history: list[str] | None = None) -> dict[str, Any]:
    """One item of the desired-state document the converge playbook takes.

    ``releases``: the image digests of the newest releases, newest first; the host
    keeps the images of the first ``converge_releases_kept`` of them (``history``: those
    digests, read for many deployments at once by releases.histories).
    """
    pull = "always" if d.pull_revision == d.revision > d.observed_revision else "missing"
    image = d.container_image
    if d.pinned_digest:  # a rollback's release
        image = releases.by_digest(d.container_image, d.pinned_digest)
    elif pull == "missing" and d.image_digest and d.desired_state == DesiredState.RUNNING:
        # A heal, a repair, a start after a stop: the version that served, by its digest. The
        # tag on the host may have moved meanwhile (another deployment's restart of it).
        image = releases.by_digest(d.container_image, d.image_digest)
    return {
        "id": str(d.id), "host": d.host, "subdomain": d.subdomain, "container_name": d.container_name,
        "state": d.desired_state, "generation": d.generation, "image": image, "port": d.port,
        "host_ports": [d.host_port, d.host_port + 1], "memory_limit_mb": d.memory_limit_mb,
        "cpu_limit_millicores": d.cpu_limit_millicores, "custom_domain": routed_custom_domain(d),
        # The tier's current caps (not copied at create time): a changed tier is drift, and the
        # converge plan replaces containers whose caps differ, as it does for memory and CPU.
        "pids_limit": d.tier.pids_limit, "log_max_size_mb": d.tier.log_max_size_mb,
        "disk_limit_mb": d.tier.disk_limit_mb,
        "spec": spec_of(d), "revision": d.revision, **health_fields(d),
        # A restart's revision, not yet served: its tag as it is now; any other: what is cached.
        "pull": pull,
        "releases": [releases.by_digest(d.container_image, digest)
                     for digest in (releases.history(d.id) if history is None else history)],
    }


def health_fields(d: Deployment) -> dict[str, Any]:
    """The item's health check; none given: zeros and "", the engine's defaults (any answer on its
    wait path gates a new container, the prober's path and timeout)."""
    if not d.health_check:
        return {"health_path": "", "health_status": 0, "health_timeout_s": 0, "health_grace_s": 0}
    check = json.loads(d.health_check)
    return {"health_path": check["path"],
            # 1: any status below 500; otherwise the one status that means healthy.
            "health_status": check["expected_status"] or 1,
            "health_timeout_s": check["timeout_s"], "health_grace_s": check["grace_s"]}


def health_interval_s(d: Deployment) -> int:
    """Seconds between two probes that count, 0: every probe cycle."""
    return int(json.loads(d.health_check)["interval_s"]) if d.health_check else 0


def audit(d: Deployment, action: str, status: str, initiated_by: str | None, *,
          details: dict[str, Any] | None = None, generation: int | None = None) -> AuditEntry:
    now = utcnow()
    entry = AuditEntry.create(
        id=uuid.uuid4(), deployment=d.id, action=action, status=status, initiated_by=initiated_by,
        details=json.dumps(details) if details is not None else None, inserted_at=now, updated_at=now,
        generation=generation,
    )
    webhooks.emit_entry(d, entry.id, action, status, details or {})
    return entry


def _apply(d: Deployment, values: dict[str, Any]) -> dict[str, Any]:
    """Set ``values`` on the row object and add the status they derive to; the columns to write."""
    for name, value in values.items():
        setattr(d, name, value)
    d.status = values["status"] = derive_status(d)
    return values


def change(d: Deployment, action: str, initiated_by: str | None, *, timeout_s: int,
           details: dict[str, Any] | None = None, **desired: Any) -> Deployment:
    """Apply a desired-state change to a locked row: new generation, status, audit entry, job."""
    _new_generation(d, desired)
    request(d, action, initiated_by, timeout_s=timeout_s, details=details)
    return d


def revert(d: Deployment, **desired: Any) -> None:
    """The desired state goes back to what serves (a new version that never answered, the old one
    still serving): a new generation, which needs no run. The worker records it converged."""
    _new_generation(d, desired)


def _new_generation(d: Deployment, desired: dict[str, Any]) -> None:
    """The one writer of desired state (change, revert): the row is locked by the caller."""
    values = _apply(d, {**desired, "generation": d.generation + 1, "updated_at": utcnow()})
    updated = Deployment.update(**values).where(
        (Deployment.id == d.id) & (Deployment.generation == d.generation - 1)
    ).execute()
    if updated != 1:
        raise Conflict("The deployment changed while this request ran; try again", code="conflict")


def request(d: Deployment, action: str, initiated_by: str | None, *, timeout_s: int,
            details: dict[str, Any] | None = None) -> AuditEntry:
    """The audit entry of an action on the current generation, and the job that converges it."""
    entry = audit(d, action, AuditStatus.PENDING, initiated_by, details=details, generation=d.generation)
    job = jobqueue.enqueue_converge(d, timeout_s=timeout_s)
    AuditEntry.update(job_id=job.id).where(AuditEntry.id == entry.id).execute()
    return entry


def open_entries(deployment_id: Any, up_to: int) -> list[AuditEntry]:
    return list(AuditEntry.select().where(
        (AuditEntry.deployment == deployment_id) & (AuditEntry.status.in_(OPEN_AUDIT))
        & (AuditEntry.generation.is_null(False)) & (AuditEntry.generation <= up_to)
    ).order_by(AuditEntry.inserted_at, AuditEntry.id))


def _details(entry: AuditEntry) -> dict[str, Any]:
    return dict(json.loads(entry.details)) if entry.details else {}


def touch_entries(deployment_id: Any, up_to: int, status: str, details: dict[str, Any] | None = None) -> None:
    """Mark the open entries the deployment has now converged past (running, or still retrying)."""
    for entry in open_entries(deployment_id, up_to):
        merged = {**_details(entry), **(details or {})}
        AuditEntry.update(status=status, updated_at=utcnow(), details=json.dumps(merged) if merged else None).where(
            AuditEntry.id == entry.id).execute()


def close_entries(d: Deployment, up_to: int, state: str, ok: bool, details: dict[str, Any]) -> None:
    """Close the open entries the deployment has converged past (or failed); their webhooks."""
    for entry in open_entries(d.id, up_to):
        # Keep why the entry was made (a heal's reason); a retry's last error is history now.
        mine = {k: v for k, v in _details(entry).items() if k not in {"last_error", "retrying_in_s"}} | details
        if ok and INTENT.get(entry.action) != state:
            status, mine = AuditStatus.FAILED, {"reason": "superseded",
                                      "message": f"a later request made the deployment {state}"}
        else:
            status = AuditStatus.COMPLETED if ok else AuditStatus.FAILED
        AuditEntry.update(status=status, updated_at=utcnow(), details=json.dumps(mine)).where(
            AuditEntry.id == entry.id).execute()
        webhooks.emit_entry(d, entry.id, entry.action, status, mine)


def record_outcome(item: dict[str, Any], outcome: dict[str, Any], details: dict[str, Any]) -> None:
    """Record what a converge run made of one deployment (call inside a write transaction).

    ``item`` is the desired item the run was given (its generation is the target),
    ``outcome`` the playbook's report for it. Success moves observed_generation up
    (never down); a failure of the app's own fails that generation, and a restart
    whose new container never answered goes back to the revision that serves.
    """
    d = locked(item["id"])
    if d is None:
        return
    target = int(item["generation"])
    now = utcnow()
    values: dict[str, Any] = {"updated_at": now}
    entry_details = dict(details)
    release_entry = None
    if outcome.get("ok") and item["state"] == DesiredState.RUNNING:
        release_entry = releases.releasing(open_entries(d.id, target))
    if outcome.get("ok"):
        if target > d.observed_generation:
            values["observed_generation"] = target
        container = outcome.get("container") or {}
        if item["state"] == DesiredState.RUNNING:
            values |= {"observed_revision": item["revision"], "serving_port": container.get("host_port"),
                       "container_id": container.get("id"), "health_status": Health.HEALTHY,
                       "last_health_check": now, "health_failures": 0}
            if container.get("image_digest"):
                values["image_digest"] = container["image_digest"]
                entry_details["image_digest"] = container["image_digest"]
        elif item["state"] == DesiredState.STOPPED:
            values |= {"serving_port": None, "health_status": Health.UNKNOWN}
        else:
            values |= {"serving_port": None, "container_id": None, "health_status": Health.UNKNOWN}
            if d.desired_state == DesiredState.ABSENT:
                values["released_at"] = now
    else:
        values["failed_generation"] = target
        entry_details |= {"reason": outcome.get("kind") or "error", "task": outcome.get("task"),
                          "message": outcome.get("message")}
        if d.generation == target and d.desired_state == DesiredState.RUNNING and serving(d):
            # The new version never came up: the old one still serves, so that is the
            # desired state again (a new generation, converged already). A rollback that
            # failed goes back to the image of the release that serves.
            serving_release = releases.latest(d.id)
            back: dict[str, Any] = {"revision": d.observed_revision, "pinned_digest": None,
                                    # A later revision of the same number (a heal) pulls nothing.
                                    "pull_revision": 0}
            if serving_release is not None:  # its image, env and port (an update that failed)
                back |= {"container_image": serving_release.image,
                         "pinned_digest": serving_release.image_digest if serving_release.pinned else None,
                         **releases.restores(serving_release)}
            revert(d, **back)
            values["observed_generation"] = d.generation
            entry_details["message"] = f"{outcome.get('message')}; the previous version keeps serving"
            entry_details["rolled_back"] = True
        elif item["state"] == DesiredState.RUNNING:
            values["health_status"] = Health.UNHEALTHY
    Deployment.update(**_apply(d, values)).where(Deployment.id == d.id).execute()
    if release_entry is not None and values.get("image_digest"):
        entry_details["release"] = releases.record(
            d, release_entry, values["image_digest"], target, pinned=item["image"] != d.container_image).number
    close_entries(d, target, item["state"], bool(outcome.get("ok")), entry_details)
