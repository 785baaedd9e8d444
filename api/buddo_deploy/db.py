"""Database connection from a URL: SQLite (WAL) by default, PostgreSQL in production."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect

from .models import database_proxy
from .settings import make_private

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "foreign_keys": 1,
    "busy_timeout": 10000,
}


def open_database(url: str) -> peewee.Database:
    """Build (not connect) the database for ``url`` and bind the models to it."""
    parsed = urlparse(url)
    db: peewee.Database
    if parsed.scheme == "sqlite":
        path = Path(parsed.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The database holds the audit log and the encrypted env values. SQLite creates
        # its -wal, -shm and -journal files with the database file's mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        make_private(path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")))
        db = peewee.SqliteDatabase(str(path), pragmas=SQLITE_PRAGMAS, check_same_thread=False)
    elif parsed.scheme in {"postgres", "postgresql"}:
        db = connect(url.replace("postgres://", "postgresql://", 1))
    else:
        raise ValueError(f"unsupported database URL scheme {parsed.scheme!r}")
    database_proxy.initialize(db)
    return db


def connect_thread() -> None:
    """This thread's connection (peewee keeps one per thread), opened when it has none yet."""
    database_proxy.obj.connect(reuse_if_open=True)


def is_postgres(db: peewee.Database) -> bool:
    return isinstance(db, peewee.PostgresqlDatabase)


def write_transaction(db: peewee.Database) -> peewee._atomic:
    """A transaction that takes the write lock up front on SQLite.

    A deferred SQLite transaction that reads then writes can fail with SQLITE_BUSY
    when another writer got in between; IMMEDIATE waits for the lock instead.
    """
    if isinstance(db, peewee.SqliteDatabase) and not db.in_transaction():
        return db.atomic("IMMEDIATE")
    return db.atomic()


# PostgreSQL transaction-scoped advisory locks, one key class each (the first argument of
# pg_advisory_xact_lock(class, hashtext(name))); the claim's is a key of its own. The lock order:
# an operator's, its billing account's row, rows of its deployments, a host's lock, then the
# host's enqueue lock and its queued converge's row. Whoever holds a later one takes no earlier
# one (jobqueue.retry_alone locks its deployment's row before the enqueue lock).
CLAIM_LOCK = 74_217_001  # the job claim (one at a time)
OPERATOR_LOCK = 74_217_003  # an operator's limits, counted and taken as one step
OUTPUT_READ_LOCK = 74_217_004  # one queued output read per deployment
ENQUEUE_LOCK = 74_217_005  # a host's enqueues
HOST_LOCK = 74_217_006  # a host's room and ports


def advisory_lock(kind: int, name: str, *, wait: bool = True) -> bool:
    """Lock ``name`` of class ``kind`` until the transaction ends (a no-op on SQLite, whose
    writers run one at a time); without ``wait``, False when another transaction holds it."""
    db = database_proxy.obj
    if not is_postgres(db):
        return True
    if wait:
        db.execute_sql("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (kind, name))
        return True
    return bool(db.execute_sql("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", (kind, name)).fetchone()[0])


# (model, PostgreSQL?) -> lock_row's statement and its parameters (the key's first). Peewee builds a
# statement's text anew at each execution; for the 40 columns of a deployment, at 4 locks a billing
# cycle, that was half of a billing pass (SQLite: 5.6 ms a deployment before, 2.7 ms after).
_LOCK_STATEMENTS: dict[tuple[type[peewee.Model], bool], tuple[str, list[Any]]] = {}


def lock_row(model: type[peewee.Model], ident: Any) -> peewee.Model | None:
    """The row, locked until the transaction ends (SQLite: the write transaction already is)."""
    postgres = is_postgres(database_proxy.obj)
    key = cast("peewee.Field", model._meta.primary_key)
    statement = _LOCK_STATEMENTS.get((model, postgres))
    if statement is None:
        query = model.select().where(key == ident).limit(1)
        query = query.for_update() if postgres else query
        sql, params = query.sql()
        if not params or params[0] != key.db_value(ident):  # a peewee that orders them otherwise: built each time
            return next(iter(query), None)
        statement = _LOCK_STATEMENTS[(model, postgres)] = (sql, params)
    sql, params = statement
    return cast("peewee.Model | None", next(iter(model.raw(sql, key.db_value(ident), *params[1:])), None))

