"""``idempotency_keys``: a POST, PATCH, PUT or DELETE sent with an ``Idempotency-Key`` header
(draft-ietf-httpapi-idempotency-key-header, as Stripe does it), per operator: the request's
fingerprint (an HMAC of method, path and body with BUDDO_SECRET_KEY: a body may hold env
values or a registry password) and, once it was answered, the answer a retry gets again
for 24 hours.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        """CREATE TABLE idempotency_keys (
            operator_id VARCHAR(255) NOT NULL,
            idempotency_key VARCHAR(255) NOT NULL,
            fingerprint VARCHAR(64) NOT NULL,
            state VARCHAR(16) NOT NULL,
            status INTEGER,
            body TEXT,
            headers TEXT,
            created_at TIMESTAMP NOT NULL,
            expires_at TIMESTAMP NOT NULL,
            PRIMARY KEY (operator_id, idempotency_key)
        )""",
        "CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at)",
    ]
