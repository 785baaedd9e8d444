"""Retention: old finished jobs and their events go, in bounded batches; what explains a deployment stays.
Old finished one-off runs and old webhook deliveries that are done go too; unfinished ones stay."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from buddo_deploy import cli, jobqueue
from buddo_deploy.crypto import encrypt_secret
from buddo_deploy.db import write_transaction
from buddo_deploy.models import AuditEntry, Deployment, Job, JobEvent, Run, WebhookDelivery, database_proxy, utcnow
from buddo_deploy.services import output, retention
from buddo_deploy.services.webhooks import Webhooks
from buddo_deploy.vocabulary import FINISHED_RUN_STATES, RunState
from buddo_deploy.worker import Pruner

from tests.helpers import JWT_SECRET, PRODUCTION_AUTH, auth, create_deployment, run_job

DAY = dt.timedelta(days=1)


def _finished(job_id: int, ago: dt.timedelta, state: str = "succeeded") -> None:
    at = utcnow() - ago
    Job.update(state=state, finished_at=at, updated_at=at, created_at=at - dt.timedelta(minutes=1)).where(
        Job.id == job_id).execute()


def _events(job_id: int, count: int = 3) -> None:
    JobEvent.insert_many([{"job": job_id, "attempt": 1, "created_at": utcnow(), "event": "runner_on_ok",
                           "task": f"task {i}", "status": "ok"} for i in range(count)]).execute()


def _deploy_and_restart(client: Any, settings: Any, subdomain: str, restarts: int) -> tuple[str, list[int]]:
    """A deployment whose deploy and restarts each ran a job (in order): its id and the job ids."""
    ident = create_deployment(client, subdomain=subdomain)
    jobs = [run_job(settings)[0].id]
    for _ in range(restarts):
        assert client.simulate_post(f"/api/deploy/apps/{ident}/restart", headers=auth()).status_code == 200
        jobs.append(run_job(settings)[0].id)
    for job_id in jobs:
        _events(job_id)
    return ident, jobs


def test_old_finished_jobs_go_and_what_explains_a_deployment_stays(client, settings):
    old = 40 * DAY
    d1, (j1, j2, j3) = _deploy_and_restart(client, settings, "one", restarts=2)
    for job_id in (j1, j2, j3):
        _finished(job_id, old)
    d4, (j7, j8) = _deploy_and_restart(client, settings, "four", restarts=1)
    _finished(j7, old)
    _finished(j8, 10 * DAY)
    with write_transaction(database_proxy.obj):
        read_long_ago = output.enqueue(Deployment.get_by_id(d1), 100).id
        read_now = output.enqueue(Deployment.get_by_id(d1), 100).id
        stale_reconcile = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60)
    _finished(read_long_ago, 2 * DAY)
    _finished(read_now, dt.timedelta(hours=1))
    assert stale_reconcile is not None
    _finished(stale_reconcile.id, old, "failed")
    with write_transaction(database_proxy.obj):
        recent_reconcile = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60)
    assert recent_reconcile is not None
    _finished(recent_reconcile.id, 10 * DAY)
    # Never finished, however old: one waits in the queue, one runs (its lease long lapsed).
    create_deployment(client, "operator-2", subdomain="running")
    running = jobqueue.claim("w", 30)
    assert running is not None
    _events(running.id)
    create_deployment(client, "operator-2", subdomain="queued")
    queued = Job.get((Job.state == "queued") & (Job.action == "converge")).id
    assert queued != running.id
    long_ago = utcnow() - old
    Job.update(created_at=long_ago, updated_at=long_ago, run_after=long_ago, started_at=long_ago,
               lease_expires_at=long_ago).where(Job.id.in_([queued, running.id])).execute()
    audit_entries = AuditEntry.select().count()

    report = retention.prune(30)

    assert dict(report.jobs) == {"converge": 3, "output": 1, "reconcile": 1}
    assert report.events == 3 * 3
    left = {job.id for job in Job.select(Job.id)}
    assert {j1, j2, j7, read_long_ago, stale_reconcile.id} & left == set()
    assert {j3, j8, read_now, recent_reconcile.id, queued, running.id} <= left
    assert JobEvent.select().where(JobEvent.job.in_([j1, j2, j7])).count() == 0
    assert JobEvent.select().where(JobEvent.job.in_([j3, j8, running.id])).count() == 9
    assert AuditEntry.select().count() == audit_entries  # audit entries are kept forever, with their job_id
    assert retention.prune(30).jobs_removed == 0

    # The newest job of a deployment stays readable; an older entry's job says it was pruned.
    assert client.simulate_get(f"/api/deploy/apps/{d1}/jobs/{j3}", headers=auth()).status_code == 200
    gone = client.simulate_get(f"/api/deploy/apps/{d1}/jobs/{j1}", headers=auth())
    assert gone.status_code == 404, gone.text
    error = gone.json["error"]
    assert error["code"] == "job_not_found" and "pruned after 30 days" in error["message"]
    assert error["details"] == {"job_id": j1, "pruned": True, "retention_days": 30}
    logs = client.simulate_get(f"/api/deploy/apps/{d1}/logs", headers=auth()).json["logs"]
    assert j1 in [entry["job_id"] for entry in logs]
    # A job id no entry of this deployment names is not found, as before (not "pruned").
    for other in (j7, 10**9):
        missing = client.simulate_get(f"/api/deploy/apps/{d1}/jobs/{other}", headers=auth()).json["error"]
        assert missing["code"] == "job_not_found" and missing["details"] is None


def _run(settings: Any, deployment_id: str, state: RunState, ago: dt.timedelta) -> str:
    """A one-off run made ``ago``, with its line of output once it finished; its id."""
    at = utcnow() - ago
    finished = state in FINISHED_RUN_STATES
    lines = [{"at": at.isoformat(timespec="seconds") + "Z", "stream": "stdout", "text": f"{state} run"}]
    return str(Run.create(
        id=uuid.uuid4(), deployment=deployment_id, command_encrypted=encrypt_secret(settings.secret_key, '["true"]'),
        timeout_s=60, state=state, output=json.dumps(lines) if finished else None, inserted_at=at,
        started_at=None if state == RunState.QUEUED else at, finished_at=at if finished else None).id)


def _delivery(endpoint_id: Any, state: str, ago: dt.timedelta) -> str:
    """A webhook delivery made ``ago`` (one still being tried is due now); its id."""
    at = utcnow() - ago
    ident = f"msg_{uuid.uuid4().hex}"
    WebhookDelivery.create(id=ident, endpoint=endpoint_id, event_type="deploy.succeeded", payload="{}", state=state,
                           attempts=1, next_attempt_at=utcnow() if state == "pending" else None, last_attempt_at=at,
                           inserted_at=at)
    return ident


def test_old_finished_runs_and_old_deliveries_go_recent_and_unfinished_ones_stay(client, settings):
    """Runs and deliveries count their age from when they were made; a run's output lines are
    in its row and go with it."""
    old, recent = 40 * DAY, 10 * DAY
    ident = create_deployment(client, subdomain="runs")
    run_job(settings)
    old_runs = [_run(settings, ident, state, old) for state in sorted(FINISHED_RUN_STATES)]
    kept_runs = [_run(settings, ident, state, recent) for state in sorted(FINISHED_RUN_STATES)]
    kept_runs += [_run(settings, ident, RunState.QUEUED, old), _run(settings, ident, RunState.RUNNING, old)]
    endpoint, _ = Webhooks(settings).create("operator-1", "https://hooks.example.com/", None, None)
    old_deliveries = [_delivery(endpoint.id, state, old) for state in ("succeeded", "failed")]
    kept_deliveries = [_delivery(endpoint.id, state, recent) for state in ("succeeded", "failed")]
    kept_deliveries.append(_delivery(endpoint.id, "pending", old))

    report = retention.prune(30)

    assert (report.runs, report.deliveries) == (len(old_runs), len(old_deliveries))
    listed = client.simulate_get(f"/api/deploy/apps/{ident}/runs", headers=auth()).json["runs"]
    assert sorted(run["id"] for run in listed) == sorted(kept_runs)
    for run_id in old_runs:
        gone = client.simulate_get(f"/api/deploy/apps/{ident}/runs/{run_id}", headers=auth())
        assert gone.status_code == 404 and gone.json["error"]["code"] == "run_not_found"
    kept = client.simulate_get(f"/api/deploy/apps/{ident}/runs/{kept_runs[0]}", headers=auth()).json["run"]
    assert [line["text"] for line in kept["output"]] == [f"{sorted(FINISHED_RUN_STATES)[0]} run"]
    log = client.simulate_get(f"/api/deploy/webhooks/{endpoint.id}/deliveries", headers=auth()).json["deliveries"]
    assert sorted(delivery["id"] for delivery in log) == sorted(kept_deliveries)
    assert retention.prune(30).runs == 0


def test_zero_days_keeps_everything(client, settings):
    _, jobs = _deploy_and_restart(client, settings, "kept", restarts=1)
    for job_id in jobs:
        _finished(job_id, 3650 * DAY)
    report = retention.prune(0)
    assert report.cutoff is None and report.jobs_removed == 0
    assert Job.select().count() == 2


@contextlib.contextmanager
def _counting(changes: list[int]) -> Iterator[None]:
    """write_transaction, recording how many job, event and delivery rows each transaction removed."""
    def rows() -> int:
        return Job.select().count() + JobEvent.select().count() + WebhookDelivery.select().count()

    before = rows()
    with write_transaction(database_proxy.obj):
        yield
    changes.append(before - rows())


def test_pruning_runs_in_bounded_batches(client, settings, monkeypatch):
    ident = create_deployment(client, subdomain="busy")
    run_job(settings)
    at = utcnow() - 40 * DAY
    base = {"deployment": ident, "action": "output", "lock_key": "output/x", "state": "succeeded", "attempts": 1,
            "timeout_s": 30, "run_after": at, "created_at": at, "updated_at": at, "finished_at": at, "host": ""}
    Job.insert_many([base | {"lock_key": f"output/{i}"} for i in range(120)]).execute()
    ids = [job.id for job in Job.select(Job.id).where(Job.action == "output")]
    JobEvent.insert_many([{"job": job_id, "attempt": 1, "created_at": at, "event": "runner_on_ok"}
                          for job_id in ids for _ in range(3)]).execute()
    # 60 webhook deliveries done long ago, and one still being tried (kept).
    endpoint, _ = Webhooks(settings).create("operator-1", "https://hooks.example.com/", None, None)
    delivery = {"endpoint": endpoint.id, "event_type": "deploy.succeeded", "payload": "{}", "attempts": 1,
                "inserted_at": at}
    WebhookDelivery.insert_many([delivery | {"id": f"msg_{i:032x}", "state": "succeeded" if i % 2 else "failed"}
                                 for i in range(60)]).execute()
    WebhookDelivery.create(**delivery, id="msg_pending", state="pending", next_attempt_at=at)
    changes: list[int] = []
    monkeypatch.setattr(retention, "write_transaction", lambda db: _counting(changes))

    report = retention.prune(30, batch=50)

    assert (report.jobs_removed, report.events, report.deliveries) == (120, 360, 60)
    assert max(changes) == 50 and sum(changes) == 480 + 60  # never more than a batch at once
    # The deliveries: 50, 10; the runs: none. Per 50 jobs: their 150 events (50, 50, 50, then none left), then the
    # jobs; the last 20: 50 + 10, then them.
    assert report.transactions == len(changes) == 2 + 1 + 5 + 5 + 3  # the runs: none
    assert [d.id for d in WebhookDelivery.select()] == ["msg_pending"]
    assert Job.select().where(Job.action == "output").count() == 0
    assert Job.select().where(Job.action == "converge").count() == 1  # the deploy's, newest of its deployment


def test_one_worker_prunes_at_a_time(client, settings):
    _, jobs = _deploy_and_restart(client, settings, "leased", restarts=2)
    for job_id in jobs:
        _finished(job_id, 40 * DAY)
    first, second = Pruner(settings, "worker-a"), Pruner(settings, "worker-b")
    second.tick()  # takes the lease, prunes
    assert Job.select().count() == 1
    _, more = _deploy_and_restart(client, settings, "leased-2", restarts=1)
    for job_id in more:
        _finished(job_id, 40 * DAY)
    first.tick()  # the lease is worker-b's: nothing
    assert Job.select().count() == 3
    retention.release_lease("worker-b")
    first.tick()
    assert Job.select().count() == 2


@pytest.fixture
def cli_env(settings, monkeypatch):
    from tests.helpers import migrate

    migrate(settings)
    for name, value in {"BUDDO_VAR_DIR": str(settings.var_dir), "BUDDO_DATABASE_URL": settings.database_url,
                        "BUDDO_JWT_SECRET": JWT_SECRET, "BUDDO_SECRET_KEY": settings.secret_key,
                        **PRODUCTION_AUTH}.items():
        monkeypatch.setenv(name, value)
    yield settings
    database_proxy.obj.close()


def test_the_prune_command_says_what_it_removed(client, cli_env, capsys):
    _, jobs = _deploy_and_restart(client, cli_env, "cli", restarts=2)
    for job_id in jobs:
        _finished(job_id, 10 * DAY)
    assert cli.main(["prune"]) == 0
    assert capsys.readouterr().out.startswith("pruned 0 job(s) and 0 event(s) finished before ")
    assert cli.main(["prune", "--days", "7", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["retention_days"], report["jobs"], report["jobs_by_action"], report["events"]) == (
        7, 2, {"converge": 2}, 6)
    assert cli.main(["prune", "--days", "0"]) == 0
    assert "nothing pruned" in capsys.readouterr().out
