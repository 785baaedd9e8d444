"""Run: a one-off command of a deployment, in a new container on its host (services/runs.py)."""

from __future__ import annotations

from ..models import Job
from ..results import PlaybookResult
from ..services import runs
from ..services.engine import Plan
from .base import BaseTask


class RunTask(BaseTask):
    kind = "run"

    def start(self, job: Job) -> Plan | None:
        return runs.start(job, self.owner, self.settings.secret_key)

    def finish(self, plan: Plan, result: PlaybookResult, duration_s: float) -> None:
        runs.finish(plan, self.owner, result)
