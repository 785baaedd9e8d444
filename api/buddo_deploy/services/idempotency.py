"""Idempotency keys (draft-ietf-httpapi-idempotency-key-header, as Stripe does it).

An operator's POST, PATCH, PUT or DELETE sent with ``Idempotency-Key: <key>`` is remembered
for 24 hours after it was answered: a retry with the same key, method, path and body gets
the first answer again and does nothing; the same key with another request is refused
(``idempotency_key_reused``, 422). A retry that comes while the first is still being answered
waits for that answer (up to ``WAIT_S``), then is told to come back (409,
``idempotency_key_in_use``, ``Retry-After``). Answers that a retry should not get again are
forgotten, so the retry runs: a 5xx (the platform failed) and a 429 (a limit, for now).

Keys are the operator's own: another operator's identical key is another key. The request
is remembered by an HMAC of it (BUDDO_SECRET_KEY), never by its body, which may hold env
values or a registry password. The answer is stored encrypted with the same key: it may hold
a secret shown once (a webhook's signing secret), which a retry of that request gets again,
as Stripe replays it (the client that lost the first answer needs it).

A request whose process died before it was answered leaves its key ``started``: after
``ABANDONED_AFTER`` a retry runs it again (what the first did, if anything, then answers
it: a create retried so is told its subdomain is taken).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import random
import re
import time
from dataclasses import dataclass

import peewee

from ..crypto import decrypt_secret, encrypt_secret
from ..db import write_transaction
from ..domain_errors import Conflict, Invalid
from ..models import IdempotencyKey, database_proxy, utcnow

KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as the draft's sf-string allows
RETENTION = dt.timedelta(hours=24)
ABANDONED_AFTER = dt.timedelta(seconds=60)
WAIT_S = 10.0
PURGE_BATCH = 500


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    headers: dict[str, str]


def check_key(key: str) -> None:
    if not KEY.match(key):
        raise Invalid.for_field("Idempotency-Key", "must be 1 to 255 visible ASCII characters (no spaces)",
                                code="invalid_idempotency_key")


def fingerprint(secret_key: str, method: str, path: str, body: bytes) -> str:
    return hmac.new(secret_key.encode(), b"%s %s\n%s" % (method.encode(), path.encode(), body),
                    hashlib.sha256).hexdigest()


def begin(secret_key: str, operator_id: str, key: str, print_: str) -> Answer | None:
    """None: the request goes on, its key now ``started``. An :class:`Answer`: the first
    answer, to be given again. Raises Invalid (the key was used for another request) or
    Conflict (the first request is still being answered, after waiting ``WAIT_S`` for it)."""
    deadline = time.monotonic() + WAIT_S
    db = database_proxy.obj
    while True:
        try:
            with write_transaction(db):
                found = _take(secret_key, operator_id, key, print_)
        except peewee.IntegrityError:  # PostgreSQL: another request inserted the key first
            found = "started"
        if found is None or isinstance(found, Answer):
            if found is None and random.random() < 0.01:  # noqa: S311 - housekeeping, not security
                purge_expired()
            return found
        if time.monotonic() >= deadline:
            raise Conflict("A request with this Idempotency-Key is still being answered; retry later",
                           code="idempotency_key_in_use", headers={"Retry-After": "1"})
        time.sleep(0.05)


def _take(secret_key: str, operator_id: str, key: str, print_: str) -> Answer | str | None:
    now = utcnow()
    row = IdempotencyKey.get_or_none((IdempotencyKey.operator_id == operator_id)
                                     & (IdempotencyKey.idempotency_key == key))
    if row is not None and (row.expires_at <= now or (
            row.state == "started" and row.created_at <= now - ABANDONED_AFTER) or _unreadable(secret_key, row)):
        _delete(operator_id, key)
        row = None
    if row is None:
        IdempotencyKey.insert(operator_id=operator_id, idempotency_key=key, fingerprint=print_, state="started",
                              created_at=now, expires_at=now + RETENTION).execute()
        return None
    if not hmac.compare_digest(row.fingerprint, print_):
        raise Invalid.for_field("Idempotency-Key", "was already used for another request (method, path or body "
                                "differ); use a new key for a new request", code="idempotency_key_reused")
    if row.state == "answered":
        return Answer(int(row.status or 0), row.body or "", json.loads(row.headers or "{}"))  # decrypted above
    return "started"


def _unreadable(secret_key: str, row: IdempotencyKey) -> bool:
    """An answer that cannot be decrypted (stored in the clear by a process of a version before
    migration 0030, during a rolling upgrade) is forgotten: the retry runs as a new request."""
    if row.state != "answered" or not row.body:
        return False
    try:
        row.body = decrypt_secret(secret_key, row.body, "a remembered answer")
    except RuntimeError:
        return True
    return False


def answer(secret_key: str, operator_id: str, key: str, status: int, body: str, headers: dict[str, str]) -> None:
    """Remember the answer of a started key for ``RETENTION``, its body encrypted."""
    now = utcnow()
    sealed = encrypt_secret(secret_key, body) if body else None
    with write_transaction(database_proxy.obj):
        IdempotencyKey.update(state="answered", status=status, body=sealed, headers=json.dumps(headers),
                              expires_at=now + RETENTION).where(
            (IdempotencyKey.operator_id == operator_id) & (IdempotencyKey.idempotency_key == key)
            & (IdempotencyKey.state == "started")).execute()


def forget(operator_id: str, key: str) -> None:
    """A started key whose answer a retry should not get again: the retry runs."""
    with write_transaction(database_proxy.obj):
        IdempotencyKey.delete().where(
            (IdempotencyKey.operator_id == operator_id) & (IdempotencyKey.idempotency_key == key)
            & (IdempotencyKey.state == "started")).execute()


def _delete(operator_id: str, key: str) -> None:
    IdempotencyKey.delete().where(
        (IdempotencyKey.operator_id == operator_id) & (IdempotencyKey.idempotency_key == key)).execute()


def purge_expired(now: dt.datetime | None = None) -> int:
    """Drop up to PURGE_BATCH expired keys (one short transaction); how many went."""
    now = now or utcnow()
    key = peewee.Tuple(IdempotencyKey.operator_id, IdempotencyKey.idempotency_key)
    expired = IdempotencyKey.select(IdempotencyKey.operator_id, IdempotencyKey.idempotency_key).where(
        IdempotencyKey.expires_at <= now).limit(PURGE_BATCH)
    with write_transaction(database_proxy.obj):
        return int(IdempotencyKey.delete().where(key.in_(expired)).execute())
