"""`buddo-deploy` command line: serve, db upgrade, token, worker."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys

from .settings import Settings


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
    argv = [
        sys.executable, "-m", "gunicorn", "buddo_deploy.wsgi:app",
        "--bind", args.bind, "--workers", str(args.workers),
        "--access-logfile", "-", "--error-logfile", "-",
    ]
    os.execv(sys.executable, argv)  # noqa: S606 - replace this process with gunicorn


def _token(settings: Settings, args: argparse.Namespace) -> None:
    from .auth import mint_token

    print(mint_token(settings, args.operator, client_id=args.client_id, scope=args.scope,
                     ttl=dt.timedelta(hours=args.hours)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="buddo-deploy")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="migrate, then run the API under gunicorn")
    serve.add_argument("--bind", default=os.environ.get("BUDDO_BIND", "127.0.0.1:8000"))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("BUDDO_API_WORKERS", "2")))
    db = sub.add_parser("db", help="database commands")
    db.add_argument("action", choices=["upgrade"])
    token = sub.add_parser("token", help="mint a local access token (HS256, embedded default)")
    token.add_argument("--operator", required=True, help="the operator id (token subject)")
    token.add_argument("--client-id", default=None, help="OAuth client id (the deployment's app_id)")
    token.add_argument("--scope", default="deploy:manage")
    token.add_argument("--hours", type=float, default=12.0)
    worker = sub.add_parser("worker", help="run jobs through ansible-runner")
    worker.add_argument("--once", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--concurrency", type=int, default=int(os.environ.get("BUDDO_WORKER_CONCURRENCY", "2")))
    args = parser.parse_args(argv)

    logging.basicConfig(level=os.environ.get("BUDDO_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    if args.command == "db":
        _upgrade(settings)
    elif args.command == "serve":
        _serve(settings, args)
    elif args.command == "token":
        _token(settings, args)
    elif args.command == "worker":
        from .worker import run_worker

        run_worker(settings, once=args.once, concurrency=args.concurrency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
