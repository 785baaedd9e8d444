"""Registry logins: an operator's credentials for a registry host.

Operators are untrusted, so an image is pulled only with its own operator's login for
the image's registry host (or anonymously, without one): the engine asks
``registry_login_for`` with the deployment's operator and image, never by host alone.
The password is write-only: stored Fernet-encrypted with ``BUDDO_SECRET_KEY``, never
returned by the API, logged or written to an audit entry. A login is not bound to a
deployment, so its changes have no audit entry; the log records who changed which
host's login.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable

import peewee

from ..crypto import decrypt_secret, encrypt_secret
from ..db import is_postgres, write_transaction
from ..domain_errors import NotFound
from ..models import RegistryLogin, database_proxy, utcnow
from ..schemas import registry_host
from ..settings import Settings

log = logging.getLogger(__name__)


class RegistryLogins:
    """The API's changes to registry logins; ``registry`` is a validated, lowercase host[:port]."""

    def __init__(self, settings: Settings, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.secret_key = settings.secret_key
        self.clock = clock

    def list_logins(self, operator_id: str) -> list[RegistryLogin]:
        return list(RegistryLogin.select().where(RegistryLogin.operator_id == operator_id)
                    .order_by(RegistryLogin.registry))

    def put(self, operator_id: str, registry: str, username: str, password: str) -> tuple[RegistryLogin, bool]:
        """Create or replace the operator's login for ``registry``; the login and whether it is new."""
        token = encrypt_secret(self.secret_key, password)
        now = self.clock()
        db = database_proxy.obj
        with write_transaction(db):
            login = _locked(operator_id, registry)
            if login is None:
                try:
                    with db.atomic():  # a savepoint: a concurrent create must not poison the transaction
                        login = RegistryLogin.create(
                            id=uuid.uuid4(), operator_id=operator_id, registry=registry, username=username,
                            password_encrypted=token, inserted_at=now, updated_at=now)
                    log.info("registry login for %s created by operator %s", registry, operator_id)
                    return login, True
                except peewee.IntegrityError:
                    login = _locked(operator_id, registry)  # the concurrent create won: replace it
                    if login is None:
                        raise
            login.username = username
            login.password_encrypted = token
            login.updated_at = now
            login.save()
        log.info("registry login for %s replaced by operator %s", registry, operator_id)
        return login, False

    def remove(self, operator_id: str, registry: str) -> None:
        removed = RegistryLogin.delete().where(
            (RegistryLogin.operator_id == operator_id) & (RegistryLogin.registry == registry)).execute()
        if not removed:
            raise NotFound(f"No registry login for {registry}", details={"registry": registry})
        log.info("registry login for %s removed by operator %s", registry, operator_id)


def _locked(operator_id: str, registry: str) -> RegistryLogin | None:
    query = RegistryLogin.select().where(
        (RegistryLogin.operator_id == operator_id) & (RegistryLogin.registry == registry))
    if is_postgres(database_proxy.obj):
        query = query.for_update()
    login: RegistryLogin | None = query.first()
    return login


def logins_of(operator_ids: list[str]) -> dict[tuple[str, str], RegistryLogin]:
    """Every login of these operators, by (operator, registry): one query for a host's deployments."""
    if not operator_ids:
        return {}
    rows = RegistryLogin.select().where(RegistryLogin.operator_id.in_(sorted(set(operator_ids))))
    return {(row.operator_id, row.registry): row for row in rows}


def registry_login_for(operator_id: str, image: str, secret_key: str,
                       known: dict[tuple[str, str], RegistryLogin] | None = None) -> dict[str, str] | None:
    """The operator's login for the registry of ``image``: ``{"registry", "username", "password"}``
    (decrypted), or None (pull anonymously).

    The registry is the text before the image reference's first "/"
    ("127.0.0.1:5000/x/y:tag" -> "127.0.0.1:5000"); a reference without one names no registry.
    Raises RuntimeError (naming the registry, never the secret) when the password cannot be decrypted.
    ``known``: the operators' logins read at once (:func:`logins_of`) instead of one query.
    """
    if "/" not in image:
        return None
    host = registry_host(image)
    if known is not None:
        login = known.get((operator_id, host))
    else:
        login = RegistryLogin.get_or_none((RegistryLogin.operator_id == operator_id)
                                          & (RegistryLogin.registry == host))
    if login is None:
        return None
    password = decrypt_secret(secret_key, login.password_encrypted, f"the registry login for {host}")
    return {"registry": host, "username": login.username, "password": password}
