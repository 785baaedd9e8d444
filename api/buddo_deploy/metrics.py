"""Prometheus metrics of every process of the platform, added up (prometheus-client multiprocess mode).

Each process that counts something (a gunicorn worker of the API, ``buddo-deploy
worker``, ``buddo-deploy reconcile``) writes its counters to mmap files named after
its pid in one directory, ``var/metrics`` (``PROMETHEUS_MULTIPROC_DIR``, set from BUDDO_VAR_DIR).
``GET /metrics`` adds the files up and adds what the database says at scrape time
(queue, deployments by status and health), so the numbers are right whichever
process answers and however many there are.

Files of processes that are gone stay (their counts are part of the totals) until
``buddo-deploy serve`` or ``worker`` starts again and sweeps them: a restart of
the platform starts its counters from zero, as a restart of one process would
(Prometheus reads that as a counter reset). Gunicorn's ``child_exit`` hook
(gunicorn_conf.py) marks a worker dead as soon as it exits.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .services import fleet
from .vocabulary import DeploymentStatus, Health, JobKind

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# counter_123.db, histogram_123.db, gauge_livesum_123.db: the pid is the last part.
_PID_FILE = re.compile(r"^[a-z_]+_(\d+)\.db$")
_CONVERTER = re.compile(r"\{(\w+):[^}]*\}")
JOB_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)


class Metrics:
    """The platform's own counters; created once per process, after :func:`prepare`."""

    def __init__(self) -> None:
        # In no registry: /metrics reads every process's files instead.
        registry = None
        self.requests = Counter(
            "buddo_http_requests", "API requests by route template and status",
            ["method", "endpoint", "status"], registry=registry)
        self.request_seconds = Histogram(
            "buddo_http_request_duration_seconds", "API request latency by route template",
            ["method", "endpoint"], registry=registry)
        self.jobs = Counter(
            "buddo_jobs", "Job runs by action and outcome (succeeded, failed, retried, lease_lost, skipped)",
            ["action", "outcome"], registry=registry)
        self.job_seconds = Histogram(
            "buddo_job_duration_seconds", "Playbook run time of a job by action and outcome",
            ["action", "outcome"], buckets=JOB_BUCKETS, registry=registry)
        self.drift_found = Counter(
            "buddo_reconcile_drift_found", "Deployments a reconcile found drifted (dry runs included)",
            ["host"], registry=registry)
        self.drift_repaired = Counter(
            "buddo_reconcile_drift_repaired", "Drifted deployments a reconcile repaired", ["host"],
            registry=registry)
        self.orphans_removed = Counter(
            "buddo_reconcile_orphans_removed", "Orphan containers and sites a reconcile removed", ["host"],
            registry=registry)
        self.automatic_restarts = Counter(
            "buddo_automatic_restarts", "Restarts the health prober asked for (an app died or stopped answering)",
            ["host"], registry=registry)


_directory: Path | None = None
_metrics: Metrics | None = None


def prepare(var_dir: Path) -> Path:
    """Bind this process to ``var_dir/metrics``; call before anything is counted.

    The directory follows BUDDO_VAR_DIR (an inherited PROMETHEUS_MULTIPROC_DIR is
    overwritten: a child platform, e.g. in tests, must not count into its parent's).
    The first call in a process decides: the files it opened stay its files.
    """
    global _directory, _metrics
    if _directory is None:
        path = var_dir / "metrics"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ[MULTIPROC_ENV] = str(path)  # prometheus-client reads it when it opens a file
        if not getattr(values.ValueClass, "_multiprocess", False):
            # prometheus-client picks its value class when first imported; this process may
            # have imported it before the directory was known.
            values.ValueClass = values.MultiProcessValue()
        _directory = path
        _metrics = Metrics()
    return _directory


