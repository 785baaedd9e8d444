"""When the ask endpoint first approved a certificate for a custom domain claim.

Only that first approval is an issuance attempt that spends the hour's budget; Caddy's
later asks for the same claim (while it obtains, on renewal, after a restart) cost
nothing. Active domains already had theirs: marking them approved keeps a Caddy restart
after the upgrade from spending the budget on certificates it holds.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    # Naive UTC, as the application stores every time (PostgreSQL's now() is in the session's zone).
    now = "CURRENT_TIMESTAMP" if dialect == "sqlite" else "(now() AT TIME ZONE 'UTC')"
    return [
        "ALTER TABLE deployments ADD COLUMN custom_domain_approved_at TIMESTAMP",
        f"UPDATE deployments SET custom_domain_approved_at = {now}"  # noqa: S608 - constants only
        " WHERE custom_domain IS NOT NULL AND released_at IS NULL AND custom_domain_status = 'active'",
    ]
