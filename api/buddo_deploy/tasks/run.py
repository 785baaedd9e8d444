"""Run: a one-off command of a deployment, in a new container on its host (services/runs.py),
its lines collected as it prints them (services/follow.py) for those who follow it."""

from __future__ import annotations

from ..models import Job
from ..results import PlaybookResult
from ..services import follow, runs
from ..services.engine import Plan
from .base import BaseTask


class RunTask(BaseTask):
    kind = "run"

    def start(self, job: Job) -> Plan | None:
        plan = runs.start(job, self.owner, self.settings.secret_key)
        if plan is not None:
            request = plan.items[0]
            follow.collect_run(self.settings, request["run_id"], request["deployment_id"], plan.host,
                               request["timeout_s"] + runs.JOB_OVERHEAD_S)
        return plan

    def finish(self, plan: Plan, result: PlaybookResult, duration_s: float) -> None:
        follow.end_run(plan.items[0]["run_id"])  # its last lines stored before it shows finished
        runs.finish(plan, self.owner, result)
