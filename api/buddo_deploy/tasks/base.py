"""The run template every job kind shares, and the supervised playbook run under it."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar

from .. import jobqueue
from ..models import Job, database_proxy
from ..results import EventSummary, PlaybookResult
from ..runner import run_playbook
from ..services import engine
from ..settings import Settings

log = logging.getLogger(__name__)


def _db_connect() -> None:
    database_proxy.obj.connect(reuse_if_open=True)


def job_outcome(job_id: int) -> str:
    """What the engine made of a run: succeeded, failed (the app's own failure) or retried."""
    state = Job.select(Job.state).where(Job.id == job_id).scalar()
    return "retried" if state == "queued" else str(state)


class BaseTask:
    """One kind of job. :meth:`run` is the template; a kind fills in :meth:`start` and :meth:`finish`."""

    kind: ClassVar[str]

    def __init__(self, settings: Settings, owner: str) -> None:
        self.settings = settings
        self.owner = owner
        self.lease_s = settings.job_lease_s

    def start(self, jobs: list[Job]) -> engine.Plan | None:
        """Mark the claimed jobs as begun and plan their run; None when there is nothing to run
        (the jobs are finished already)."""
        raise NotImplementedError

    def finish(self, plan: engine.Plan, result: PlaybookResult, duration_s: float) -> Any:
        """Record the run's outcome on each job and what it stands for."""
        raise NotImplementedError

    def run(self, jobs: list[Job]) -> Any:
        """Start, run the playbook under supervision, finish: the same for every kind."""
        for job in jobs:
            log.info("job %s: %s of %s (attempt %s)", job.id, job.action, job.deployment_id or job.host, job.attempts)
        plan = self.start(jobs)
        if plan is None:
            return None
        result, duration_s = JobRun(self.settings, self.owner, self.lease_s).run(plan)
        return self.finish(plan, result, duration_s)


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
                plan.variables | {"converge_instance": self.settings.instance,
                                  "converge_releases_kept": self.settings.releases_kept},
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
