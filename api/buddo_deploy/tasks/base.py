"""The run template every job kind shares, and the supervised playbook run under it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from .. import jobqueue
from ..db import connect_thread
from ..models import Job, database_proxy
from ..results import EventSummary, PlaybookResult
from ..runner import run_playbook
from ..services import engine
from ..settings import Settings

log = logging.getLogger(__name__)


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

    def start(self, job: Job) -> engine.Plan | None:
        """Mark the claimed job as begun and plan its run; None when there is nothing to run
        (the job is finished already)."""
        raise NotImplementedError

    def finish(self, plan: engine.Plan, result: PlaybookResult, duration_s: float) -> Any:
        """Record the run's outcome on each job and what it stands for."""
        raise NotImplementedError

    def report(self, plan: engine.Plan, data: dict[str, Any], duration_s: float) -> None:
        """What the run reported (set_stats), as it reports it, before the run has ended; by
        default nothing is done before :meth:`finish`."""

    def run(self, job: Job) -> Any:
        """Start, run the playbook under supervision, finish: the same for every kind."""
        log.info("job %s: %s of %s (attempt %s)", job.id, job.action, job.deployment_id or job.host, job.attempts)
        plan = self.start(job)
        if plan is None:
            return None
        result, duration_s = JobRun(self.settings, self.owner, self.lease_s).run(plan, self.report)
        return self.finish(plan, result, duration_s)


class JobRun:
    """One playbook run through ansible-runner, with its job's lease kept alive and its events recorded.

    Any failure to renew the lease or to record an event cancels the run: a playbook never
    goes on unsupervised. The job is then retried (by this or another worker).

    Events are recorded once, in the run's job. A host converge is every target's run, so
    each target's job view shows them; nothing of one tenant reaches another: in a run of
    a job shared by several deployments (more than one target, even when the run acts on
    one of them), a failure's text (which may name any deployment a module run covered) is
    recorded without it (engine.shared_event). Each deployment's own failure (its message,
    its task) is its target's, from its own outcome.
    """

    def __init__(self, settings: Settings, owner: str, lease_s: int) -> None:
        self.settings = settings
        self.owner = owner
        self.lease_s = lease_s

    def run(self, plan: engine.Plan,
            report: Callable[[engine.Plan, dict[str, Any], float], None] | None = None) -> tuple[PlaybookResult, float]:
        job = plan.job
        cancel = threading.Event()
        done = threading.Event()
        why: list[str] = []

        def keep_lease() -> None:
            try:
                connect_thread()
                while not done.wait(self.lease_s / 3):
                    if not jobqueue.renew(job, self.owner, self.lease_s):
                        why.append("the job's lease was lost")
                        cancel.set()
                        return
            except Exception as exc:  # database down: stop rather than run unleased
                log.exception("job %s: lease renewal failed", job.id)
                why.append(f"lease renewal failed: {exc.__class__.__name__}")
                cancel.set()
            finally:
                database_proxy.obj.close()

        def on_event(summary: EventSummary) -> None:
            if cancel.is_set():
                return
            try:
                engine.record_event(job, engine.shared_event(summary) if plan.shared else summary)
            except Exception as exc:
                log.exception("job %s: recording an event failed", job.id)
                why.append(f"recording an event failed: {exc.__class__.__name__}")
                cancel.set()

        def on_report(data: dict[str, Any]) -> None:
            if cancel.is_set() or report is None:
                return
            try:
                report(plan, data, time.monotonic() - started)
            except Exception:  # finish records it then
                log.exception("job %s: recording what the run reported failed", job.id)

        heartbeat = threading.Thread(target=keep_lease, name=f"lease-{job.id}", daemon=True)
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
                timeout_s=job.timeout_s,
                on_event=on_event,
                on_report=on_report,
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
        return result, time.monotonic() - started
