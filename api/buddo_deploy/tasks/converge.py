"""Converge: bring the deployments of one host that are behind to their desired state, in one run."""

from __future__ import annotations

import logging
from typing import Any

from .. import metrics
from ..models import Job
from ..results import PlaybookResult
from ..services import engine
from .base import BaseTask

log = logging.getLogger(__name__)


class ConvergeTask(BaseTask):
    kind = "converge"

    def start(self, job: Job) -> engine.Plan | None:
        plan = engine.start_converge(job, self.owner, self.settings.secret_key)
        if plan is None:
            log.info("job %s: nothing to run on %s", job.id, job.host)
            metrics.observe_job(job.action, "skipped", None)
        else:
            log.info("job %s: converging %d deployment(s) on %s", job.id, len(plan.items), job.host)
        return plan

    def report(self, plan: engine.Plan, data: dict[str, Any], duration_s: float) -> None:
        """Each deployment is running (or failed) once the run reports so, not once it has ended."""
        outcomes = data.get("buddo_outcomes")
        if isinstance(outcomes, dict):
            engine.record_reported(plan, self.owner, outcomes, duration_s)

    def finish(self, plan: engine.Plan, result: PlaybookResult, duration_s: float) -> None:
        """Each target is finished from its own deployment's outcome."""
        job = plan.job
        outcome = engine.finish(plan, self.owner, result, duration_s)
        if outcome is None:
            log.warning("job %s: lease lost, outcome discarded", job.id)
            outcome = "lease_lost"
        else:
            log.info("job %s: %s (%s)", job.id, outcome, result.message or "ok")
        metrics.observe_job(job.action, outcome, duration_s)
