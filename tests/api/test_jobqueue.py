from __future__ import annotations

import datetime as dt
import threading

import pytest
from buddo_deploy import jobqueue
from buddo_deploy.models import Job, database_proxy, utcnow

from tests.helpers import auth, create_body


@pytest.fixture
def deployments(client):
    ids = []
    for sub in ("one", "two"):
        resp = client.simulate_post("/api/deploy/apps", json=create_body(subdomain=sub), headers=auth())
        ids.append(resp.json["deployment"]["id"])
    client.simulate_post(f"/api/deploy/apps/{ids[0]}/restart", headers=auth())
    return ids


def test_jobs_of_one_subdomain_run_in_order_others_in_parallel(deployments):
    first = jobqueue.claim("w1", lease_s=30)
    second = jobqueue.claim("w2", lease_s=30)
    assert first.action == "deploy" and str(first.deployment_id) == deployments[0]
    assert second.action == "deploy" and str(second.deployment_id) == deployments[1]
    assert jobqueue.claim("w3", lease_s=30) is None  # the restart waits for deploy of 'one'
    with database_proxy.obj.atomic():
        assert jobqueue.finish(first, "w1", succeeded=True)
    third = jobqueue.claim("w3", lease_s=30)
    assert third.action == "restart" and third.attempts == 1


def test_expired_lease_is_retried_then_failed(deployments):
    job = jobqueue.claim("dead-worker", lease_s=30)
    Job.update(lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == job.id).execute()
    retried = jobqueue.claim("w2", lease_s=30)
    assert retried.id == job.id and retried.attempts == 2 and retried.lease_owner == "w2"
    # The first worker comes back from the dead: its outcome is refused.
    assert not jobqueue.finish(job, "dead-worker", succeeded=True)
    assert not jobqueue.renew(job, "dead-worker", 30)
    assert jobqueue.renew(retried, "w2", 30)
    Job.update(attempts=3, lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == job.id).execute()
    expired = []
    jobqueue.claim("w3", lease_s=30, on_expired=expired.append)
    assert [e.job.id for e in expired] == [job.id]
    assert Job.get_by_id(job.id).state == "failed"


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
