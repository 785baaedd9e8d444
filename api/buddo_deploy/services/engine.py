"""What the worker changes: job start, outcome, reconcile reports and health, each in one transaction."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import jobqueue
from ..crypto import decrypt_env
from ..db import write_transaction
from ..models import AuditEntry, Deployment, Job, JobEvent, Tier, database_proxy, utcnow
from ..results import EventSummary, PlaybookResult
from ..vocabulary import DesiredState, Health, WebhookEvent
from . import releases, state, webhooks
from .registry_logins import logins_of, registry_login_for

log = logging.getLogger(__name__)

# Audit action of a repair the reconciler made, by desired state.
REPAIR_ACTION = {"running": "deploy", "stopped": "stop", "absent": "destroy"}
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 300.0


@dataclass(frozen=True)
class Plan:
    job: Job
    playbook: str
    host: str
    items: list[dict[str, Any]]
    known: list[str] = field(default_factory=list)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    # Deployment id -> its operator's login for its image's registry (a secret like env).
    registry_auth: dict[str, dict[str, str]] = field(default_factory=dict)
    check: bool = False
    # The run's extra vars (the task adds the settings' own, such as the instance).
    variables: dict[str, Any] = field(default_factory=dict)
    # A host converge whose job has (had) more than one target (jobqueue.shared).
    job_shared: bool = False
    # A reconcile's: deployments it leaves alone, retried alone after a timeout (jobqueue.suspects).
    suspects: list[str] = field(default_factory=list)
    # Deployments whose outcome was recorded as the run reported it (record_reported), before it ended.
    recorded: set[str] = field(default_factory=set)

    @property
    def shared(self) -> bool:
        """What the run records may be read by more than one deployment (its job has more than one
        target, even when this run acts on one of them): a failure's text may be another tenant's."""
        return self.job_shared or len(self.items) > 1

    @property
    def secret_files(self) -> dict[str, str]:
        """Secrets of this run beside the env values: extra var name -> the file's content."""
        return {"converge_registry_auth_file": json.dumps(self.registry_auth)} if self.registry_auth else {}


def converge_variables(items: list[dict[str, Any]], known: Sequence[str] = (),
                       hosts: Sequence[str] = ()) -> dict[str, Any]:
    """The desired-state document of converge.yml and reconcile.yml (``buddo-deploy desired`` prints it).

    ``hosts``: a reconcile's, whose document lists every deployment of those hosts."""
    variables: dict[str, Any] = {"converge_deployments": items, "converge_known": list(known)}
    if hosts:
        variables["converge_hosts"] = list(hosts)
    return variables


@dataclass
class Report:
    """What a reconcile found and did, per deployment."""

    host: str
    ok: bool
    message: str = ""
    deployments: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    # Left alone: a run of theirs timed out, and their solo converge retries them (jobqueue.suspects).
    suspects: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.ok and not self.unchecked and not self.suspects and all(d["ok"] for d in self.deployments)

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "ok": self.ok, "converged": self.converged, "message": self.message,
                "deployments": self.deployments, "orphans": self.orphans, "unchecked": self.unchecked,
                "suspects": self.suspects}


def env_values(items: list[dict[str, Any]], rows: dict[str, Deployment], secret_key: str) -> dict[str, Any]:
    """Deployment id -> env of the items that run (only those start containers).

    Raises RuntimeError when a value cannot be decrypted (a changed BUDDO_SECRET_KEY).
    """
    return {i["id"]: decrypt_env(secret_key, rows[i["id"]].env_vars_encrypted)
            for i in items if i["state"] == "running" and rows[i["id"]].env_vars_encrypted}


def registry_auths(items: list[dict[str, Any]], rows: dict[str, Deployment], secret_key: str,
                   known: dict[tuple[str, str], Any] | None = None) -> dict[str, Any]:
    """Deployment id -> its operator's login for the registry of its image, for the items
    that run (each pull asks the registry with the operator's own credentials, or none).

    Raises RuntimeError when a login cannot be decrypted (a changed BUDDO_SECRET_KEY).
    """
    found = {}
    running = [item for item in items if item["state"] == "running"]
    if known is None:  # one query for the items' operators, not one each
        known = logins_of([rows[item["id"]].operator_id for item in running])
    for item in running:
        login = registry_login_for(rows[item["id"]].operator_id, item["image"], secret_key, known)
        if login:
            # As a containers-auth.json entry: the host stays a key, only the token is secret.
            token = base64.b64encode(f"{login['username']}:{login['password']}".encode()).decode()
            found[item["id"]] = {login["registry"]: {"auth": token}}
    return found


