"""Registry logins: an operator's credentials for a registry host, one per operator and host.

The password is stored Fernet-encrypted (``BUDDO_SECRET_KEY``, as env values) and
never leaves the database in clear except to the engine pulling that operator's
images. The unique index also serves the lookups by operator (its first column).
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        """CREATE TABLE registry_logins (
            id VARCHAR(36) PRIMARY KEY,
            operator_id VARCHAR(255) NOT NULL,
            registry VARCHAR(255) NOT NULL,
            username VARCHAR(255) NOT NULL,
            password_encrypted TEXT NOT NULL,
            inserted_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL
        )""",
        "CREATE UNIQUE INDEX registry_logins_operator_registry ON registry_logins (operator_id, registry)",
    ]
