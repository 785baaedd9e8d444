"""Converge: bring deployments to their desired state (a batch of one host's converges in one run)."""

from __future__ import annotations

import logging

from .. import metrics
from ..models import Job
from ..results import PlaybookResult
from ..services import engine
from .base import BaseTask, job_outcome

log = logging.getLogger(__name__)


class ConvergeTask(BaseTask):
    kind = "converge"

    def start(self, jobs: list[Job]) -> engine.Plan | None:
        """Each job starts on its own (it may be converged already, or its generation failed);
        the rest share one converge.yml run."""
        plans = []
        for job in jobs:
            plan = engine.start_converge(job, self.owner, self.settings.secret_key)
            if plan is None:
                log.info("job %s: nothing to run", job.id)
                metrics.observe_job(job.action, "skipped", None)
            else:
                plans.append(plan)
        if not plans:
            return None
        if len(plans) > 1:
            log.info("jobs %s: one converge run on %s", ", ".join(str(p.job.id) for p in plans), plans[0].host)
        return engine.batch(plans)

    def finish(self, plan: engine.Plan, result: PlaybookResult, duration_s: float) -> None:
        """Each job is finished from its own deployment's outcome."""
        shared = len(plan.members) > 1
        for part in plan.members:
            if not engine.finish(part, self.owner, result, duration_s, shared=shared):
                log.warning("job %s: lease lost, outcome discarded", part.job.id)
                outcome = "lease_lost"
            else:
                outcome = job_outcome(part.job.id)
                log.info("job %s: %s (%s)", part.job.id, outcome, result.message or "ok")
            metrics.observe_job(part.job.action, outcome, duration_s)