def start_converge(job: Job, owner: str, secret_key: str) -> Plan | None:
    """Mark a host's converge as begun: the items of its targets still behind their desired state.

    None when there is nothing to run (every target converged already, by a reconcile or an
    earlier run, or its generation failed): the job is finished then.
    """
    items: list[dict[str, Any]] = []
    secrets: dict[str, Any] = {}
    logins: dict[str, Any] = {}
    with write_transaction(database_proxy.obj):
        shared = jobqueue.shared(job)
        for target in jobqueue.targets(job, open_only=True):
            d = state.locked(target.deployment_id)
            assert d is not None
            if d.observed_generation >= d.generation:  # converged already (a reconcile, or an earlier run)
                state.close_entries(d, d.observed_generation, d.desired_state, True, {"attempt": job.attempts})
                jobqueue.finish_target(job, d.id, succeeded=True)
                continue
            if d.desired_state == "running" and d.failed_generation == d.generation:
                jobqueue.finish_target(job, d.id, succeeded=False,
                                       error="this generation failed; waiting for a new request")
                continue
            item = state.desired_item(d)
            try:
                mine = env_values([item], {item["id"]: d}, secret_key)
                login = registry_auths([item], {item["id"]: d}, secret_key)
            except RuntimeError as exc:  # a changed BUDDO_SECRET_KEY: retrying cannot help
                state.record_outcome(item, {"ok": False, "kind": "config", "message": str(exc)},
                                     {"attempt": job.attempts})
                jobqueue.finish_target(job, d.id, succeeded=False, error=str(exc))
                continue
            secrets |= mine
            logins |= login
            jobqueue.set_target_generation(job, d.id, d.generation)
            Deployment.update(status=state.derive_status(d, working=True), updated_at=utcnow()).where(
                Deployment.id == d.id).execute()
            state.touch_entries(d.id, d.generation, "running", {"attempt": job.attempts})
            items.append(item)
        if not items:
            jobqueue.finish(job, owner, succeeded=jobqueue.all_succeeded(job))
            return None
    return Plan(job, "converge.yml", job.host, items, secrets=secrets, registry_auth=logins,
                variables=converge_variables(items), job_shared=shared)


def reconcile_scope(host: str) -> tuple[list[dict[str, Any]], list[str], dict[str, Deployment]]:
    """Desired items of every deployment the host should know of, and the ids to leave alone."""
    held = Deployment.select(Deployment, Tier).join(Tier).where(
        (Deployment.host == host) & Deployment.released_at.is_null())
    rows = {str(d.id): d for d in held}
    items, known = [], []
    history = releases.histories([d.id for d in rows.values()])  # one query for the host, not one each
    for ident, d in rows.items():
        if d.desired_state == "running" and d.failed_generation == d.generation and not state.serving(d):
            known.append(ident)  # a first deploy that failed: nothing of it runs, nothing to repair
        else:
            items.append(state.desired_item(d, history.get(ident, [])))
    return items, known, rows


def start_reconcile(job: Job, secret_key: str, *, check: bool = False) -> Plan:
    """The whole host's desired state; ``check``: a dry run (``--check --diff``), which records nothing.

    The suspects (a run of theirs timed out: their solo converge retries them) are left alone,
    known but neither converged nor removed as orphans: a run that may hang on them again would
    hold the host's other converges, which wait for a reconcile, behind it.
    """
    with write_transaction(database_proxy.obj):
        items, known, rows = reconcile_scope(job.host)
        suspects = [ident for ident in jobqueue.suspects(job.host) if ident in rows]
        known += [ident for ident in suspects if ident not in known]
        items = [i for i in items if i["id"] not in suspects]
        secrets: dict[str, Any] = {}
        logins: dict[str, Any] = {}
        found = logins_of([rows[item["id"]].operator_id for item in items])  # one query for the host
        for item in items:
            try:
                secrets |= env_values([item], rows, secret_key)
                logins |= registry_auths([item], rows, secret_key, found)
            except RuntimeError as exc:
                log.warning("reconcile of %s: %s", item["id"], exc)
                known.append(item["id"])
    items = [i for i in items if i["id"] not in known]
    return Plan(job, "reconcile.yml", job.host, items, known=known, secrets=secrets, registry_auth=logins,
                check=check, variables=converge_variables(items, known, hosts=[job.host]), suspects=suspects)


