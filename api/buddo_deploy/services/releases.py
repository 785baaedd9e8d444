"""Releases: what each successful deploy, restart, update or rollback of a deployment ran.

A release is recorded when a converge that an operator asked for (create, deploy,
restart, update, rollback; not an automatic heal) completes with the container running.
It keeps the image (and the digest that ran), the env and the port: a rollback restores
all three.
Rollback pins the deployment to a release's digest; the images of the newest
``releases_kept`` releases stay on the host (the engine tags them) so a rollback to
one of them never needs the registry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any, cast

import peewee

from ..models import AuditEntry, Deployment, Release, utcnow
from ..settings import RELEASE_HISTORY

# Heals restart the same image: not a release of anything new.
_AUTOMATIC = {"health", "container_exited", "drift"}
RELEASE_ACTIONS = ("deploy", "restart", "update")


def by_digest(image: str, digest: str) -> str:
    """``repository@digest`` of an image reference (its tag and any digest dropped)."""
    repository = image.split("@", 1)[0]
    slash, colon = repository.rfind("/"), repository.rfind(":")
    if colon > slash:  # a tag, not a registry's port
        repository = repository[:colon]
    return f"{repository}@{digest}"


def history(deployment_id: Any) -> list[str]:
    """Digests of the newest releases (newest first), as the desired-state document lists them."""
    rows = (Release.select(Release.image_digest).where(Release.deployment == deployment_id)
            .order_by(Release.number.desc()).limit(RELEASE_HISTORY))
    return [r.image_digest for r in rows]


def histories(deployment_ids: list[Any]) -> dict[str, list[str]]:
    """:func:`history` of many deployments in one query (a reconcile's whole host), by id."""
    if not deployment_ids:
        return {}
    rank = peewee.fn.ROW_NUMBER().over(partition_by=[Release.deployment], order_by=[Release.number.desc()])
    ranked = (Release.select(Release.deployment, Release.image_digest, Release.number, rank.alias("rank"))
              .where(Release.deployment.in_(deployment_ids))).alias("ranked")
    newest = (Release.select(ranked.c.deployment_id, ranked.c.image_digest).from_(ranked)
              .where(ranked.c.rank <= RELEASE_HISTORY).order_by(ranked.c.deployment_id, ranked.c.number.desc()))
    found: dict[str, list[str]] = {str(ident): [] for ident in deployment_ids}
    for deployment_id, digest in cast(Iterable[tuple[Any, str]], newest.tuples()):
        found.setdefault(str(uuid.UUID(str(deployment_id))), []).append(digest)
    return found


def kept(deployment_id: Any, count: int) -> set[str]:
    """Digests whose images the host keeps: those of the newest ``count`` releases."""
    return set(history(deployment_id)[:count])


def latest(deployment_id: Any) -> Release | None:
    found: Release | None = (Release.select().where(Release.deployment == deployment_id)
                             .order_by(Release.number.desc()).first())
    return found


def releasing(entries: list[AuditEntry]) -> AuditEntry | None:
    """The newest entry among those a converge completes that makes a release, if any."""
    for entry in reversed(entries):
        details = json.loads(entry.details) if entry.details else {}
        if entry.action in RELEASE_ACTIONS and details.get("reason") not in _AUTOMATIC:
            return entry
    return None


def record(d: Deployment, entry: AuditEntry, digest: str, generation: int, *, pinned: bool) -> Release:
    """A new release of the running container (call in the transaction that records the outcome).

    ``pinned``: the container was run by digest (a rollback), not by the tag.
    """
    previous = latest(d.id)
    details = json.loads(entry.details) if entry.details else {}
    rollback_of = details.get("rollback_to")
    return Release.create(
        deployment=d.id, number=(previous.number if previous else 0) + 1, image=d.container_image,
        image_digest=digest, pinned=pinned,
        rollback_of=rollback_of if isinstance(rollback_of, int) else None,
        initiated_by=entry.initiated_by or d.app_id, generation=generation, created_at=utcnow(),
        env_vars_encrypted=d.env_vars_encrypted, env_var_names=d.env_var_names, port=d.port,
        health_check=d.health_check,
    )


def restores(release: Release) -> dict[str, Any]:
    """What a rollback to ``release`` sets besides its image: its env, port and health check (none
    of an older release, made before releases kept them: the current ones stay)."""
    restored: dict[str, Any] = {}
    if release.env_var_names is not None:
        restored |= {"env_vars_encrypted": release.env_vars_encrypted, "env_var_names": release.env_var_names}
    if release.port is not None:  # kept since migration 0020, with the health check (0021)
        restored |= {"port": release.port, "health_check": release.health_check}
    return restored

