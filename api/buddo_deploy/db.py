"""Database connection from a URL: SQLite (WAL) by default, PostgreSQL in production."""

from __future__ import annotations

import os
from pathlib import Path
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