def metrics() -> Metrics:
    """This process's counters (prepared by create_app, the worker and the reconcile command)."""
    if _metrics is None:
        raise RuntimeError("metrics.prepare() was not called in this process")
    return _metrics


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(directory: Path) -> int:
    """Remove the files of processes that are gone (at the start of serve and worker)."""
    removed = 0
    for path in directory.glob("*.db"):
        match = _PID_FILE.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def mark_process_dead(pid: int) -> None:
    """Gunicorn's child_exit: drop the live gauges of a worker that exited."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)


# --- recording ----------------------------------------------------------------


def endpoint_label(uri_template: str | None) -> str:
    """The route template without converters (never the raw path: ids would explode the series)."""
    return _CONVERTER.sub(r"{\1}", uri_template) if uri_template else "unmatched"


def observe_request(method: str, uri_template: str | None, status: int, seconds: float) -> None:
    m = metrics()
    endpoint = endpoint_label(uri_template)
    m.requests.labels(method, endpoint, str(status)).inc()
    m.request_seconds.labels(method, endpoint).observe(seconds)


def observe_job(action: str, outcome: str, seconds: float | None) -> None:
    m = metrics()
    m.jobs.labels(action, outcome).inc()
    if seconds is not None:
        m.job_seconds.labels(action, outcome).observe(seconds)


def observe_reconcile(host: str, deployments: list[dict[str, Any]], orphans: list[str], *, dry_run: bool) -> None:
    """A reconcile's report: ``deployments`` as engine.Report has them (drift, ok), the orphans it named."""
    m = metrics()
    drifted = [d for d in deployments if d["drift"]]
    m.drift_found.labels(host).inc(len(drifted))
    if not dry_run:
        m.drift_repaired.labels(host).inc(sum(1 for d in drifted if d["ok"]))
        m.orphans_removed.labels(host).inc(len(orphans))


def observe_automatic_restarts(host: str, count: int) -> None:
    metrics().automatic_restarts.labels(host).inc(count)


# --- exposition ---------------------------------------------------------------


class _Snapshot(Collector):
    """Gauges computed at scrape time (from the database, by the caller)."""

    def __init__(self, families: Iterable[GaugeMetricFamily]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.families


def gauge(name: str, documentation: str, labels: list[str],
          samples: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in samples:
        family.add_metric(label_values, value)
    return family


def exposition(families: Iterable[GaugeMetricFamily]) -> tuple[bytes, str]:
    """Every process's counters added up, plus ``families``, in the Prometheus text format."""
    if _directory is None:
        raise RuntimeError("metrics.prepare() was not called in this process")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(_directory))
    registry.register(_Snapshot(families))
    return generate_latest(registry), CONTENT_TYPE_LATEST


JOB_ACTIONS = (JobKind.CONVERGE, JobKind.RECONCILE)


def fleet_families() -> list[GaugeMetricFamily]:
    """The job queue and the deployments as the database has them now (every combination, zeros too)."""
    queue = {(row.action, row.state): row for row in fleet.job_queue()}
    actions = sorted(set(JOB_ACTIONS) | {action for action, _ in queue})
    counts: dict[tuple[str, str], int] = {(status, health): 0 for status in DeploymentStatus for health in Health}
    for status, health, count in fleet.deployments_by_status():
        counts[(status, health)] = count

    def jobs_in(state: str) -> list[tuple[list[str], float]]:
        return [([a], float(queue[(a, state)].count if (a, state) in queue else 0)) for a in actions]

    oldest = max((row.oldest_age_s for (_, state), row in queue.items() if state == "queued"), default=0.0)
    return [
        gauge("buddo_jobs_queued", "Jobs waiting to run (backing-off retries included), by action",
              ["action"], jobs_in("queued")),
        gauge("buddo_jobs_running", "Jobs a worker runs now, by action", ["action"], jobs_in("running")),
        gauge("buddo_job_queue_oldest_age_seconds", "Age of the oldest queued job (0: none queued)", [],
              [([], oldest)]),
        gauge("buddo_deployments", "Deployments by status and health", ["status", "health"],
              [([status, health], float(n)) for (status, health), n in sorted(counts.items())]),
    ]
