from __future__ import annotations

import datetime as dt
import threading

import pytest
from buddo_deploy import jobqueue
from buddo_deploy.models import Deployment, Job, database_proxy, utcnow

from tests.helpers import auth, create_body, create_deployment


@pytest.fixture
def deployments(client):
    ids = []
    for sub in ("one", "two"):
        resp = client.simulate_post("/api/deploy/apps", json=create_body(subdomain=sub), headers=auth())
        ids.append(resp.json["deployment"]["id"])
    client.simulate_post(f"/api/deploy/apps/{ids[0]}/restart", headers=auth())
    return ids


def test_requests_coalesce_and_one_subdomain_runs_in_order(deployments):
    [first] = jobqueue.claim("w1", lease_s=30)
    [second] = jobqueue.claim("w2", lease_s=30)
    assert first.action == "converge" and str(first.deployment_id) == deployments[0]
    # The restart of 'one' (generation 2) coalesced with its queued deploy.
    assert first.generation == 2 and Job.select().where(Job.deployment == deployments[0]).count() == 1
    assert second.action == "converge" and str(second.deployment_id) == deployments[1]
    assert jobqueue.claim("w3", lease_s=30) == []


def test_a_request_while_a_job_runs_queues_one_more_run(client, deployments):
    [first] = jobqueue.claim("w1", lease_s=30)
    for _ in range(3):
        client.simulate_post(f"/api/deploy/apps/{deployments[0]}/restart", headers=auth())
    queued = list(Job.select().where((Job.deployment == deployments[0]) & (Job.state == "queued")))
    assert len(queued) == 1 and queued[0].generation == 5
    jobqueue.claim("w2", lease_s=30)  # 'two'
    assert jobqueue.claim("w3", lease_s=30) == []  # waits for the running job of 'one'
    with database_proxy.obj.atomic():
        assert jobqueue.finish(first, "w1", succeeded=True)
    assert jobqueue.claim("w3", lease_s=30)[0].id == queued[0].id


def test_expired_lease_is_taken_over_and_retries_have_no_limit(deployments):
    [job] = jobqueue.claim("dead-worker", lease_s=30)
    Job.update(lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == job.id).execute()
    [retried] = jobqueue.claim("w2", lease_s=30)
    assert retried.id == job.id and retried.attempts == 2 and retried.lease_owner == "w2"
    # The first worker comes back from the dead: its outcome is refused.
    assert not jobqueue.finish(job, "dead-worker", succeeded=True)
    assert not jobqueue.renew([job], "dead-worker", 30)
    assert jobqueue.renew([retried], "w2", 30)
    Job.update(attempts=50, lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == job.id).execute()
    assert jobqueue.claim("w3", lease_s=30)[0].id == job.id  # level-triggered: tried until it converges


def test_backoff_keeps_a_failed_run_queued_until_its_time(deployments):
    [job] = jobqueue.claim("w1", lease_s=30)
    with database_proxy.obj.atomic():
        assert jobqueue.retry_later(job, "w1", delay=dt.timedelta(seconds=60), error="host unreachable")
    stored = Job.get_by_id(job.id)
    assert (stored.state, stored.last_error, stored.lease_owner) == ("queued", "host unreachable", None)
    assert jobqueue.claim("w2", lease_s=30)[0].id != job.id  # 'two' runs; 'one' waits for its backoff
    assert jobqueue.claim("w3", lease_s=30) == []


def test_reconcile_and_converge_of_one_host_never_run_together(client, deployments):
    [converge] = jobqueue.claim("w1", lease_s=30)
    with database_proxy.obj.atomic():
        reconcile = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60)
        assert jobqueue.enqueue_reconcile("container-host-1", timeout_s=60) is None  # one queued is enough
    later = client.simulate_post("/api/deploy/apps", json=create_body(subdomain="three"), headers=auth())
    [earlier] = jobqueue.claim("w2", lease_s=30)  # 'two' was queued before the reconcile
    assert str(earlier.deployment_id) == deployments[1]
    assert jobqueue.claim("w3", lease_s=30) == []  # the reconcile waits for both; 'three' waits behind it
    with database_proxy.obj.atomic():
        jobqueue.finish(converge, "w1", succeeded=True)
        jobqueue.finish(earlier, "w2", succeeded=True)
    assert jobqueue.claim("w2", lease_s=30)[0].id == reconcile.id
    assert jobqueue.claim("w3", lease_s=30) == []  # nothing else on the host while it runs
    with database_proxy.obj.atomic():
        jobqueue.finish(reconcile, "w2", succeeded=True)
    assert str(jobqueue.claim("w3", lease_s=30)[0].deployment_id) == later.json["deployment"]["id"]


def test_a_reserved_reconcile_is_claimed_by_its_reserver_only(client, deployments):
    with database_proxy.obj.atomic():
        job = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60, reserved_for="cli", lease_s=30)
    assert jobqueue.claim("cli", lease_s=30, job_id=job.id)[0].id == job.id
    assert jobqueue.claim("w", lease_s=30) == []  # converges wait while the reconcile runs
    # A reserver that died before its turn blocks nobody once its hold lapsed.
    with database_proxy.obj.atomic():
        jobqueue.finish(job, "cli", succeeded=True)
        stale = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60, reserved_for="gone", lease_s=30)
    Job.update(lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == stale.id).execute()
    assert jobqueue.claim("w", lease_s=30) != []


