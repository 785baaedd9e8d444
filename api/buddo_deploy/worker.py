"""`buddo-deploy worker`: claim jobs, run one playbook each, record the outcome; probe health."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

from . import jobqueue
from .db import open_database
from .models import database_proxy
from .runner import EventSummary, run_playbook, sweep_stale_secrets
from .services import engine
from .settings import Settings

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.lease_s = settings.job_lease_s
        self.poll_s = settings.worker_poll_s

    def run_once(self) -> bool:
        """Claim and run one job; False when there was nothing to do."""
        database_proxy.obj.connect(reuse_if_open=True)
        job = jobqueue.claim(self.name, self.lease_s, on_expired=engine.expired)
        if job is None:
            return False
        log.info("job %s: %s of deployment %s (attempt %s)", job.id, job.action, job.deployment_id, job.attempts)
        plan = engine.start(job, self.name, self.settings.secret_key)
        if plan is None:
            log.info("job %s: nothing to run (superseded, or failed before running)", job.id)
            return True
        lost = threading.Event()
        done = threading.Event()

        def keep_lease() -> None:
            database_proxy.obj.connect(reuse_if_open=True)
            try:
                while not done.wait(self.lease_s / 3):
                    if not jobqueue.renew(job, self.name, self.lease_s):
                        lost.set()
                        return
            finally:
                database_proxy.obj.close()

        def on_event(summary: EventSummary) -> None:
            engine.record_event(job, summary)

        heartbeat = threading.Thread(target=keep_lease, name=f"lease-{job.id}", daemon=True)
        heartbeat.start()
        started = time.monotonic()
        try:
            result = run_playbook(
                self.settings.playbook_dir / plan.playbook,
                self.settings.inventory,
                plan.extravars,
                secrets=plan.secrets,
                limit=plan.deployment.host,
                timeout_s=job.timeout_s,
                on_event=on_event,
                should_cancel=lost.is_set,
                work_dir=self.settings.var_dir / "runner",
                keep_data_dir=self.settings.keep_runner_data,
            )
        finally:
            done.set()
            heartbeat.join()
        if not engine.finish(plan, self.name, result, time.monotonic() - started):
            log.warning("job %s: lease lost, outcome discarded", job.id)
        else:
            log.info("job %s: %s (%s)", job.id, result.status, result.message or "ok")
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


class HealthProber:
    """Probes running deployments on this host over their published loopback port."""

    def __init__(self, settings: Settings, interval_s: float) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.stopping = threading.Event()

    @staticmethod
    def answers(port: int, timeout: float = 3.0) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout):  # noqa: S310
                return True
        except urllib.error.HTTPError:
            return True  # it answered, just not with 2xx: the app is up
        except (urllib.error.URLError, OSError):
            return False

    def probe_all(self) -> None:
        database_proxy.obj.connect(reuse_if_open=True)
        for deployment in engine.running_on(self.settings.default_host):
            engine.record_health(deployment, self.answers(deployment.host_port))

    def loop(self) -> None:
        while not self.stopping.wait(self.interval_s):
            try:
                self.probe_all()
            except Exception:
                log.exception("health probe failed")


def run_worker(settings: Settings, *, once: bool = False, concurrency: int = 2) -> None:
    open_database(settings.database_url)
    if swept := sweep_stale_secrets():
        log.info("removed %d secret dir(s) left by crashed workers", swept)
    workers = [Worker(settings) for _ in range(max(1, concurrency))]
    threads = [threading.Thread(target=w.loop, args=(once,), name=f"worker-{i}") for i, w in enumerate(workers)]
    prober = HealthProber(settings, settings.health_interval_s)
    if not once:
        threads.append(threading.Thread(target=prober.loop, name="health", daemon=True))
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
        prober.stopping.set()
        for thread in threads:
            thread.join()
