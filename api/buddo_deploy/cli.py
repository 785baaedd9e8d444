"""`buddo-deploy` command line: serve, db upgrade, token, worker, reconcile, desired, billing, prune."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import socket
import sys
import time
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import peewee

from . import metrics
from .inventory import InventoryError, container_hosts
from .models import database_proxy
from .settings import Settings, SettingsError


class UsageError(Exception):
    """Something the user can fix; printed as one line, no traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line that names the fix, instead of argparse's usage block.
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive_int(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {value!r}")
    return int(value)


def _whole_days(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 6:
        raise argparse.ArgumentTypeError(f"must be a whole number of days, 0 or more, got {value!r}")
    return int(value)


def _hours(value: str) -> float:
    try:
        hours = float(value)
    except ValueError:
        hours = math.nan
    if not 0 < hours <= 24 * 366:
        raise argparse.ArgumentTypeError(f"must be a number of hours above 0 and at most 8784, got {value!r}")
    return hours


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, got {value!r}")
    return seconds


def _safe_url(url: str) -> str:
    """The database URL without its password, fit for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}"))


def _check_database(settings: Settings, *, schema: bool) -> None:
    """Fail with one line when the database cannot be reached (or, with ``schema``, is not migrated)."""
    from .db import open_database
    from .migrations import available
    from .models import SchemaMigration

    try:
        db = open_database(settings.database_url)
    except ValueError as exc:  # an unsupported scheme
        raise UsageError(f"BUDDO_DATABASE_URL: {exc} (use sqlite:///PATH or postgresql://...)") from exc
    except OSError as exc:  # the SQLite file's directory cannot be created
        raise UsageError(f"BUDDO_DATABASE_URL: cannot create {exc.filename}: {exc.strerror}") from exc
    try:
        db.connect(reuse_if_open=True)
        if schema:
            applied = ({m.version for m in SchemaMigration.select(SchemaMigration.version)}
                       if db.table_exists("schema_migrations") else set())
            if any(m.version not in applied for m in available()):
                raise UsageError("the database schema is not current: run `buddo-deploy db upgrade` first")
    except (peewee.OperationalError, peewee.InterfaceError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UsageError(f"cannot reach the database {_safe_url(settings.database_url)}: {reason}; "
                         "check BUDDO_DATABASE_URL and that the server runs") from exc
    finally:
        db.close()


def _upgrade(settings: Settings) -> None:
    from .db import open_database
    from .migrations import upgrade
    from .services.tiers import sync_tiers

    db = open_database(settings.database_url)
    applied = upgrade(db)
    for migration in applied:
        print(f"applied migration {migration.version:04d}_{migration.name}")
    changed = sync_tiers(settings.tiers_file)
    print(f"database is current ({len(applied)} migration(s) applied, {changed} tier(s) synced)")
    db.close()


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    _upgrade(settings)
    # Before gunicorn: its workers inherit the directory (PROMETHEUS_MULTIPROC_DIR) and find
    # no files of the processes of an earlier run.
    metrics.sweep(metrics.prepare(settings.var_dir))
    argv = [
        sys.executable, "-m", "gunicorn", "buddo_deploy.wsgi:app",
        "--config", "python:buddo_deploy.gunicorn_conf",
        "--bind", args.bind, "--workers", str(args.workers), "--threads", str(args.threads),
        "--access-logfile", "-", "--error-logfile", "-",
    ]
    os.execv(sys.executable, argv)  # noqa: S606 - replace this process with gunicorn


def _token(settings: Settings, args: argparse.Namespace) -> None:
    from .auth import mint_token

    if settings.jwt_jwks_url:
        raise UsageError("BUDDO_JWT_JWKS_URL is set: tokens come from its identity provider (this command mints "
                         "HS256 tokens with BUDDO_JWT_SECRET, which that API does not accept)")
    print(mint_token(settings, args.operator, client_id=args.client_id, scope=args.scope,
                     ttl=dt.timedelta(hours=args.hours)))


def _print_report(reports: list[Any], as_json: bool, dry_run: bool) -> None:
    if as_json:
        print(json.dumps({"dry_run": dry_run, "hosts": [r.as_dict() for r in reports]}, indent=2))
        return
    verb = "would repair" if dry_run else "repaired"
    for report in reports:
        drifted = [d for d in report.deployments if d["drift"]]
        failed = [d for d in report.deployments if not d["ok"]]
        state = "converged" if report.converged else "NOT converged"
        print(f"{report.host}: {state}; {len(report.deployments)} deployment(s) checked, "
              f"{len(drifted)} drifted, {len(failed)} failed")
        if not report.ok:
            print(f"  the run failed: {report.message}")
        for d in drifted:
            outcome = "ok" if d["ok"] else f"FAILED: {d['message']}"
            print(f"  {d['subdomain']} ({d['state']}): {verb} {', '.join(d['drift'])} -> {outcome}")
        if report.orphans:
            print(f"  orphans {'to remove' if dry_run else 'removed'}: {', '.join(report.orphans)}")
        if report.unchecked:
            print(f"  could not check (nothing changed): {', '.join(report.unchecked)}")
        if report.suspects:
            print(f"  left alone, retried alone after a timeout (suspects): {', '.join(report.suspects)}")


def _count_into(settings: Settings) -> bool:
    """Count into the platform's metrics when this user may (cron may run as another user than the API)."""
    try:
        directory = metrics.prepare(settings.var_dir)
    except OSError as exc:
        logging.getLogger(__name__).warning("reconcile not counted in the metrics: %s", exc)
        return False
    if not os.access(directory, os.W_OK | os.X_OK):
        logging.getLogger(__name__).warning("reconcile not counted in the metrics: %s is not writable", directory)
        return False
    return True


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    """One reconcile per host, under the host's lock, run by this process."""
    from . import jobqueue
    from .db import open_database, write_transaction
    from .runner import prewarm
    from .services import engine
    from .tasks import ReconcileTask

    open_database(settings.database_url)
    counting = _count_into(settings)
    owner = f"cli:{socket.gethostname()}:{os.getpid()}"
    lease = settings.job_lease_s
    reports = []
    every = engine.hosts(h.name for h in container_hosts(settings.inventory, settings.host_port_range))
    hosts = [args.host] if args.host else every
    if len(hosts) > 1:  # one run per host: the later ones start warm
        prewarm(settings.ansible_strategy)
    for host in hosts:
        with write_transaction(database_proxy.obj):
            job = jobqueue.enqueue_reconcile(host, timeout_s=settings.job_timeout_s, reserved_for=owner,
                                             lease_s=lease)
        assert job is not None
        deadline = time.monotonic() + args.wait
        try:
            while (claimed := jobqueue.claim(owner, lease, job_id=job.id)) is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{host}: the host stayed busy for {args.wait:g} s; nothing was checked")
                jobqueue.hold(job, owner, lease)
                time.sleep(0.5)
        finally:
            jobqueue.abandon(job, owner, "the reconcile never started")
        reports.append(ReconcileTask(settings, owner, check=args.dry_run, count=counting).run(claimed))
    _print_report(reports, args.json, args.dry_run)
    if not all(r.converged for r in reports):
        return 1
    drift = any(d["drift"] for r in reports for d in r.deployments) or any(r.orphans for r in reports)
    return 3 if args.dry_run and drift else 0


def _desired(settings: Settings, args: argparse.Namespace) -> int:
    """The desired-state document of a host, for ansible-playbook -e @file."""
    from .db import open_database
    from .services import engine

    open_database(settings.database_url)
    host = args.host or settings.default_host
    items, known, rows = engine.reconcile_scope(host)
    document: dict[str, Any] = engine.converge_variables(items, known, hosts=[host]) | {
        "converge_instance": settings.instance, "converge_releases_kept": settings.releases_kept}
    for path, variable, values in ((args.env_file, "converge_env_file", engine.env_values),
                                   (args.registry_auth_file, "converge_registry_auth_file", engine.registry_auths)):
        if not path:
            continue
        try:
            secrets = values(items, rows, settings.secret_key)
        except RuntimeError as exc:  # values encrypted under another BUDDO_SECRET_KEY
            raise UsageError(f"{exc}; check BUDDO_SECRET_KEY") from exc
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as handle:
            json.dump(secrets, handle)
        document[variable] = os.path.abspath(path)
    # Every string as {"__ansible_unsafe": ...}: `-e @file` is a trusted source to Ansible, and a plain string
    # holding "{{ ... }}" (an operator's health path) would be a template run on the controller.
    from .runner import unsafe_json

    print(unsafe_json(document, indent=2))
    return 0


def _billing(settings: Settings, args: argparse.Namespace) -> int:
    from .db import open_database
    from .domain_errors import DomainError
    from .services.billing import Billing, new_reference

    open_database(settings.database_url)
    billing = Billing(settings)
    if args.action == "run":
        report = billing.run_pass()
        if not settings.billing_enabled:
            print("billing is disabled (BUDDO_BILLING_ENABLED=false): nothing charged")
        print(json.dumps({"cycles_started": report.started, "cycles_paid": report.paid,
                          "suspended": report.suspended, "reactivated": report.reactivated,
                          "failed": report.failed}, indent=2))
        return 1 if report.failed else 0
    track, amount = ("buddo_points", args.points) if args.points is not None else ("bitcoin", args.sats)
    try:
        credit = billing.credit(args.operator, track, amount, args.reference or new_reference(), source="cli")
    except DomainError as exc:
        print(f"buddo-deploy billing: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps({"reference": credit.entry.reference, "replayed": credit.replayed,
                      "points_balance": credit.points_balance, "sats_balance": credit.sats_balance,
                      "settled": credit.settled, "reactivated": credit.reactivated}, indent=2))
    return 0


