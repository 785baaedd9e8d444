"""Database connection from a URL: SQLite (WAL) by default, PostgreSQL in production."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect

from .models import database_proxy

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
        db = peewee.SqliteDatabase(str(path), pragmas=SQLITE_PRAGMAS, check_same_thread=False)
    elif parsed.scheme in {"postgres", "postgresql"}:
        db = connect(url.replace("postgres://", "postgresql://", 1))
    else:
        raise ValueError(f"unsupported database URL scheme {parsed.scheme!r}")
    database_proxy.initialize(db)
    return db


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
