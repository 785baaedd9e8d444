"""Output: read what a deployment's container printed, on its host (services/output.py)."""

from __future__ import annotations

from .. import metrics
from ..models import Job
from ..results import PlaybookResult
from ..services import output
from ..services.engine import Plan
from .base import BaseTask, job_outcome


class OutputTask(BaseTask):
    kind = "output"

    def start(self, job: Job) -> Plan | None:
        found = output.start(job, self.owner, self.settings.secret_key)
        if found is None:
            return None
        host, items, known, secrets = found
        return Plan(job, "output.yml", host, items, known, secrets, variables={"output_request": items[0]})

    def finish(self, plan: Plan, result: PlaybookResult, duration_s: float) -> None:
        output.finish(plan.job, self.owner, result, plan.secrets)
        metrics.observe_job(plan.job.action, job_outcome(plan.job.id), duration_s)
