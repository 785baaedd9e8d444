"""Custom domain claims: a proof of ownership per claim, and expiry of the claims nobody proves.

``custom_domain_token``: the TXT record ``_buddo-challenge.<domain>`` must hold
``buddo-verify=<token>`` (or the domain be a CNAME to the app's own name); A/AAAA
records to the host no longer prove anything. Existing claims get a token of their
own; a domain that was active on A/AAAA records alone becomes ``misconfigured`` at
its next check and is released BUDDO_DOMAIN_CLAIM_EXPIRY later unless its operator
adds the TXT record the API now shows.

``custom_domain_unverified_since``: since when the claim is not verified (null while
it is); existing unverified claims start their expiry now, not at their creation.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    # Naive UTC, as the application stores every time (PostgreSQL's now() is in the session's zone).
    if dialect == "sqlite":
        token, now = "lower(hex(randomblob(16)))", "CURRENT_TIMESTAMP"
    else:
        token, now = "replace(gen_random_uuid()::text, '-', '')", "(now() AT TIME ZONE 'UTC')"
    held = "custom_domain IS NOT NULL AND released_at IS NULL"
    return [
        "ALTER TABLE deployments ADD COLUMN custom_domain_token VARCHAR(64)",
        "ALTER TABLE deployments ADD COLUMN custom_domain_unverified_since TIMESTAMP",
        # Only rows that hold a domain: a released one needs no proof.
        f"UPDATE deployments SET custom_domain_token = {token} WHERE {held}",  # noqa: S608 - constants only
        f"UPDATE deployments SET custom_domain_unverified_since = {now}"  # noqa: S608
        f" WHERE {held} AND custom_domain_status <> 'active'",
        # The expiry sweep: held claims, the longest unverified first.
        "CREATE INDEX deployments_custom_domain_unverified ON deployments (custom_domain_unverified_since)"
        f" WHERE {held}",
    ]