# What a deployment is told of a failure in a job it shares with others of its host: the
# failure's own text may be about another tenant's deployment (its id, its podman error).
SHARED_FAILURE = jobqueue.SHARED_FAILURE


def shared_event(summary: EventSummary) -> EventSummary:
    """An event of a shared job's run as every target may see it: a failure's text withheld (it may
    name another tenant's deployment); which failure was whose is each target's own outcome."""
    if summary.status in {"failed", "ignored"} and summary.message:
        return dataclasses.replace(summary, message=SHARED_FAILURE)
    return summary


def finish(plan: Plan, owner: str, result: PlaybookResult, duration_s: float) -> str | None:
    """Record a host converge's outcome on each target; what became of the run (``succeeded``,
    ``failed``: an app's own failure, or ``retried``), None when the lease was lost (another
    worker owns the job now, and nothing was recorded).

    A deployment's own outcome (ok, or the app's own failure) is final for this run. The
    others (the run failed outside the apps: host unreachable, Podman or Caddy error,
    timeout, lost lease; or a deployment's step failed on the host) go back to the queue
    with the job, with a backoff; the next run skips what converged meanwhile. A run that
    timed out may hang again on the deployment that made it hang: a job of one target goes
    back as a solo converge, and a shared one ends there, each deployment of the run retried
    in a solo converge of its own (jobqueue.retry_alone) that its open audit entries name from
    then on. In a shared job's run (even a retry that runs one of its deployments), a failure
    that is not the deployment's own is told without its text.
    """
    job = plan.job
    outcomes = result.stats.get("buddo_outcomes") or {}
    details = {"attempt": job.attempts, "duration_s": round(duration_s, 1)}
    with write_transaction(database_proxy.obj):
        if not jobqueue.owns(job, owner):
            return None
        run_message = result.message or "the playbook run failed"
        if plan.shared and result.failed_status != "unreachable":
            run_message = SHARED_FAILURE
        retry: dict[str, tuple[str, str | None]] = {}
        for item in plan.items:
            if item["id"] in plan.recorded:
                continue  # final already: recorded as the run reported it
            outcome = outcomes.get(item["id"])
            own_failure = outcome is not None and not outcome.get("ok")
            if not result.ok or outcome is None or not final(outcome):
                if outcome is not None and own_failure:
                    retry[item["id"]] = (str(outcome.get("message") or run_message), outcome.get("task"))
                else:
                    retry[item["id"]] = (run_message, None if plan.shared else result.failed_task)
            else:
                record_final(plan, item, outcome, details)
        if not retry:
            succeeded = jobqueue.all_succeeded(job)
            jobqueue.finish(job, owner, succeeded=succeeded)
            return "succeeded" if succeeded else "failed"
        delay = dt.timedelta(seconds=min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, job.attempts - 1)))
        error = run_message if plan.shared else next(iter(retry.values()))[0]
        timed_out = result.status == "timeout"  # it may hang again on the deployment that made it hang
        split = timed_out and plan.shared  # so the run ends here, and each deployment goes on alone
        if split:
            jobqueue.finish(job, owner, succeeded=False, error=error)
        else:
            jobqueue.retry_later(job, owner, delay=delay, error=error, solo=timed_out)
        run_after = utcnow() + delay
        for item in plan.items:
            if item["id"] in retry:
                message, task = retry[item["id"]]
                if split:
                    jobqueue.retry_alone(job, item["id"], int(item["generation"]), run_after=run_after,
                                         error=message, task=task)
                else:
                    jobqueue.set_target_error(job, item["id"], message, task)
                state.touch_entries(item["id"], int(item["generation"]), "running", {
                    "attempt": job.attempts, "retrying_in_s": delay.total_seconds(), "last_error": message,
                    "task": task})
    return "retried"


