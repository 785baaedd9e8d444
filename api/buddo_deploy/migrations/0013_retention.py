"""Retention (services/retention.py): finished jobs are found by age, and the newest job an
audit entry of a deployment names (kept) without reading all of its entries; the worker
that prunes holds the ``retention`` lease."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        "CREATE INDEX jobs_finished ON jobs (finished_at)",
        "CREATE INDEX audit_entries_deployment_job ON audit_entries (deployment_id, job_id)",
        "INSERT INTO leases (name) VALUES ('retention')",
    ]