def test_concurrent_claims_never_share_a_job(client, settings):
    for i in range(12):
        client.simulate_post("/api/deploy/apps", json=create_body(subdomain=f"c{i}", tier="btc-pro"),
                             headers=auth(f"op{i}"))
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        database_proxy.obj.connect(reuse_if_open=True)  # connections are per thread
        while jobs := jobqueue.claim(name, lease_s=30, batch=3):
            with lock:
                claimed.extend(job.id for job in jobs)
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


def _queued(client, *subdomains):
    """Create deployments on container-host-1 (one operator each): subdomain -> its converge job."""
    jobs = {}
    for sub in subdomains:
        ident = create_deployment(client, f"op-{sub}", subdomain=sub, tier="btc-pro")
        jobs[sub] = Job.get((Job.deployment == ident) & (Job.state == "queued"))
    return jobs


def test_a_claim_batches_the_runnable_converges_of_one_host_and_only_those(client, settings):
    jobs = _queued(client, "a", "b", "c", "d", "e")
    now = utcnow()
    # 'b' runs elsewhere: its restart waits behind it (one job of a lock key at a time).
    Job.update(state="running", lease_owner="w0", lease_expires_at=now + dt.timedelta(seconds=30)).where(
        Job.id == jobs["b"].id).execute()
    client.simulate_post(f"/api/deploy/apps/{jobs['b'].deployment_id}/restart", headers=auth("op-b"))
    # 'c' waits for its backoff; 'd' was claimed by a worker that died (lease lapsed): taken over.
    Job.update(run_after=now + dt.timedelta(seconds=60)).where(Job.id == jobs["c"].id).execute()
    Job.update(state="running", attempts=1, lease_owner="dead", lease_expires_at=now - dt.timedelta(seconds=1)).where(
        Job.id == jobs["d"].id).execute()
    # 'e' belongs to another host.
    Job.update(host="container-host-2", lock_key="container-host-2/e").where(Job.id == jobs["e"].id).execute()
    # 'f' is queued behind a reconcile of the host.
    with database_proxy.obj.atomic():
        reconcile = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60)
    jobs |= _queued(client, "f")

    batch = jobqueue.claim("w1", lease_s=30, batch=32)
    assert [j.id for j in batch] == [jobs["a"].id, jobs["d"].id]
    assert all(j.state == "running" and j.lease_owner == "w1" for j in batch)
    assert [j.attempts for j in batch] == [1, 2]
    # Another host's converge is claimed on its own, and nothing else of host 1 is runnable.
    assert [j.id for j in jobqueue.claim("w2", lease_s=30, batch=32)] == [jobs["e"].id]
    assert jobqueue.claim("w3", lease_s=30, batch=32) == []
    # A reconcile is never batched; the converge behind it waits for it.
    with database_proxy.obj.atomic():
        for job in batch:
            assert jobqueue.finish(job, "w1", succeeded=True)
        Job.update(state="succeeded").where(Job.id == jobs["b"].id).execute()
    assert [j.action for j in jobqueue.claim("w1", lease_s=30, batch=32)] == ["converge"]  # b's restart: before
    assert jobqueue.claim("w3", lease_s=30, batch=32) == []  # the reconcile waits for it
    Job.update(state="succeeded").where((Job.host == "container-host-1") & (Job.action == "converge")
                                        & (Job.state == "running")).execute()
    assert [j.id for j in jobqueue.claim("w1", lease_s=30, batch=32)] == [reconcile.id]


def test_a_batch_holds_at_most_the_batch_size(client, settings):
    jobs = _queued(client, "a", "b", "c", "d", "e")
    ids = [jobs[sub].id for sub in "abcde"]
    assert [j.id for j in jobqueue.claim("w1", lease_s=30, batch=2)] == ids[:2]
    assert [j.id for j in jobqueue.claim("w2", lease_s=30)] == ids[2:3]  # batch=1: one job per claim
    assert [j.id for j in jobqueue.claim("w3", lease_s=30, batch=32)] == ids[3:]
    assert jobqueue.claim("w4", lease_s=30, batch=32) == []
    # Every job keeps its own lease: one lost lease makes the renewal of its run fail.
    mine = list(Job.select().where(Job.lease_owner == "w3").order_by(Job.id))
    assert jobqueue.renew(mine, "w3", 30)
    Job.update(lease_owner="thief").where(Job.id == ids[4]).execute()
    assert not jobqueue.renew(mine, "w3", 30)


def test_a_batch_that_timed_out_is_split_up(client, settings):
    jobs = _queued(client, "a", "b", "c", "d", "e")
    a, b, c, d, e = (jobs[sub].id for sub in "abcde")
    Job.update(last_error="timed out after 600 s", attempts=1).where(Job.id.in_([b, d])).execute()
    Job.update(last_error="host unreachable", attempts=1).where(Job.id == c).execute()
    assert [j.id for j in jobqueue.claim("w1", lease_s=30, batch=32)] == [a, c, e]  # b and d are not taken along
    Job.update(state="queued", lease_owner=None).where(Job.id == e).execute()  # e queued again (say, retried)
    assert [j.id for j in jobqueue.claim("w2", lease_s=30, batch=32)] == [b]  # nor do they take others along
    assert [j.id for j in jobqueue.claim("w3", lease_s=30, batch=32)] == [d]
    assert [j.id for j in jobqueue.claim("w4", lease_s=30, batch=32)] == [e]