def _prune(settings: Settings, args: argparse.Namespace) -> int:
    from .db import open_database
    from .services import retention

    open_database(settings.database_url)
    days = settings.retention_days if args.days is None else args.days
    report = retention.prune(days)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    elif report.cutoff is None:
        print("retention is off (0 days: BUDDO_RETENTION_DAYS or --days): nothing pruned")
    else:
        by_action = ", ".join(f"{action} {n}" for action, n in sorted(report.jobs.items()))
        print(f"pruned {report.jobs_removed} job(s){f' ({by_action})' if by_action else ''} and {report.events} "
              f"event(s) finished before {report.cutoff.isoformat(timespec='seconds')}Z ({days} days; output jobs "
              f"after 1 day), in {report.transactions} transaction(s)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="buddo-deploy")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="migrate, then run the API under gunicorn")
    serve.add_argument("--bind", default=os.environ.get("BUDDO_BIND", "127.0.0.1:8000"))
    # A string default goes through `type` too, so a bad BUDDO_API_WORKERS is a usage error.
    serve.add_argument("--workers", type=_positive_int, default=os.environ.get("BUDDO_API_WORKERS", "2"),
                       help="gunicorn workers (default: BUDDO_API_WORKERS or 2)")
    serve.add_argument("--threads", type=_positive_int, default=os.environ.get("BUDDO_API_THREADS", "8"),
                       help="request threads per worker (default: BUDDO_API_THREADS or 8)")
    db = sub.add_parser("db", help="database commands")
    db.add_argument("action", choices=["upgrade"])
    token = sub.add_parser("token", help="mint a local access token (HS256, embedded default)")
    token.add_argument("--operator", required=True, help="the operator id (token subject)")
    token.add_argument("--client-id", default=None, help="OAuth client id (the deployment's app_id)")
    token.add_argument("--scope", default="deploy:manage")
    token.add_argument("--hours", type=_hours, default=12.0)
    worker = sub.add_parser("worker", help="run jobs through ansible-runner")
    worker.add_argument("--once", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--concurrency", type=_positive_int, default=os.environ.get("BUDDO_WORKER_CONCURRENCY", "2"),
                        help="job runners (default: BUDDO_WORKER_CONCURRENCY or 2)")
    reconcile = sub.add_parser("reconcile", help="repair the drift between the desired state and the hosts")
    reconcile.add_argument("--host", help="one container host (default: every host)")
    reconcile.add_argument("--dry-run", action="store_true", help="check mode: report the drift, change nothing")
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    reconcile.add_argument("--wait", type=_seconds, default=600.0, help="seconds to wait for a busy host")
    desired = sub.add_parser("desired", help="print a host's desired-state document (-e @file for ansible-playbook)")
    desired.add_argument("--host", help="the container host (default: BUDDO_DEFAULT_HOST)")
    desired.add_argument("--env-file", help="also write the env values there (0600) and point the document at it")
    desired.add_argument("--registry-auth-file",
                         help="also write the operators' registry logins there (0600) and point the document at it")
    billing = sub.add_parser("billing", help="credit an account, or run the billing clock once")
    billing_sub = billing.add_subparsers(dest="action", required=True)
    billing_sub.add_parser("run", help="start every due cycle and suspend what lapsed, now")
    credit = billing_sub.add_parser("credit", help="credit an operator's account (idempotent by --reference)")
    credit.add_argument("--operator", required=True, help="the operator id (token subject)")
    amount = credit.add_mutually_exclusive_group(required=True)
    amount.add_argument("--points", type=int, help="Buddo points to credit")
    amount.add_argument("--sats", type=int, help="satoshis to credit")
    credit.add_argument("--reference", help="the payment's id (default: a new one); a repeated one credits nothing")
    prune = sub.add_parser("prune", help="remove finished jobs and their events older than BUDDO_RETENTION_DAYS")
    prune.add_argument("--days", type=_whole_days, default=None,
                       help="prune what finished this many days ago or earlier (default: BUDDO_RETENTION_DAYS; "
                            "0: nothing)")
    prune.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.command == "token":
        _token(settings, args)
        return 0
    if args.command in {"serve", "worker", "reconcile"}:
        try:
            container_hosts(settings.inventory, settings.host_port_range)
        except InventoryError as exc:
            raise UsageError(f"cannot use the inventory {settings.inventory}: {exc}") from None
    # db upgrade and serve migrate; everything else needs the schema as this version has it.
    _check_database(settings, schema=args.command not in {"db", "serve"})
    if args.command == "db":
        _upgrade(settings)
    elif args.command == "serve":
        _serve(settings, args)
    elif args.command == "worker":
        from .worker import run_worker

        run_worker(settings, once=args.once, concurrency=args.concurrency)
    elif args.command == "reconcile":
        return _reconcile(settings, args)
    elif args.command == "desired":
        return _desired(settings, args)
    elif args.command == "billing":
        return _billing(settings, args)
    elif args.command == "prune":
        return _prune(settings, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        level = os.environ.get("BUDDO_LOG_LEVEL", "INFO").upper()
        if level not in logging.getLevelNamesMapping():
            raise UsageError(f"BUDDO_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return _run(args)
    except (SettingsError, UsageError) as exc:
        message = str(exc)
    except OSError as exc:  # a path in a setting or flag that cannot be read or written
        message = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    print(f"buddo-deploy {args.command}: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