def final(outcome: dict[str, Any]) -> bool:
    """A deployment's own outcome, final for its job: ok, or a failure of its app's own (a failure
    on the host is retried)."""
    return bool(outcome.get("ok")) or outcome.get("kind") != "host"


def record_final(plan: Plan, item: dict[str, Any], outcome: dict[str, Any], details: dict[str, Any]) -> None:
    """A deployment's own outcome (ok, or its app's own failure): final for the run's job."""
    ok = bool(outcome.get("ok"))
    jobqueue.finish_target(plan.job, item["id"], succeeded=ok, error=None if ok else outcome.get("message"),
                           task=None if ok else outcome.get("task"))
    state.record_outcome(item, outcome, details)


def record_reported(plan: Plan, owner: str, outcomes: dict[str, Any], duration_s: float) -> None:
    """Record the final outcomes a converge run reported, as it reports them: its deployments are
    running (or failed) the moment the module that made them so returned, not once the playbook
    process has ended. What is not final here (a failure on the host) waits for :func:`finish`,
    which also ends the job. Nothing when the lease was lost."""
    details = {"attempt": plan.job.attempts, "duration_s": round(duration_s, 1)}
    done = []
    with write_transaction(database_proxy.obj):
        if not jobqueue.owns(plan.job, owner):
            return
        for item in plan.items:
            outcome = outcomes.get(item["id"])
            if item["id"] in plan.recorded or not isinstance(outcome, dict):
                continue
            if final(outcome):
                record_final(plan, item, outcome, details)
                done.append(item["id"])
    plan.recorded.update(done)  # once committed


def unchanged(before: Deployment, item: dict[str, Any], outcome: dict[str, Any]) -> bool:
    """Whether a reconcile's outcome for a deployment would record nothing new: no drift, nothing
    done, and its observed state is already what the outcome says (state.record_outcome)."""
    if not outcome.get("ok") or outcome.get("drift") or outcome.get("actions"):
        return False
    if before.observed_generation < int(item["generation"]):
        return False
    if item["state"] == DesiredState.RUNNING:
        container = outcome.get("container") or {}
        return bool(container.get("id")) and (container.get("id"), container.get("host_port"), item["revision"]) == (
            before.container_id, before.serving_port, before.observed_revision)
    if item["state"] == DesiredState.STOPPED:
        return before.serving_port is None
    return before.container_id is None and before.serving_port is None and before.released_at is not None


def finish_reconcile(plan: Plan, owner: str, result: PlaybookResult, duration_s: float) -> Report:
    """Record what a reconcile repaired; with a failed run, change nothing it could not verify."""
    job = plan.job
    report = Report(host=plan.host, ok=result.ok, message=result.message or "", suspects=list(plan.suspects))
    outcomes = result.stats.get("buddo_outcomes") or {}
    report.orphans = list(result.stats.get("buddo_orphans") or [])
    with write_transaction(database_proxy.obj):
        # One read for the host's deployments, not one per item.
        current = {str(d.id): d for d in Deployment.select().where(
            Deployment.id.in_([item["id"] for item in plan.items]))} if plan.items and not plan.check else {}
        for item in plan.items:
            outcome = outcomes.get(item["id"])
            if not result.ok or outcome is None:
                report.unchecked.append(item["id"])
                continue
            entry = {"id": item["id"], "subdomain": item["subdomain"], "state": item["state"],
                     "drift": outcome.get("drift") or [], "ok": bool(outcome.get("ok")),
                     "message": outcome.get("message")}
            report.deployments.append(entry)
            if plan.check:
                continue
            before = current.get(str(item["id"]))
            if before is None or unchanged(before, item, outcome):
                continue  # a reconcile that found nothing to do writes nothing
            was_converged = before.observed_generation >= int(item["generation"])
            if not outcome.get("ok") and outcome.get("kind") == "host":
                continue  # retried by the next run
            state.record_outcome(item, outcome, {"duration_s": round(duration_s, 1)})
            if entry["drift"] and was_converged:
                details = {"reason": "drift", "drift": entry["drift"]}
                if not outcome.get("ok"):
                    details["message"] = outcome.get("message")
                state.audit(before, REPAIR_ACTION[item["state"]], "completed" if outcome.get("ok") else "failed",
                            None, details=details)
        jobqueue.finish(job, owner, succeeded=report.converged, error=None if report.ok else report.message,
                        result=json.dumps(report.as_dict())[:20000])
    return report


