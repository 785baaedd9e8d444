"""Numbered schema migrations, applied in order by ``buddo-deploy db upgrade``.

Each module ``NNNN_name.py`` defines ``statements(dialect) -> list[str]`` where
dialect is ``"sqlite"`` or ``"postgres"``. Applied versions are recorded in
``schema_migrations``; a migration and its record commit together.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from types import ModuleType

import peewee

from ..db import is_postgres, write_transaction
from ..models import SchemaMigration, utcnow

_NAME = re.compile(r"^(\d{4})_(\w+)$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    module: ModuleType


def available() -> list[Migration]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        match = _NAME.match(info.name)
        if match:
            module = importlib.import_module(f"{__name__}.{info.name}")
            found.append(Migration(int(match.group(1)), match.group(2), module))
    return sorted(found, key=lambda m: m.version)


def upgrade(db: peewee.Database) -> list[Migration]:
    """Apply every pending migration; return the ones applied."""
    dialect = "postgres" if is_postgres(db) else "sqlite"
    db.connect(reuse_if_open=True)
    db.execute_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    applied = []
    for migration in available():
        with write_transaction(db):
            if is_postgres(db):
                # Two processes upgrading at once must not both apply a migration.
                db.execute_sql("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
            if SchemaMigration.get_or_none(SchemaMigration.version == migration.version):
                continue
            for sql in migration.module.statements(dialect):
                db.execute_sql(sql)
            SchemaMigration.create(version=migration.version, name=migration.name, applied_at=utcnow())
        applied.append(migration)
    return applied
