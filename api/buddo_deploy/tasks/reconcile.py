"""Reconcile: converge every deployment of one host and remove orphans (or, checking, only report)."""

from __future__ import annotations

import logging

from .. import metrics
from ..models import Job
from ..results import PlaybookResult
from ..services import engine
from ..settings import Settings
from .base import BaseTask

log = logging.getLogger(__name__)


class ReconcileTask(BaseTask):
    kind = "reconcile"

    def __init__(self, settings: Settings, owner: str, *, check: bool = False, count: bool = True) -> None:
        """``check``: a dry run (``--check --diff``) that records nothing; ``count``: into the metrics."""
        super().__init__(settings, owner)
        self.check, self.count = check, count

    def start(self, job: Job) -> engine.Plan:
        return engine.start_reconcile(job, self.settings.secret_key, check=self.check)

    def finish(self, plan: engine.Plan, result: PlaybookResult, duration_s: float) -> engine.Report:
        job = plan.job
        report = engine.finish_reconcile(plan, self.owner, result, duration_s)
        if self.count:
            metrics.observe_reconcile(report.host, report.deployments, report.orphans, dry_run=self.check)
            if not self.check:
                metrics.observe_job(job.action, "succeeded" if report.converged else "failed", duration_s)
        repaired = [d["subdomain"] for d in report.deployments if d["drift"]]
        log.info("job %s: reconcile of %s: %s; %s %s; orphans %s", job.id, job.host,
                 "converged" if report.converged else f"not converged ({report.message})",
                 "drift" if self.check else "repaired", repaired or "nothing", report.orphans or "none")
        return report
