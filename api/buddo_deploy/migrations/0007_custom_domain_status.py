"""Custom domains are verified before they are routed: their DNS check's status and time.

Existing custom domains start ``pending``: the worker checks them at once, and
only a verified (``active``) one is routed and gets a certificate.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        "ALTER TABLE deployments ADD COLUMN custom_domain_status VARCHAR(16)",
        "ALTER TABLE deployments ADD COLUMN custom_domain_checked_at TIMESTAMP",
        "UPDATE deployments SET custom_domain_status = 'pending' WHERE custom_domain IS NOT NULL",
        # The checker's scan: held deployments with a custom domain, least recently checked first.
        "CREATE INDEX deployments_custom_domain_checked ON deployments (custom_domain_checked_at)"
        " WHERE custom_domain IS NOT NULL AND released_at IS NULL",
    ]
