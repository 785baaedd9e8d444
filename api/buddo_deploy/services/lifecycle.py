"""The deployment lifecycle: every state change the API makes happens here.

Each change writes the desired state, an audit entry and (where the engine has
work to do) a job in one transaction, then returns at once.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import secrets
import string
import time
import uuid
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from typing import Any

import peewee

from .. import jobqueue
from ..auth import Principal
from ..crypto import decrypt_env, encrypt_env
from ..db import HOST_LOCK, OPERATOR_LOCK, advisory_lock, connect_thread, is_postgres, write_transaction
from ..domain_errors import Forbidden, Invalid, LimitReached, NotFound, Unavailable, UpstreamFailed
from ..inventory import ContainerHost, container_host, container_hosts
from ..models import AuditEntry, Deployment, Release, Tier, database_proxy, utcnow
from ..schemas import MAX_ENV_TOTAL, MAX_ENV_VARS, DeploymentCreate, DeploymentUpdate
from ..settings import Settings
from ..vocabulary import DeploymentStatus
from . import domains, output, pages, releases, state
from .billing import Billing
from .placement import free_mb, held
from .tiers import get_tier

_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
_PORT_ATTEMPTS = 8
# Blocks of two ports a placement probes at random in one read (a range this full that
# none is free is read whole).
PORT_PROBES = 16


class _Crowded(Exception):
    """The host a placement chose filled up before its lock was ours: place again, afresh."""


@dataclass(frozen=True)
class Page:
    deployments: list[Deployment]
    next_cursor: str | None


def statuses_reached(keys: Collection[Hashable]) -> set[Hashable]:
    """The check of parked status waits (serving.py): of the ``(deployment id, statuses)``
    keys, those whose deployment has one of its statuses now, or is gone; one query for all."""
    connect_thread()  # the waker's own thread
    db = database_proxy.obj
    ids = sorted({str(key[0]) for key in keys})  # type: ignore[index]
    found: dict[str, str] = {}
    try:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = db.execute_sql(f"SELECT id, status FROM deployments WHERE id IN "  # noqa: S608 - params only
                                  f"({', '.join([db.param] * len(chunk))})", chunk).fetchall()
            found.update((str(row[0]), row[1]) for row in rows)
    except peewee.DatabaseError:
        db.close()  # the next check opens a fresh connection
        raise
    return {key for key in keys
            if str(key[0]) not in found or found[str(key[0])] in key[1]}  # type: ignore[index,operator]


class Lifecycle:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.billing = Billing(settings)
        self._status_sql: str | None = None

    # --- reads -------------------------------------------------------------

    def url_for(self, deployment: Deployment) -> str:
        return f"https://{deployment.subdomain}.{self.settings.base_domain}{self.settings.public_url_suffix}"

    def custom_domain_verification(self, deployment: Deployment) -> dict[str, Any] | None:
        """The DNS records that prove the deployment's custom domain claim (any one of them)."""
        return domains.verification_records(deployment.custom_domain, deployment.custom_domain_token,
                                            f"{deployment.subdomain}.{self.settings.base_domain}")

    def get_owned(self, principal: Principal, deployment_id: uuid.UUID) -> Deployment:
        deployment = Deployment.get_or_none(Deployment.id == deployment_id)
        if deployment is None:
            raise NotFound("Deployment not found", code="deployment_not_found")
        if deployment.operator_id != principal.operator_id:
            raise Forbidden("Deployment belongs to another operator", code="forbidden")
        return deployment

    def status_of(self, principal: Principal, deployment_id: uuid.UUID) -> dict[str, Any]:
        """The status poll, the hottest path: six columns, one statement compiled once."""
        db = database_proxy.obj
        if self._status_sql is None:
            self._status_sql = (
                "SELECT id, operator_id, status, subdomain, health_status, last_health_check "
                f"FROM deployments WHERE id = {db.param}"
            )
        row = db.execute_sql(self._status_sql, (str(deployment_id),)).fetchone()
        if row is None:
            raise NotFound("Deployment not found", code="deployment_not_found")
        if row[1] != principal.operator_id:
            raise Forbidden("Deployment belongs to another operator", code="forbidden")
        return {
            "id": deployment_id,
            "status": row[2],
            "subdomain": row[3],
            "health_status": row[4],
            "last_health_check": Deployment.last_health_check.python_value(row[5]),
        }

    def list_deployments(
        self,
        principal: Principal,
        *,
        limit: int,
        cursor: str | None,
        status: str | None,
        include_destroyed: bool,
    ) -> Page:
        query = (
            Deployment.select(Deployment, Tier)
            .join(Tier)
            .where(Deployment.operator_id == principal.operator_id)
            .order_by(Deployment.inserted_at.desc(), Deployment.id.desc())
        )
        if status is not None:
            query = query.where(Deployment.status == status)
        elif not include_destroyed:
            query = query.where(Deployment.status != "destroyed")
        # Seeks the (operator_id, inserted_at, id) index.
        return Page(*pages.page(query, Deployment, cursor, limit, newest_first=True))

    def audit_log(self, principal: Principal, deployment_id: uuid.UUID, *, limit: int,
                  cursor: str | None) -> tuple[list[AuditEntry], str | None]:
        """A page of the audit log, oldest first; the cursor of the next (newer) page, if any."""
        deployment = self.get_owned(principal, deployment_id)
        query = (AuditEntry.select().where(AuditEntry.deployment == deployment)
                 .order_by(AuditEntry.inserted_at, AuditEntry.id))
        # Seeks the (deployment_id, inserted_at, id) index.
        return pages.page(query, AuditEntry, cursor, limit, newest_first=False)

    # --- changes -----------------------------------------------------------

    def create_deployment(self, principal: Principal, request: DeploymentCreate) -> Deployment:
        tier = self._tier(request.tier)
        if request.custom_domain and not tier.custom_domain_allowed:
            raise Invalid.for_field("custom_domain", f"tier '{tier.slug}' does not allow custom domains",
                                    "custom_domain_not_allowed")
        db = database_proxy.obj
        crowded = False
        for _ in range(_PORT_ATTEMPTS):
            try:
                with write_transaction(db):
                    self._lock_operator(principal)
                    self._check_limits(principal, tier)
                    now = utcnow()
                    # Paid for up front: the whole create rolls back if the first cycle is not paid.
                    billing = self.billing.admit(principal.operator_id, tier, now)
                    if request.custom_domain:
                        # An expired claim of someone else's is released now, not at the next sweep.
                        domains.release_expired_claim(request.custom_domain, self.settings.domain_claim_expiry_s)
                    with db.atomic():  # a savepoint: a lost race must not poison the transaction
                        deployment = self._insert(principal, request, tier, now, billing)
                    self.billing.charge_first_cycle(deployment)
                    state.audit(deployment, "create", "completed", principal.client_id)
                    state.request(deployment, "deploy", None, timeout_s=self._timeout)
                    return deployment
            except _Crowded:
                crowded = True
                time.sleep(random.uniform(0.005, 0.05))  # noqa: S311 - spreads the racers' next looks
                continue
            except peewee.IntegrityError as exc:
                message = str(exc)
                if "custom_domain" in message:
                    raise self._custom_domain_taken() from exc
                if "host_port" in message or "container_name" in message:
                    continue  # another create took the same host port (or name): pick again
                if "subdomain" in message:
                    raise Invalid.for_field("subdomain", "is already taken", "subdomain_taken") from exc
                raise
        if crowded:
            raise Unavailable("The hosts with room for this tier are busy placing other deployments; try again",
                              code="capacity_exhausted", details={"tier": tier.slug, "memory_mb": tier.memory_limit_mb},
                              headers={"Retry-After": "1"})
        raise Unavailable("No free host port, try again", code="capacity_exhausted")

    def restart(self, principal: Principal, deployment_id: uuid.UUID) -> Deployment:
        """A new container from the image as the tag is now, started beside the serving one."""
        with write_transaction(database_proxy.obj):
            deployment = self._live(principal, deployment_id, "restart")
            billing = self.billing.on_restart(deployment, utcnow())
            return state.change(deployment, "restart", principal.client_id, timeout_s=self._timeout,
                                desired_state="running", revision=deployment.revision + 1,
                                pull_revision=deployment.revision + 1, pinned_digest=None, **billing)

    def list_releases(self, principal: Principal, deployment_id: uuid.UUID, *, limit: int,
                      before: int | None) -> tuple[list[Release], int | None, set[str]]:
        """Newest first; the next page starts below the last number of this one. Also the digests
        whose images the host keeps (one query for the page, not one per release)."""
        deployment = self.get_owned(principal, deployment_id)
        query = Release.select().where(Release.deployment == deployment.id).order_by(Release.number.desc())
        if before is not None:
            query = query.where(Release.number < before)
        rows = list(query.limit(limit + 1))
        kept = releases.kept(deployment.id, self.settings.releases_kept)
        return rows[:limit], (rows[limit - 1].number if len(rows) > limit else None), kept

    def app_output(self, principal: Principal, deployment_id: uuid.UUID, *, tail: int,
                   since: dt.datetime | None) -> output.Output:
        """What the container printed, from the latest read on its host; never waits for a read
        (one is queued when none is fresh or under way)."""
        deployment = self.get_owned(principal, deployment_id)
        if deployment.desired_state == "absent":
            raise Invalid("A destroyed deployment has no output", code="deployment_destroyed",
                          details={"status": deployment.status})
        max_age = self.settings.output_max_age_s
        found = output.current(deployment, tail=tail, since=since, max_age_s=max_age)
        if found.collected_at is None and found.failed is not None:
            wait = output.retry_after_s(found.failed, max_age)
            raise UpstreamFailed(f"Could not read the app's output: {found.failed.last_error or 'the run failed'}; "
                                 f"the next read is queued by a request in {wait} s or later", code="output_failed",
                                 details={"job_id": found.failed.id, "retry_after": wait},
                                 headers={"Retry-After": str(wait)})
        return found

    def release_kept(self, release: Release) -> bool:
        return release.image_digest in releases.kept(release.deployment_id, self.settings.releases_kept)

    def rollback(self, principal: Principal, deployment_id: uuid.UUID, number: int | None) -> Deployment:
        """Run a release's image again, by its digest, replaced beside the serving container like a restart."""
        with write_transaction(database_proxy.obj):
            deployment = self._live(principal, deployment_id, "roll back")
            newest = releases.latest(deployment.id)
            if number is None:
                if newest is None or newest.number < 2:
                    raise Invalid.for_field("release", "there is no previous release to roll back to",
                                            "no_previous_release")
                number = newest.number - 1
            target = Release.get_or_none((Release.deployment == deployment.id) & (Release.number == number))
            if target is None:
                raise Invalid.for_field("release", f"release {number} does not exist", "release_not_found")
            if not self.release_kept(target):
                raise Invalid.for_field(
                    "release", f"the image of release {number} is no longer kept on the host (only the newest "
                    f"{self.settings.releases_kept} releases' images are)", "release_image_pruned")
            billing = self.billing.on_restart(deployment, utcnow())
            return state.change(deployment, "deploy", principal.client_id, timeout_s=self._timeout,
                                details={"rollback_to": number, "image_digest": target.image_digest},
                                desired_state="running", revision=deployment.revision + 1,
                                container_image=target.image, pinned_digest=target.image_digest,
                                **releases.restores(target), **billing)

    def update(self, principal: Principal, deployment_id: uuid.UUID, request: DeploymentUpdate) -> Deployment:
        """Change a running deployment in place (image, env, port, tier): the same id, subdomain and
        releases; a new container replaces the serving one as a restart's does, health-gated, and
        its success makes a new release. A request that changes nothing runs nothing."""
        with write_transaction(database_proxy.obj):
            if request.tier is not None:
                self._lock_operator(principal)  # a tier change counts and places as a create does
                self.get_owned(principal, deployment_id)
                self.billing.lock_account(principal.operator_id, utcnow())  # before the deployment's lock
            deployment = self._live(principal, deployment_id, "update")
            now = utcnow()
            billing = self.billing.on_restart(deployment, now)  # a suspended deployment waits for payment
            if deployment.desired_state != "running":
                raise Invalid(f"The deployment is {deployment.desired_state}: restart it, then change it",
                              code="deployment_stopped", details={"status": deployment.status})
            desired: dict[str, Any] = {}
            changed: list[str] = []
            details: dict[str, Any] = {}
            if request.image is not None and (request.image != deployment.container_image
                                              or deployment.pinned_digest):
                desired |= {"container_image": request.image, "pinned_digest": None}
                changed.append("image")
                details["image"] = request.image
            if request.env_vars is not None:
                env = decrypt_env(self.settings.secret_key, deployment.env_vars_encrypted)
                merged = {k: v for k, v in {**env, **request.env_vars}.items() if v is not None}
                if merged != env:
                    self._check_env(merged)
                    desired |= {"env_var_names": json.dumps(sorted(merged)),
                                "env_vars_encrypted": encrypt_env(self.settings.secret_key, merged) if merged else None}
                    changed.append("env_vars")
                    details["env_vars"] = {"set": sorted(k for k, v in merged.items() if env.get(k) != v),
                                           "unset": sorted(set(env) - set(merged))}
            if request.port is not None and request.port != deployment.port:
                desired["port"] = request.port
                changed.append("port")
                details["port"] = request.port
            if request.health_check is not None:
                check = request.health_check.model_dump()
                if check != (json.loads(deployment.health_check) if deployment.health_check else None):
                    desired["health_check"] = json.dumps(check)
                    changed.append("health_check")
                    details["health_check"] = check
            if request.tier is not None and request.tier != deployment.tier.slug:
                tier = self._tier(request.tier)
                desired |= self._change_tier(principal, deployment, tier, now)
                changed.append("tier")
                details["tier"] = {"from": deployment.tier.slug, "to": tier.slug}
            if not changed:
                return deployment
            revision = deployment.revision + 1
            if "image" in changed:
                desired["pull_revision"] = revision  # the new image's tag as it is now
            return state.change(deployment, "update", principal.client_id, timeout_s=self._timeout,
                                details={"changed": changed, **details},
                                **{**billing, **desired, "desired_state": "running", "revision": revision})

    def _check_env(self, env: dict[str, str]) -> None:
        if len(env) > MAX_ENV_VARS:
            raise Invalid.for_field("env_vars", f"would hold {len(env)} variables; at most {MAX_ENV_VARS}",
                                    "validation_failed")
        if sum(len(k) + len(v) for k, v in env.items()) > MAX_ENV_TOTAL:
            raise Invalid.for_field("env_vars", f"total size would exceed {MAX_ENV_TOTAL} bytes", "validation_failed")

    def _change_tier(self, principal: Principal, deployment: Deployment, tier: Tier,
                     now: dt.datetime) -> dict[str, Any]:
        """What moving ``deployment`` to ``tier`` changes, after the checks a create makes (the
        tier's limits, room on its host) and the custom domain the new tier must allow; the
        billing starts a new cycle at the new price now, crediting the unused part of the old one."""
        if deployment.custom_domain and not tier.custom_domain_allowed:
            raise Invalid.for_field("tier", f"tier '{tier.slug}' does not allow custom domains, and this "
                                    f"deployment has {deployment.custom_domain}; remove it first",
                                    "custom_domain_not_allowed")
        self._check_tier_limit(principal, tier)
        advisory_lock(HOST_LOCK, deployment.host, wait=True)  # its room is counted and taken as one step
        host = container_host(self.settings.inventory, deployment.host, self.settings.host_port_range)
        if host is None or free_mb(host.memory_mb, host.name, besides=deployment.id) < tier.memory_limit_mb:
            raise Unavailable(f"The deployment's host has no room for tier '{tier.slug}' ({tier.memory_limit_mb} MB)",
                              code="capacity_exhausted", details={"tier": tier.slug, "memory_mb": tier.memory_limit_mb})
        return {"tier": tier, "memory_limit_mb": tier.memory_limit_mb,
                "cpu_limit_millicores": tier.cpu_limit_millicores,
                **self.billing.on_tier_change(deployment, tier, now)}

    def stop(self, principal: Principal, deployment_id: uuid.UUID) -> Deployment:
        with write_transaction(database_proxy.obj):
            deployment = self._live(principal, deployment_id, "stop")
            if deployment.billing_status == "suspended":
                # Now the operator's stop: a payment must not start it again.
                return state.change(deployment, "stop", principal.client_id, timeout_s=self._timeout,
                                    desired_state="stopped", **self.billing.on_stop(deployment))
            if deployment.desired_state == "stopped":
                if deployment.observed_generation < deployment.generation:
                    # Asked already and still converging (or backing off after a failure): now.
                    jobqueue.enqueue_converge(deployment, timeout_s=self._timeout)
                return deployment
            return state.change(deployment, "stop", principal.client_id, timeout_s=self._timeout,
                                desired_state="stopped")

    def destroy(self, principal: Principal, deployment_id: uuid.UUID) -> Deployment:
        """The subdomain is free at once; ports and the custom domain once the teardown converged."""
        with write_transaction(database_proxy.obj):
            deployment = self._live(principal, deployment_id, "destroy")
            output.forget(deployment.id)
            return state.change(deployment, "destroy", principal.client_id, timeout_s=self._timeout,
                                desired_state="absent", destroyed_at=utcnow(), **self.billing.on_destroy(deployment))

    # --- helpers -----------------------------------------------------------

    def _custom_domain_taken(self) -> Invalid:
        # The same words whoever holds it and however: nothing of another tenant's claim shows.
        expiry = f"{self.settings.domain_claim_expiry_s / 3600:g} h"
        return Invalid.for_field(
            "custom_domain", f"is claimed by another deployment; a claim its DNS does not prove (a CNAME to "
            f"that deployment or its TXT record at {domains.CHALLENGE_LABEL}.<domain>) is released {expiry} after "
            "it was made or last proved", "custom_domain_taken")

    @property
    def _timeout(self) -> int:
        return self.settings.job_timeout_s

    def _live(self, principal: Principal, deployment_id: uuid.UUID, action: str) -> Deployment:
        self.get_owned(principal, deployment_id)
        deployment = state.locked(deployment_id)  # re-read under the row lock
        assert deployment is not None  # rows are never deleted
        if deployment.desired_state == "absent":
            raise Invalid(
                f"Cannot {action} a destroyed deployment", code="deployment_destroyed",
                details={"status": deployment.status},
            )
        return deployment

    @staticmethod
    def _lock_operator(principal: Principal) -> None:
        """Count an operator's deployments and add one as one step, or concurrent creates all
        pass the same count. The room and ports of a host are taken under its own lock
        (:meth:`_place`), so creates on different hosts run side by side.

        SQLite: write_transaction is BEGIN IMMEDIATE, so writers already run one at a time.
        PostgreSQL: READ COMMITTED lets two transactions count before either inserts, so
        transaction-scoped advisory locks order them; each count then sees the previous
        change committed. The lock order is db.py's.
        """
        advisory_lock(OPERATOR_LOCK, principal.operator_id, wait=True)

    @staticmethod
    def _tier(slug: str) -> Tier:
        tier = get_tier(slug)
        if tier is None:
            raise NotFound(f"Tier '{slug}' not found", code="tier_not_found",
                           details=[{"field": "tier", "message": "unknown tier"}])
        return tier

    @staticmethod
    def _live_of(principal: Principal) -> peewee.ModelSelect[Deployment]:
        return Deployment.select().where(
            (Deployment.operator_id == principal.operator_id) & (Deployment.status != DeploymentStatus.DESTROYED))

    def _check_tier_limit(self, principal: Principal, tier: Tier) -> None:
        """The operator may hold one more deployment of ``tier`` (a create, a tier change)."""
        if self._live_of(principal).where(Deployment.tier == tier).count() >= tier.max_deployments:
            raise LimitReached(
                f"Deployment limit reached for tier '{tier.slug}' ({tier.max_deployments})",
                code="tier_deployment_limit",
                details={"tier": tier.slug, "limit": tier.max_deployments},
            )

    def _check_limits(self, principal: Principal, tier: Tier) -> None:
        self._check_tier_limit(principal, tier)
        total = self._live_of(principal).count()
        if total >= self.settings.max_deployments_per_account:
            raise LimitReached(
                f"Deployment limit reached for this account ({self.settings.max_deployments_per_account})",
                code="account_deployment_limit",
                details={"limit": self.settings.max_deployments_per_account},
            )

    def _place(self, tier: Tier) -> tuple[str, int]:
        """The host with the most free memory that fits the tier (ties: fewest deployments, then name),
        and a free block of two ports there (the second one is for restarts).

        Everything a host holds counts (stopped deployments too: they may start again), until
        its teardown has converged. The database sums what each host holds; ports are probed
        (:meth:`_free_port`), not read. The chosen host is taken under its own lock: one whose
        lock another create holds gives way to the next that fits, so concurrent creates spread
        over the hosts instead of queueing behind one. Raises _Crowded when hosts filled up
        meanwhile (the caller places again, afresh). Call under _lock_operator.
        """
        hosts = container_hosts(self.settings.inventory, self.settings.host_port_range)
        used = held([h.name for h in hosts])
        ranked = sorted(hosts, key=lambda h: (-(h.memory_mb - used.get(h.name, (0, 0))[0]),
                                              used.get(h.name, (0, 0))[1], h.name))
        fitting = [h for h in ranked if h.memory_mb - used.get(h.name, (0, 0))[0] >= tier.memory_limit_mb]
        if not fitting:
            raise Unavailable(
                f"No container host has room for a '{tier.slug}' deployment ({tier.memory_limit_mb} MB); "
                "try again later",
                code="capacity_exhausted",
                details={"tier": tier.slug, "memory_mb": tier.memory_limit_mb},
            )
        busy: list[ContainerHost] = []
        taken = crowded = False
        for host in fitting:
            if not advisory_lock(HOST_LOCK, host.name, wait=False):
                busy.append(host)  # another create is placing there
                continue
            taken = True
            if not self._has_room(host, tier):
                crowded = True  # another create filled it after our first look
                continue
            port = self._free_port(host)
            if port is not None:
                return host.name, port
        if busy and not taken:  # every host that fits is being placed on: wait for the best one
            advisory_lock(HOST_LOCK, busy[0].name, wait=True)
            port = self._free_port(busy[0]) if self._has_room(busy[0], tier) else None
            if port is not None:
                return busy[0].name, port
        if busy or crowded:
            raise _Crowded(tier.slug)  # hosts filled up while we looked: look again, afresh
        raise Unavailable(
            f"No container host with room for a '{tier.slug}' deployment has a free port; try again later",
            code="capacity_exhausted", details={"tier": tier.slug, "memory_mb": tier.memory_limit_mb})

    def _has_room(self, host: ContainerHost, tier: Tier) -> bool:
        """Under the host's lock on PostgreSQL, whose first look may be stale by now (on SQLite
        nothing could change since)."""
        if not is_postgres(database_proxy.obj):
            return True
        return free_mb(host.memory_mb, host.name) >= tier.memory_limit_mb

    @staticmethod
    def _free_port(host: ContainerHost) -> int | None:
        """A free block of two ports on the host, at random (it spreads concurrent creates): a
        few blocks are probed in one indexed read; a range so full that none of them is free
        is read whole. None when the range is full."""
        low, high = host.port_range
        blocks = range(low, high, 2)
        held = (Deployment.host == host.name) & Deployment.released_at.is_null()

        def taken(ports: list[int]) -> set[int]:
            """Of the ports, those a held block covers (a block at p holds p and p + 1)."""
            near = sorted({q for p in ports for q in (p - 1, p)})
            return {p for row in Deployment.select(Deployment.host_port).where(held & Deployment.host_port.in_(near))
                    for p in (row.host_port, row.host_port + 1)}

        probes = random.sample(blocks, min(PORT_PROBES, len(blocks)))
        busy = taken([q for p in probes for q in (p, p + 1)])
        free = [p for p in probes if p not in busy and p + 1 not in busy]
        if not free and len(probes) < len(blocks):
            busy = {p for row in Deployment.select(Deployment.host_port).where(held)
                    for p in (row.host_port, row.host_port + 1)}
            free = [p for p in blocks if p not in busy and p + 1 not in busy]
        return random.choice(free) if free else None  # noqa: S311 - spreads concurrent creates, not a secret

    def _insert(self, principal: Principal, request: DeploymentCreate, tier: Tier, now: dt.datetime,
                billing: dict[str, Any]) -> Deployment:
        host, host_port = self._place(tier)
        suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(6))
        return Deployment.create(
            id=uuid.uuid4(),
            operator_id=principal.operator_id,
            app_id=principal.client_id,
            tier=tier,
            container_name=f"{request.subdomain}-{suffix}",
            container_image=request.image,
            subdomain=request.subdomain,
            custom_domain=request.custom_domain,
            custom_domain_status="pending" if request.custom_domain else None,
            custom_domain_token=domains.new_token() if request.custom_domain else None,
            custom_domain_unverified_since=now if request.custom_domain else None,
            port=request.port,
            host=host,
            host_port=host_port,
            status="pending",
            health_status="unknown",
            billing_status="active",
            # billing_cycle and next_billing_at: cycle 0 starts (and is paid) now, with the create.
            **billing,
            memory_limit_mb=tier.memory_limit_mb,
            cpu_limit_millicores=tier.cpu_limit_millicores,
            env_var_names=json.dumps(sorted(request.env_vars)),
            env_vars_encrypted=encrypt_env(self.settings.secret_key, request.env_vars) if request.env_vars else None,
            health_check=request.health_check.model_dump_json() if request.health_check is not None else None,
            inserted_at=now,
            updated_at=now,
            desired_state="running",
            generation=1,
            revision=1,
        )
