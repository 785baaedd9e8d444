from __future__ import annotations

import datetime as dt
import threading

import pytest
from buddo_deploy import jobqueue
from buddo_deploy.models import Deployment, Job, database_proxy, utcnow

from tests.helpers import auth, create_body


@pytest.fixture
def deployments(client):
    ids = []
    for sub in ("one", "two"):
        resp = client.simulate_post("/api/deploy/apps", json=create_body(subdomain=sub), headers=auth())
        ids.append(resp.json["deployment"]["id"])
    client.simulate_post(f"/api/deploy/apps/{ids[0]}/restart", headers=auth())
    return ids


def test_requests_coalesce_and_one_subdomain_runs_in_order(deployments):
    first = jobqueue.claim("w1", lease_s=30)
    second = jobqueue.claim("w2", lease_s=30)
    assert first.action == "converge" and str(first.deployment_id) == deployments[0]
    # The restart of 'one' (generation 2) coalesced with its queued deploy.
    assert first.generation == 2 and Job.select().where(Job.deployment == deployments[0]).count() == 1
    assert second.action == "converge" and str(second.deployment_id) == deployments[1]
    assert jobqueue.claim("w3", lease_s=30) is None


def test_a_request_while_a_job_runs_queues_one_more_run(client, deployments):
    first = jobqueue.claim("w1", lease_s=30)
    for _ in range(3):
        client.simulate_post(f"/api/deploy/apps/{deployments[0]}/restart", headers=auth())
    queued = list(Job.select().where((Job.deployment == deployments[0]) & (Job.state == "queued")))
    assert len(queued) == 1 and queued[0].generation == 5
    jobqueue.claim("w2", lease_s=30)  # 'two'
    assert jobqueue.claim("w3", lease_s=30) is None  # waits for the running job of 'one'
    with database_proxy.obj.atomic():
        assert jobqueue.finish(first, "w1", succeeded=True)
    assert jobqueue.claim("w3", lease_s=30).id == queued[0].id


def test_expired_lease_is_taken_over_and_retries_have_no_limit(deployments):
    job = jobqueue.claim("dead-worker", lease_s=30)
    Job.update(lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == job.id).execute()
    retried = jobqueue.claim("w2", lease_s=30)
    assert retried.id == job.id and retried.attempts == 2 and retried.lease_owner == "w2"
    # The first worker comes back from the dead: its outcome is refused.
    assert not jobqueue.finish(job, "dead-worker", succeeded=True)
    assert not jobqueue.renew(job, "dead-worker", 30)
    assert jobqueue.renew(retried, "w2", 30)
    Job.update(attempts=50, lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == job.id).execute()
    assert jobqueue.claim("w3", lease_s=30).id == job.id  # level-triggered: tried until it converges


def test_backoff_keeps_a_failed_run_queued_until_its_time(deployments):
    job = jobqueue.claim("w1", lease_s=30)
    with database_proxy.obj.atomic():
        assert jobqueue.retry_later(job, "w1", delay=dt.timedelta(seconds=60), error="host unreachable")
    stored = Job.get_by_id(job.id)
    assert (stored.state, stored.last_error, stored.lease_owner) == ("queued", "host unreachable", None)
    assert jobqueue.claim("w2", lease_s=30).id != job.id  # 'two' runs; 'one' waits for its backoff
    assert jobqueue.claim("w3", lease_s=30) is None


def test_reconcile_and_converge_of_one_host_never_run_together(client, deployments):
    converge = jobqueue.claim("w1", lease_s=30)
    with database_proxy.obj.atomic():
        reconcile = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60)
        assert jobqueue.enqueue_reconcile("container-host-1", timeout_s=60) is None  # one queued is enough
    later = client.simulate_post("/api/deploy/apps", json=create_body(subdomain="three"), headers=auth())
    earlier = jobqueue.claim("w2", lease_s=30)  # 'two' was queued before the reconcile
    assert str(earlier.deployment_id) == deployments[1]
    assert jobqueue.claim("w3", lease_s=30) is None  # the reconcile waits for both; 'three' waits behind it
    with database_proxy.obj.atomic():
        jobqueue.finish(converge, "w1", succeeded=True)
        jobqueue.finish(earlier, "w2", succeeded=True)
    assert jobqueue.claim("w2", lease_s=30).id == reconcile.id
    assert jobqueue.claim("w3", lease_s=30) is None  # nothing else on the host while it runs
    with database_proxy.obj.atomic():
        jobqueue.finish(reconcile, "w2", succeeded=True)
    assert str(jobqueue.claim("w3", lease_s=30).deployment_id) == later.json["deployment"]["id"]


def test_a_reserved_reconcile_is_claimed_by_its_reserver_only(client, deployments):
    with database_proxy.obj.atomic():
        job = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60, reserved_for="cli", lease_s=30)
    assert jobqueue.claim("cli", lease_s=30, job_id=job.id).id == job.id
    others = [jobqueue.claim("w", lease_s=30)]
    assert others == [None]  # converges wait while the reconcile runs
    # A reserver that died before its turn blocks nobody once its hold lapsed.
    with database_proxy.obj.atomic():
        jobqueue.finish(job, "cli", succeeded=True)
        stale = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60, reserved_for="gone", lease_s=30)
    Job.update(lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == stale.id).execute()
    assert jobqueue.claim("w", lease_s=30) is not None


def test_concurrent_claims_never_share_a_job(client, settings):
    for i in range(12):
        client.simulate_post("/api/deploy/apps", json=create_body(subdomain=f"c{i}", tier="btc-pro"),
                             headers=auth(f"op{i}"))
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        database_proxy.obj.connect(reuse_if_open=True)  # connections are per thread
        while (job := jobqueue.claim(name, lease_s=30)) is not None:
            with lock:
                claimed.append(job.id)
        database_proxy.obj.close()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 12


def test_concurrent_creates_of_one_subdomain_have_one_winner(client, settings):
    results: list[int] = []
    barrier = threading.Barrier(6)

    def create(i: int) -> None:
        barrier.wait()
        resp = client.simulate_post("/api/deploy/apps", json=create_body(subdomain="contested", tier="btc-pro"),
                                    headers=auth(f"racer-{i}"))
        results.append(resp.status_code)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [201] + [422] * 5


@pytest.mark.parametrize(("tier", "limit_code", "overrides"), [
    ("buddo-starter", "tier_deployment_limit", {}),
    ("btc-pro", "account_deployment_limit", {"max_deployments_per_account": 2}),
])
def test_concurrent_creates_of_one_operator_hold_the_limits(client_with, tier, limit_code, overrides):
    client = client_with(**overrides)
    results: list[tuple[int, str | None]] = []
    barrier = threading.Barrier(8)

    def create(i: int) -> None:
        barrier.wait()
        resp = client.simulate_post("/api/deploy/apps", json=create_body(subdomain=f"burst-{i}", tier=tier),
                                    headers=auth("bursty"))
        results.append((resp.status_code, (resp.json.get("error") or {}).get("code")))
        database_proxy.obj.close()

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    allowed = 3 if tier == "buddo-starter" else 2
    assert sorted(results, key=str) == sorted([(201, None)] * allowed + [(429, limit_code)] * (8 - allowed), key=str)
    assert Deployment.select().where(Deployment.operator_id == "bursty").count() == allowed
