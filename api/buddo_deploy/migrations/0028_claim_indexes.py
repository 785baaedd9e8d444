"""Indexes a job claim seeks with (jobqueue._CLAIMABLE), so it costs the same however many
jobs are queued and however long the history: the jobs of a host by state and action
(a running reconcile, an earlier queued one, a solo converge), and deployments by
subdomain (every deployment that had a target's subdomain, destroyed ones included: the
live index is partial)."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        "CREATE INDEX jobs_host_state ON jobs (host, state, action, id)",
        "CREATE INDEX deployments_subdomain ON deployments (subdomain)",
    ]
