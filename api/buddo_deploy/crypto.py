"""Secrets at rest: env var values and registry passwords are stored Fernet-encrypted."""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography.fernet import Fernet, InvalidToken


def _fernet(secret_key: str) -> Fernet:
    try:
        return Fernet(secret_key.encode())
    except ValueError:
        # Any passphrase works: derive a proper 32-byte key from it.
        digest = hashlib.sha256(secret_key.encode()).digest()
        return Fernet(base64.urlsafe_b64encode(digest))


def encrypt_env(secret_key: str, env: dict[str, str]) -> str:
    return _fernet(secret_key).encrypt(json.dumps(env, sort_keys=True).encode()).decode()


def decrypt_env(secret_key: str, token: str | None) -> dict[str, str]:
    if not token:
        return {}
    try:
        data = json.loads(_fernet(secret_key).decrypt(token.encode()))
    except InvalidToken as exc:
        raise RuntimeError("env vars cannot be decrypted: BUDDO_SECRET_KEY changed?") from exc
    if not isinstance(data, dict):
        raise RuntimeError("env vars are corrupt")
    return {str(k): str(v) for k, v in data.items()}


def encrypt_secret(secret_key: str, value: str) -> str:
    """One secret string (a registry password), encrypted with the same key as env values."""
    return _fernet(secret_key).encrypt(value.encode()).decode()


def decrypt_secret(secret_key: str, token: str, what: str = "a secret") -> str:
    """The secret ``encrypt_secret`` stored; ``what`` names it in the error (never the value)."""
    try:
        return _fernet(secret_key).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise RuntimeError(f"{what} cannot be decrypted: BUDDO_SECRET_KEY changed?") from exc
    except UnicodeDecodeError as exc:
        raise RuntimeError(f"{what} is corrupt") from exc
