"""``webhook_endpoints`` and ``webhook_deliveries``: an operator's outbound webhooks (the
Standard Webhooks scheme) and each event sent to each endpoint, with its attempts. The
signing secret is stored Fernet-encrypted with BUDDO_SECRET_KEY, as registry passwords are.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        """CREATE TABLE webhook_endpoints (
            id VARCHAR(36) PRIMARY KEY,
            operator_id VARCHAR(255) NOT NULL,
            url TEXT NOT NULL,
            description VARCHAR(255),
            event_types TEXT NOT NULL,
            secret_encrypted TEXT NOT NULL,
            enabled BOOLEAN NOT NULL,
            disabled_reason TEXT,
            failing_since TIMESTAMP,
            inserted_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL
        )""",
        "CREATE INDEX webhook_endpoints_operator ON webhook_endpoints (operator_id, inserted_at, id)",
        """CREATE TABLE webhook_deliveries (
            id VARCHAR(36) PRIMARY KEY,
            endpoint_id VARCHAR(36) NOT NULL REFERENCES webhook_endpoints (id),
            event_type VARCHAR(64) NOT NULL,
            payload TEXT NOT NULL,
            state VARCHAR(16) NOT NULL,
            attempts INTEGER NOT NULL,
            next_attempt_at TIMESTAMP,
            last_attempt_at TIMESTAMP,
            last_status INTEGER,
            last_error TEXT,
            inserted_at TIMESTAMP NOT NULL
        )""",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at)",
        "CREATE INDEX webhook_deliveries_listing ON webhook_deliveries (endpoint_id, inserted_at, id)",
    ]
