"""`buddo-deploy worker`: threads and timers. What a job does is its kind's task (tasks/).

Threads: N job runners (each claims one job, a host's converge, reconcile or an output read:
jobqueue.claim, then tasks.task_for), a health prober (one
playbook run per host per cycle, on the hosts themselves), the custom domains' DNS
check (services/domains.py), a reconcile timer (queues a host-wide reconcile every
``BUDDO_RECONCILE_INTERVAL``; any runner claims it, never beside a converge of the
same host), the billing clock (a billing pass every ``BUDDO_BILLING_INTERVAL``
by the one worker holding the billing lease), webhook deliveries (what is due, every
second; services/webhooks.py), output followers (a collector per followed deployment;
services/follow.py) and retention (old finished jobs pruned every
``BUDDO_RETENTION_INTERVAL`` by the one worker holding the retention lease).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from . import jobqueue, metrics
from .db import connect_thread, open_database, write_transaction
from .inventory import container_hosts, host_addresses
from .models import database_proxy, utcnow
from .runner import prewarm, run_playbook, sweep_stale_secrets
from .services import billing, domains, engine, follow, leases, retention, webhooks
from .settings import Settings
from .tasks import task_for

log = logging.getLogger(__name__)


class Worker:
    """One job runner: claims a job and runs it."""

    def __init__(self, settings: Settings, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.lease_s = settings.job_lease_s
        self.poll_s = settings.worker_poll_s

    def run_once(self) -> bool:
        """Claim a job and run it as its kind does; False when there was nothing to do."""
        connect_thread()
        job = jobqueue.claim(self.name, self.lease_s)
        if job is None:
            return False
        task_for(job.action)(self.settings, self.name).run(job)
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
                connect_thread()
                self.action()
            except Exception:
                log.exception("%s failed", self.name)


class HealthProber:
    """One health playbook run per host and cycle; verdicts heal what died (engine.record_health).

    A host is probed by one worker at a time: the one holding its lease (``health:<host>``,
    renewed each cycle and before a probe's verdicts are recorded; another worker takes it
    over once it lapsed). A worker probes the hosts it holds in parallel (HEALTH_PARALLEL at
    once)."""

    def __init__(self, settings: Settings, owner: str = "") -> None:
        self.settings = settings
        self.owner = owner or f"health-{uuid.uuid4().hex[:12]}"
        # Three cycles: a worker that died stops holding its hosts soon; one whose probe took
        # longer (a slow host) finds the lease taken and records nothing (below).
        self.ttl = dt.timedelta(seconds=max(5.0, 3 * settings.health_interval_s))
        self.policy = engine.HealthPolicy(
            failures_before_restart=settings.health_failures, max_restarts=settings.health_max_restarts,
            timeout_s=settings.job_timeout_s,
        )

    def probe_host(self, host: str) -> dict[str, str]:
        started = utcnow()
        result = run_playbook(
            self.settings.playbook_dir / "health.yml", self.settings.inventory,
            {"health_probe_instance": self.settings.instance}, limit=host, timeout_s=60,
            work_dir=self.settings.var_dir / "runner", keep_data_dir=False, strategy=self.settings.ansible_strategy,
        )
        if not result.ok:
            log.warning("health probe of %s failed: %s", host, result.message)
            return {}
        report = (result.stats.get("buddo_health") or {}).get(host)
        if not leases.take(self.lease_of(host), self.owner, self.ttl, utcnow()):
            log.info("health probe of %s: another worker holds the host now; its verdicts count", host)
            return {}
        verdicts = engine.record_health(host, report, self.policy, observed_since=started)
        metrics.observe_automatic_restarts(host, sum(1 for v in verdicts.values() if v == "restarted"))
        return verdicts

    def probe_all(self) -> None:
        """Probe each host whose lease this worker holds (or takes), several at once."""
        mine = [host for host in engine.hosts() if leases.take(self.lease_of(host), self.owner, self.ttl, utcnow())]
        if not mine:
            return
        with ThreadPoolExecutor(max_workers=min(HEALTH_PARALLEL, len(mine)), thread_name_prefix="health") as pool:
            list(pool.map(self._probe_in_thread, mine))

    def _probe_in_thread(self, host: str) -> None:
        connect_thread()
        try:
            self.probe_host(host)
        except Exception:  # one host's failure is logged; the others' probes go on
            log.exception("health probe of %s failed", host)
        finally:
            database_proxy.obj.close()

    def release(self) -> None:
        """Let other workers take this one's hosts at once (it stops)."""
        for host in engine.hosts():
            leases.release(self.lease_of(host), self.owner)

    @staticmethod
    def lease_of(host: str) -> str:
        return f"health:{host}"


def queue_reconciles(settings: Settings) -> None:
    for host in engine.hosts(h.name for h in container_hosts(settings.inventory, settings.host_port_range)):
        with write_transaction(database_proxy.obj):
            jobqueue.enqueue_reconcile(host, timeout_s=settings.job_timeout_s)


# Hosts one worker probes at once (each is an ansible-playbook run).
HEALTH_PARALLEL = 4
# How often the domain checker looks for due domains: a new one is checked within this.
_DOMAIN_TICK_S = 2.0
# Due webhook deliveries are looked for this often (seconds).
WEBHOOK_TICK_S = 1.0
# Followed deployments are looked for this often (seconds); each has its collector thread.
FOLLOW_TICK_S = 0.5


def void(_: object) -> None:
    """A timer's action returns nothing."""


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
        report = self.billing.run_pass(renew=lambda: self.billing.take_lease(self.owner, self.ttl))
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
    prewarm(settings.ansible_strategy)  # the first job's ansible-playbook is warm too
    open_database(settings.database_url)
    metrics.sweep(metrics.prepare(settings.var_dir))
    if swept := sweep_stale_secrets():
        log.info("removed %d secret dir(s) left by crashed workers", swept)
    workers = [Worker(settings) for _ in range(max(1, concurrency))]
    threads = [threading.Thread(target=w.loop, args=(once,), name=f"worker-{i}") for i, w in enumerate(workers)]
    timers: list[Every] = []
    clock: BillingClock | None = None
    pruner: Pruner | None = None
    prober: HealthProber | None = None
    collectors: follow.Collectors | None = None
    if not once:
        prober = HealthProber(settings, workers[0].name)
        timers.append(Every("health probe", settings.health_interval_s, prober.probe_all))
        if settings.domain_check_interval_s > 0:
            checker = domain_checker(settings)
            timers.append(Every("custom domain check", min(settings.domain_check_interval_s, _DOMAIN_TICK_S),
                                lambda: check_domains(checker)))
        if settings.reconcile_interval_s > 0:
            timers.append(Every("reconcile timer", settings.reconcile_interval_s, lambda: queue_reconciles(settings)))
        if settings.billing_enabled and settings.billing_interval_s > 0:
            clock = BillingClock(settings, workers[0].name)
            timers.append(Every("billing clock", settings.billing_interval_s, clock.tick))
        collectors = follow.Collectors(settings, workers[0].name)
        timers.append(Every("output followers", FOLLOW_TICK_S, collectors.tick))
        deliverer = webhooks.Deliverer(settings)
        timers.append(Every("webhook deliveries", WEBHOOK_TICK_S, lambda: void(deliverer.tick())))
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
    if collectors is not None:
        collectors.stop()
    if clock is not None:
        clock.billing.release_lease(clock.owner)  # the next worker need not wait for it to expire
    if pruner is not None:
        retention.release_lease(pruner.owner)
    if prober is not None:
        prober.release()