def record_event(job: Job, summary: EventSummary) -> None:
    """Record one event of a run in its job's log (every target's view shows it)."""
    task = (summary.task or None) and summary.task[:500]
    with write_transaction(database_proxy.obj):
        JobEvent.create(job=job.id, attempt=job.attempts, created_at=utcnow(), event=summary.event,
                        host=summary.host, task=task, status=summary.status, message=summary.message)


# --- health ------------------------------------------------------------------


@dataclass(frozen=True)
class HealthPolicy:
    failures_before_restart: int = 3
    max_restarts: int = 3
    restart_window: dt.timedelta = dt.timedelta(hours=1)
    timeout_s: int = 600


def hosts(inventory_hosts: Iterable[str] = ()) -> list[str]:
    """Hosts holding deployments, and the inventory's container hosts (a reconcile of an
    empty host still removes its orphans)."""
    held = {d.host for d in Deployment.select(Deployment.host).where(Deployment.released_at.is_null())}
    return sorted(held | set(inventory_hosts))


def _automatic_restarts(d: Deployment, since: dt.datetime) -> list[AuditEntry]:
    return list(AuditEntry.select().where(
        (AuditEntry.deployment == d.id) & (AuditEntry.action == "restart") & AuditEntry.initiated_by.is_null()
        & (AuditEntry.inserted_at >= since)
    ).order_by(AuditEntry.inserted_at))


def _turned_unhealthy(d: Deployment, message: str) -> None:
    """The webhook of a deployment that was not unhealthy until this verdict."""
    if d.health_status != Health.UNHEALTHY:
        d.health_status = Health.UNHEALTHY
        webhooks.emit(d, WebhookEvent.UNHEALTHY, {"message": message})


def _heal(d: Deployment, reason: str, message: str, policy: HealthPolicy) -> str:
    """Converge an app that died or stopped answering again, unless it keeps doing so."""
    now = utcnow()
    recent = _automatic_restarts(d, now - policy.restart_window)
    restarts = [e for e in recent
                if e.details and json.loads(e.details).get("reason") in {"health", "container_exited"}]
    if len(restarts) >= policy.max_restarts:
        if not any(e.details and json.loads(e.details).get("reason") == "crash_loop" for e in recent):
            state.audit(d, "restart", "failed", None, details={
                "reason": "crash_loop",
                "message": f"automatic restarts paused: {len(restarts)} in the last "
                           f"{policy.restart_window.total_seconds() / 60:g} min; the app stays unhealthy",
            })
        return "paused"
    # A container that is gone or exited is started again as it was; one that runs but
    # does not answer is replaced by a new one (a new revision of the same image).
    revision = d.revision + 1 if reason == "health" else d.revision
    state.change(d, "restart", None, timeout_s=policy.timeout_s,
                 details={"reason": reason, "message": message}, revision=revision)
    return "restarted"


def _due(d: Deployment, now: dt.datetime) -> bool:
    """Whether this cycle's probe counts: its own health check may ask for fewer than the platform's cycle."""
    interval = state.health_interval_s(d)
    return not (interval and d.last_health_check and (now - d.last_health_check).total_seconds() < interval)


def _current(d: Deployment, by_deployment: dict[str, list[dict[str, Any]]]) -> tuple[list[Any], list[Any]]:
    """The reported containers of the deployment's current spec, and those of them that run."""
    spec = state.spec_of(d)
    mine = [c for c in by_deployment.get(str(d.id), []) if c.get("spec") == spec]
    return mine, [c for c in mine if c.get("state") == "running"]


def _still_healthy(d: Deployment, by_deployment: dict[str, list[dict[str, Any]]], probes: dict[str, Any],
                   now: dt.datetime) -> bool:
    """Converged, recorded healthy, due, and its current container runs and answered healthy."""
    if d.observed_generation < d.generation or d.health_status != "healthy" or d.health_failures:
        return False
    if not _due(d, now):
        return False  # the locked path skips it
    _, running = _current(d, by_deployment)
    return bool(running) and bool((probes.get(running[0]["id"]) or {}).get("healthy"))


