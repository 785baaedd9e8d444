"""`buddo-deploy worker`: claim jobs and converge through ansible-runner; probe health; reconcile.

Threads: N job runners (each claims one job, or a batch of one host's queued
converges run in one playbook run: jobqueue.claim, JobRun), a health prober (one
playbook run per host per cycle, on the hosts themselves), the custom domains' DNS
check (services/domains.py), a reconcile timer (queues a host-wide reconcile every
``BUDDO_RECONCILE_INTERVAL``; any runner claims it, never beside a converge of the
same host), the billing clock (a billing pass every ``BUDDO_BILLING_INTERVAL``
by the one worker holding the billing lease) and retention (old finished jobs pruned
every ``BUDDO_RETENTION_INTERVAL`` by the one worker holding the retention lease).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable

from . import jobqueue, metrics
from .db import open_database, write_transaction
from .inventory import container_hosts, host_addresses
from .models import Job, database_proxy
from .runner import EventSummary, PlaybookResult, run_playbook, sweep_stale_secrets
from .services import billing, domains, engine, output, retention
from .settings import Settings

log = logging.getLogger(__name__)


def _db_connect() -> None:
    database_proxy.obj.connect(reuse_if_open=True)


class JobRun:
    """One playbook run through ansible-runner, with its jobs' leases kept alive and its events recorded.

    A run stands for one job, or for a batch of converges of one host (engine.batch).
    Any failure to renew a lease (one job of a batch taken over is enough) or to record
    an event cancels the run: a playbook never goes on unsupervised. Every job of it is
    then retried (by this or another worker).

    Events: a batch's run is each of its jobs' run, so each event is recorded in every
    job's log, except the failures that belong to some of its deployments. Those are
    the ``ignored`` ones: a deployment's own failure is registered and reported by the
    playbook (ignore_errors) while the others go on. Such an event goes to the jobs
    its failed loop items name (runner.EventSummary.items: the converge roles label
    each item with its deployment's subdomain). A task that hides its items
    (``no_log``: "Run the app containers" holds env values) names none; its event is
    held until the run ends and then recorded in the jobs whose deployment's outcome
    failed at that task (all of them if none did), so it follows the recap in their
    logs. A ``failed`` or ``unreachable`` event fails the whole run, which retries
    every job: it is every job's.

    Nothing of one tenant reaches another: in a batch's run, a failure's text (which may
    name any deployment the module run covered) is recorded without it
    (engine.shared_event), and a run-level failure that is not a job's own reaches its
    audit entry as engine.SHARED_FAILURE; each job's own failure text comes from its own
    deployment's outcome.
    """

    def __init__(self, settings: Settings, owner: str, lease_s: int) -> None:
        self.settings = settings
        self.owner = owner
        self.lease_s = lease_s

    def run(self, plan: engine.Plan) -> tuple[PlaybookResult, float]:
        jobs = plan.jobs
        label = ",".join(str(job.id) for job in jobs)
        by_subdomain = {part.items[0]["subdomain"]: part.job for part in plan.parts}
        cancel = threading.Event()
        done = threading.Event()
        why: list[str] = []
        held: list[EventSummary] = []  # a batch's ignored failures that name no item yet

        def keep_lease() -> None:
            try:
                _db_connect()
                while not done.wait(self.lease_s / 3):
                    if not jobqueue.renew(jobs, self.owner, self.lease_s):
                        why.append("the job's lease was lost")
                        cancel.set()
                        return
            except Exception as exc:  # database down: stop rather than run unleased
                log.exception("job %s: lease renewal failed", label)
                why.append(f"lease renewal failed: {exc.__class__.__name__}")
                cancel.set()
            finally:
                database_proxy.obj.close()

        def on_event(summary: EventSummary) -> None:
            if cancel.is_set():
                return
            targets = jobs
            if plan.parts and summary.status == "ignored":
                targets = [by_subdomain[item] for item in summary.items if item in by_subdomain]
                if not targets:
                    held.append(summary)
                    return
            try:
                # In a batch's run, a failure's text may name any deployment the module run covered
                # (several of its failures in one message): recorded without it; each job's own
                # failure reaches its audit entry through its outcome.
                engine.record_event(targets, engine.shared_event(summary) if plan.parts else summary)
            except Exception as exc:
                log.exception("job %s: recording an event failed", label)
                why.append(f"recording an event failed: {exc.__class__.__name__}")
                cancel.set()

        heartbeat = threading.Thread(target=keep_lease, name=f"lease-{label}", daemon=True)
        heartbeat.start()
        started = time.monotonic()
        try:
            result = run_playbook(
                self.settings.playbook_dir / plan.playbook,
                self.settings.inventory,
                plan.extravars(self.settings.instance) | {"converge_releases_kept": self.settings.releases_kept},
                secrets=plan.secrets,
                secret_files=self.settings.playbook_secret_files | plan.secret_files,
                limit=plan.host,
                check=plan.check,
                timeout_s=max(job.timeout_s for job in jobs),
                on_event=on_event,
                should_cancel=cancel.is_set,
                work_dir=self.settings.var_dir / "runner",
                keep_data_dir=self.settings.keep_runner_data,
                strategy=self.settings.ansible_strategy,
            )
        finally:
            done.set()
            heartbeat.join()
        if why and result.status == "canceled":
            result.message = f"canceled: {why[0]}"
        outcomes = result.stats.get("buddo_outcomes") or {}
        for summary in held:
            owners = [part.job for part in plan.parts
                      if (outcome := outcomes.get(part.items[0]["id"])) is not None and not outcome.get("ok")
                      and outcome.get("task") == summary.task]
            try:
                engine.record_event(owners or jobs, engine.shared_event(summary))
            except Exception:  # the run is over: its outcome counts more than this event
                log.exception("job %s: recording an event failed", label)
        return result, time.monotonic() - started


def _outcome(job_id: int) -> str:
    """What the engine made of a run: succeeded, failed (the app's own failure) or retried."""
    state = Job.select(Job.state).where(Job.id == job_id).scalar()
    return "retried" if state == "queued" else str(state)


class Worker:
    """One job runner: claims a job (or a batch of one host's converges) and runs it."""

    def __init__(self, settings: Settings, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.lease_s = settings.job_lease_s
        self.poll_s = settings.worker_poll_s

    def run_once(self) -> bool:
        """Claim and run one job, or one batch of converges; False when there was nothing to do.

        Each job of a batch starts on its own (engine.start may find it converged
        already, or its generation failed); the rest share one converge.yml run, and
        each is finished from its own deployment's outcome (engine.finish).
        """
        _db_connect()
        jobs = jobqueue.claim(self.name, self.lease_s, batch=self.settings.converge_batch)
        if not jobs:
            return False
        plans = []
        for job in jobs:
            log.info("job %s: %s of %s (attempt %s)", job.id, job.action, job.deployment_id or job.host, job.attempts)
            started = engine.start(job, self.name, self.settings.secret_key)
            if started is None:
                log.info("job %s: nothing to run", job.id)
                metrics.observe_job(job.action, "skipped", None)
            else:
                plans.append(started)
        if not plans:
            return True
        plan = engine.batch(plans)
        if len(plans) > 1:
            log.info("jobs %s: one converge run on %s", ", ".join(str(p.job.id) for p in plans), plan.host)
        result, duration = JobRun(self.settings, self.name, self.lease_s).run(plan)
        job = plan.job
        if job.action == "reconcile":
            report = engine.finish_reconcile(plan, self.name, result, duration)
            metrics.observe_reconcile(report.host, report.deployments, report.orphans, dry_run=False)
            repaired = [d["subdomain"] for d in report.deployments if d["drift"]]
            log.info("job %s: reconcile of %s: %s; repaired %s; orphans %s", job.id, job.host,
                     "converged" if report.converged else f"not converged ({report.message})",
                     repaired or "nothing", report.orphans or "none")
            metrics.observe_job(job.action, "succeeded" if report.converged else "failed", duration)
        elif job.action == "output":
            output.finish(job, self.name, result, plan.secrets)
            metrics.observe_job(job.action, _outcome(job.id), duration)
        else:
            for part in plan.members:
                if not engine.finish(part, self.name, result, duration, shared=len(plan.members) > 1):
                    log.warning("job %s: lease lost, outcome discarded", part.job.id)
                    outcome = "lease_lost"
                else:
                    outcome = _outcome(part.job.id)
                    log.info("job %s: %s (%s)", part.job.id, outcome, result.message or "ok")
                metrics.observe_job(part.job.action, outcome, duration)
        return True

    def loop(self, once: bool) -> None:
        while not self.stopping.is_set():
            try:
                worked = self.run_once()
            except Exception:  # keep the worker alive; the job's lease will expire and be retried
                log.exception("worker %s: unexpected error", self.name)
                worked = False
                self.stopping.wait(self.poll_s * 4)
            if not worked:
                if once:
                    return
                self.stopping.wait(self.poll_s)
        database_proxy.obj.close()


class Every:
    """Run ``action`` every ``interval_s`` in a thread until stopped; errors are logged, not fatal."""

    def __init__(self, name: str, interval_s: float, action: Callable[[], None]) -> None:
        self.name, self.interval_s, self.action = name, interval_s, action
        self.stopping = threading.Event()

    def loop(self) -> None:
        while not self.stopping.wait(self.interval_s):
            try:
                _db_connect()
                self.action()
            except Exception:
                log.exception("%s failed", self.name)


class HealthProber:
    """One health playbook run per host and cycle; verdicts heal what died (engine.record_health)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = engine.HealthPolicy(
            failures_before_restart=settings.health_failures, max_restarts=settings.health_max_restarts,
            timeout_s=settings.job_timeout_s,
        )

    def probe_host(self, host: str) -> dict[str, str]:
        result = run_playbook(
            self.settings.playbook_dir / "health.yml", self.settings.inventory,
            {"health_probe_instance": self.settings.instance}, limit=host, timeout_s=60,
            work_dir=self.settings.var_dir / "runner", keep_data_dir=False, strategy=self.settings.ansible_strategy,
        )
        if not result.ok:
            log.warning("health probe of %s failed: %s", host, result.message)
            return {}
        report = (result.stats.get("buddo_health") or {}).get(host)
        verdicts = engine.record_health(host, report, self.policy)
        metrics.observe_automatic_restarts(host, sum(1 for v in verdicts.values() if v == "restarted"))
        return verdicts

    def probe_all(self) -> None:
        for host in engine.hosts():
            self.probe_host(host)


def queue_reconciles(settings: Settings) -> None:
    for host in engine.hosts(h.name for h in container_hosts(settings.inventory, settings.host_port_range)):
        with write_transaction(database_proxy.obj):
            jobqueue.enqueue_reconcile(host, timeout_s=settings.job_timeout_s)


# How often the domain checker looks for due domains: a new one is checked within this.
_DOMAIN_TICK_S = 2.0


def domain_checker(settings: Settings) -> domains.DomainChecker:
    return domains.DomainChecker(
        settings.base_domain, settings.domain_check_interval_s, settings.job_timeout_s,
        domains.DnsResolver(settings.dns_resolvers), lambda host: host_addresses(settings.inventory, host),
        claim_expiry_s=settings.domain_claim_expiry_s)


def check_domains(checker: domains.DomainChecker) -> None:
    """One tick of the custom domain timer: the due DNS checks, then the claims that expired."""
    log.debug("custom domains checked: %s", checker.check_due())
    if released := checker.expire_due():
        log.info("custom domain claims released (not verified in time): %s", released)


class BillingClock:
    """The periodic billing pass, run by whichever worker holds the billing lease."""

    def __init__(self, settings: Settings, owner: str) -> None:
        self.billing = billing.Billing(settings)
        self.owner = owner
        # Long enough to outlive a slow pass, short enough that another worker takes over soon.
        self.ttl = dt.timedelta(seconds=max(30.0, 3 * settings.billing_interval_s))

    def tick(self) -> None:
        if not self.billing.take_lease(self.owner, self.ttl):
            return
        report = self.billing.run_pass()
        if report.started or report.suspended or report.reactivated or report.failed:
            log.info("billing: %d cycle(s) started, %d paid, suspended %s, reactivated %s, failed %s",
                     len(report.started), len(report.paid), report.suspended or "none",
                     report.reactivated or "none", report.failed or "none")


class Pruner:
    """Retention's periodic pass (services/retention.py), run by whichever worker holds its lease."""

    def __init__(self, settings: Settings, owner: str) -> None:
        self.days = settings.retention_days
        self.owner = owner
        # Outlives a long pass (a backlog of millions of rows takes a while, batch by batch).
        self.ttl = dt.timedelta(seconds=max(600.0, 3 * settings.retention_interval_s))

    def tick(self) -> None:
        if not retention.take_lease(self.owner, self.ttl):
            return
        report = retention.prune(self.days)
        if report.jobs_removed or report.events:
            log.info("retention: pruned %d job(s) %s and %d event(s) finished before %s, in %d transaction(s)",
                     report.jobs_removed, dict(report.jobs), report.events, report.cutoff, report.transactions)


def run_worker(settings: Settings, *, once: bool = False, concurrency: int = 2) -> None:
    container_hosts(settings.inventory, settings.host_port_range)  # a malformed inventory stops the start
    open_database(settings.database_url)
    metrics.sweep(metrics.prepare(settings.var_dir))
    if swept := sweep_stale_secrets():
        log.info("removed %d secret dir(s) left by crashed workers", swept)
    workers = [Worker(settings) for _ in range(max(1, concurrency))]
    threads = [threading.Thread(target=w.loop, args=(once,), name=f"worker-{i}") for i, w in enumerate(workers)]
    timers: list[Every] = []
    clock: BillingClock | None = None
    pruner: Pruner | None = None
    if not once:
        timers.append(Every("health probe", settings.health_interval_s, HealthProber(settings).probe_all))
        if settings.domain_check_interval_s > 0:
            checker = domain_checker(settings)
            timers.append(Every("custom domain check", min(settings.domain_check_interval_s, _DOMAIN_TICK_S),
                                lambda: check_domains(checker)))
        if settings.reconcile_interval_s > 0:
            timers.append(Every("reconcile timer", settings.reconcile_interval_s, lambda: queue_reconciles(settings)))
        if settings.billing_enabled and settings.billing_interval_s > 0:
            clock = BillingClock(settings, workers[0].name)
            timers.append(Every("billing clock", settings.billing_interval_s, clock.tick))
        if settings.retention_days > 0 and settings.retention_interval_s > 0:
            pruner = Pruner(settings, workers[0].name)
            timers.append(Every("retention", settings.retention_interval_s, pruner.tick))
    threads += [threading.Thread(target=t.loop, name=t.name, daemon=True) for t in timers]
    for thread in threads:
        thread.start()

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: no new claims, running jobs finish

    signal.signal(signal.SIGTERM, _terminate)
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)
    except KeyboardInterrupt:
        log.info("stopping: finishing running jobs")
        for worker in workers:
            worker.stopping.set()
        for timer in timers:
            timer.stopping.set()
        for thread in threads:
            thread.join()
    if clock is not None:
        clock.billing.release_lease(clock.owner)  # the next worker need not wait for it to expire
    if pruner is not None:
        retention.release_lease(pruner.owner)

