"""A release keeps the configuration it ran with, not only its image: its env (the deployment's
ciphertext, Fernet with BUDDO_SECRET_KEY, and the names) and its container port. A rollback
restores image, env and port together. Releases made before keep NULL: a rollback to one of
them keeps the current env and port.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        "ALTER TABLE releases ADD COLUMN env_vars_encrypted TEXT",
        "ALTER TABLE releases ADD COLUMN env_var_names TEXT",
        "ALTER TABLE releases ADD COLUMN port INTEGER",
    ]