_HEALTH_READ = (Deployment.id, Deployment.generation, Deployment.observed_generation, Deployment.health_status,
                Deployment.health_failures, Deployment.last_health_check, Deployment.health_check,
                Deployment.container_image, Deployment.port, Deployment.memory_limit_mb,
                Deployment.cpu_limit_millicores, Deployment.env_vars_encrypted, Deployment.revision,
                Deployment.pinned_digest)


def record_health(host: str, report: dict[str, Any] | None, policy: HealthPolicy,
                  observed_since: dt.datetime | None = None) -> dict[str, str]:
    """Record one probe cycle of a host; heal what died. Returns deployment id -> verdict.

    ``observed_since``: when the probe began looking. A deployment whose record changed after
    that (a converge recorded its outcome meanwhile) is left to the next cycle: the probe may
    have seen its container between create and start, or the one it replaced."""
    if report is None:
        return {}
    by_deployment: dict[str, list[dict[str, Any]]] = {}
    for container in report.get("containers") or []:
        by_deployment.setdefault(container.get("deployment_id") or "", []).append(container)
    probes = report.get("probes") or {}
    verdicts: dict[str, str] = {}
    now = utcnow()
    # Only what the verdict of one still healthy reads (its spec included): a host's every
    # deployment is read each cycle; the others are read whole, locked, below.
    candidates = list(Deployment.select(*_HEALTH_READ, Tier.id, Tier.disk_limit_mb).join(Tier).where(
        (Deployment.host == host) & (Deployment.desired_state == "running") & Deployment.released_at.is_null()
        & Deployment.serving_port.is_null(False)
    ))
    # Healthy and already recorded so (the usual case): only the time of the check is new, for
    # all of them in one statement; the rest, one locked transaction each (a verdict may heal).
    still = [d for d in candidates if _still_healthy(d, by_deployment, probes, now)]
    if still:
        with write_transaction(database_proxy.obj):
            Deployment.update(last_health_check=now).where(
                Deployment.id.in_([d.id for d in still]) & (Deployment.health_status == "healthy")
                & (Deployment.health_failures == 0)).execute()
        verdicts |= {str(d.id): "healthy" for d in still}
    for row in candidates:
        if str(row.id) in verdicts:
            continue
        with write_transaction(database_proxy.obj):
            d = state.locked(row.id)
            if d is None or d.desired_state != "running" or d.observed_generation < d.generation:
                continue  # changing: its own job decides
            if observed_since is not None and d.updated_at > observed_since:
                continue  # changed since the probe looked: what it saw is stale
            if not state.serving(d):
                continue
            if jobqueue.open_converge(d) is not None:
                continue
            if not _due(d, now):
                continue
            mine, running = _current(d, by_deployment)
            if not running:
                what = f"container {mine[0]['state']}" if mine else "container missing"
                Deployment.update(health_status="unhealthy", last_health_check=now,
                                  health_failures=d.health_failures + 1).where(Deployment.id == d.id).execute()
                _turned_unhealthy(d, what)
                verdicts[str(d.id)] = _heal(d, "container_exited", what, policy)
                continue
            probe = probes.get(running[0]["id"]) or {}
            if probe.get("healthy"):
                Deployment.update(health_status="healthy", last_health_check=now, health_failures=0).where(
                    Deployment.id == d.id).execute()
                verdicts[str(d.id)] = "healthy"
                continue
            failures = d.health_failures + 1
            Deployment.update(health_status="unhealthy", last_health_check=now, health_failures=failures).where(
                Deployment.id == d.id).execute()
            verdicts[str(d.id)] = "unhealthy"
            _turned_unhealthy(d, probe.get("error") or f"HTTP {probe.get('status')}")
            if failures >= policy.failures_before_restart:
                detail = probe.get("error") or f"HTTP {probe.get('status')}"
                verdicts[str(d.id)] = _heal(d, "health", f"{failures} failed probes in a row ({detail})", policy)
    return verdicts
