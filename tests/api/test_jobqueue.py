from __future__ import annotations

import datetime as dt
import threading

import pytest
from buddo_deploy import jobqueue
from buddo_deploy.db import write_transaction
from buddo_deploy.models import AuditEntry, Deployment, Job, database_proxy, utcnow

from tests.helpers import auth, create_body, create_deployment


@pytest.fixture
def deployments(client):
    ids = []
    for sub in ("one", "two"):
        resp = client.simulate_post("/api/deploy/apps", json=create_body(subdomain=sub), headers=auth())
        ids.append(resp.json["deployment"]["id"])
    client.simulate_post(f"/api/deploy/apps/{ids[0]}/restart", headers=auth())
    return ids


def targets(job: Job) -> dict[str, int]:
    """Deployment id -> the generation the host converge brings it to."""
    return {str(t.deployment_id): t.generation for t in jobqueue.targets(job)}


def queued_converges() -> list[Job]:
    return list(Job.select().where((Job.action == "converge") & (Job.state == "queued")).order_by(Job.id))


def test_the_changes_of_a_host_coalesce_into_one_queued_converge(deployments):
    [job] = queued_converges()
    assert (job.host, job.deployment_id, job.lock_key) == ("container-host-1", None, "container-host-1/")
    # Two creates and the restart of 'one' (generation 2): one job, a target per deployment.
    assert targets(job) == {deployments[0]: 2, deployments[1]: 1}
    claimed = jobqueue.claim("w1", lease_s=30)
    assert claimed is not None
    assert claimed.id == job.id and {t.state for t in jobqueue.targets(claimed)} == {"running"}
    assert jobqueue.claim("w2", lease_s=30) is None


def test_changes_while_the_host_converges_queue_one_more_run(client, deployments):
    first = jobqueue.claim("w1", lease_s=30)
    assert first is not None
    for _ in range(3):
        client.simulate_post(f"/api/deploy/apps/{deployments[0]}/restart", headers=auth())
    client.simulate_post(f"/api/deploy/apps/{deployments[1]}/stop", headers=auth())
    [queued] = queued_converges()
    assert queued.id != first.id and targets(queued) == {deployments[0]: 5, deployments[1]: 2}
    assert jobqueue.claim("w2", lease_s=30) is None  # one converge of a host at a time
    assert jobqueue.open_converge(Deployment.get_by_id(deployments[0])) is not None
    with database_proxy.obj.atomic():
        for target in jobqueue.targets(first):
            jobqueue.finish_target(first, target.deployment_id, succeeded=True)
        assert jobqueue.finish(first, "w1", succeeded=True)
    assert jobqueue.claim("w2", lease_s=30).id == queued.id


def test_a_converge_of_other_deployments_runs_beside_the_running_one(client, deployments):
    first = jobqueue.claim("w1", lease_s=30)
    assert first is not None  # 'one' and 'two'
    three = create_deployment(client, subdomain="three")
    second = jobqueue.claim("w2", lease_s=30)
    assert second is not None  # 'three' only: nothing in common with the first
    assert second.id != first.id and list(targets(second)) == [three]
    client.simulate_post(f"/api/deploy/apps/{three}/restart", headers=auth())
    client.simulate_post(f"/api/deploy/apps/{deployments[0]}/restart", headers=auth())
    assert jobqueue.claim("w3", lease_s=30) is None  # shares 'three' and 'one' with the running ones
    with database_proxy.obj.atomic():
        assert jobqueue.finish(second, "w2", succeeded=True)
    assert jobqueue.claim("w3", lease_s=30) is None  # still 'one'
    with database_proxy.obj.atomic():
        assert jobqueue.finish(first, "w1", succeeded=True)
    assert list(targets(jobqueue.claim("w3", lease_s=30))) == [deployments[0], three]


def test_a_successor_on_a_destroyed_subdomain_waits_for_the_teardown(client, deployments):
    """Another deployment, but the same subdomain (one site file): never in two runs at once."""
    first = jobqueue.claim("w1", lease_s=30)
    assert first is not None
    assert client.simulate_delete(f"/api/deploy/apps/{deployments[1]}", headers=auth()).status_code == 200
    with database_proxy.obj.atomic():
        assert jobqueue.finish(first, "w1", succeeded=True)
    teardown = jobqueue.claim("w1", lease_s=30)
    assert teardown is not None  # 'two' destroyed (and 'one' restarted)
    successor = create_deployment(client, subdomain="two")
    assert jobqueue.claim("w2", lease_s=30) is None
    with database_proxy.obj.atomic():
        assert jobqueue.finish(teardown, "w1", succeeded=True)
    assert list(targets(jobqueue.claim("w2", lease_s=30))) == [successor]


def test_concurrent_changes_on_one_host_queue_one_converge(client, settings):
    ids = [create_deployment(client, f"op{i}", subdomain=f"c{i}", tier="btc-pro") for i in range(6)]
    running = jobqueue.claim("w", lease_s=30)
    assert running is not None  # the creates' converge runs: the changes queue a new one
    barrier = threading.Barrier(len(ids))

    def change(ident: str) -> None:
        database_proxy.obj.connect(reuse_if_open=True)  # connections are per thread
        barrier.wait()
        with write_transaction(database_proxy.obj):
            d = Deployment.get_by_id(ident)
            Deployment.update(generation=d.generation + 1).where(Deployment.id == d.id).execute()
            d.generation += 1
            jobqueue.enqueue_converge(d, timeout_s=60)
        database_proxy.obj.close()

    threads = [threading.Thread(target=change, args=(ident,)) for ident in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [queued] = queued_converges()
    assert queued.id != running.id and targets(queued) == dict.fromkeys(ids, 2)


def test_expired_lease_is_taken_over_and_retries_have_no_limit(deployments):
    job = jobqueue.claim("dead-worker", lease_s=30)
    assert job is not None
    Job.update(lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == job.id).execute()
    retried = jobqueue.claim("w2", lease_s=30)
    assert retried is not None
    assert retried.id == job.id and retried.attempts == 2 and retried.lease_owner == "w2"
    # The first worker comes back from the dead: its outcome is refused.
    assert not jobqueue.finish(job, "dead-worker", succeeded=True)
    assert not jobqueue.renew(job, "dead-worker", 30)
    assert not jobqueue.owns(job, "dead-worker") and jobqueue.owns(retried, "w2")
    assert jobqueue.renew(retried, "w2", 30)
    Job.update(attempts=50, lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == job.id).execute()
    assert jobqueue.claim("w3", lease_s=30).id == job.id  # level-triggered: tried until it converges


def test_backoff_keeps_a_failed_run_queued_until_its_time_or_the_next_change(client, deployments):
    job = jobqueue.claim("w1", lease_s=30)
    assert job is not None
    with database_proxy.obj.atomic():
        assert jobqueue.retry_later(job, "w1", delay=dt.timedelta(seconds=60), error="host unreachable")
    stored = Job.get_by_id(job.id)
    assert (stored.state, stored.last_error, stored.lease_owner) == ("queued", "host unreachable", None)
    assert {t.state for t in jobqueue.targets(stored)} == {"queued"}
    assert jobqueue.claim("w2", lease_s=30) is None  # waits for its backoff
    # A new change joins the queued run (no second one) and is worth trying now.
    three = create_deployment(client, subdomain="three")
    assert [j.id for j in queued_converges()] == [job.id] and three in targets(stored)
    assert jobqueue.claim("w2", lease_s=30).id == job.id


def test_a_change_that_joins_an_older_retried_converge_waits_for_the_run_of_its_deployment(client):
    """'two' is converged by a run queued while 'one's ran; 'one's is retried, and two's next change
    joins it (the host's queued converge): it is older, yet it waits for two's run."""
    one = create_deployment(client, subdomain="one")
    first = jobqueue.claim("w1", lease_s=30)
    assert first is not None and list(targets(first)) == [one]
    two = create_deployment(client, subdomain="two")
    second = jobqueue.claim("w2", lease_s=30)
    assert second is not None and list(targets(second)) == [two]  # beside 'one's
    with database_proxy.obj.atomic():  # 'one's run failed on the host: back in the queue, due at once
        assert jobqueue.retry_later(first, "w1", delay=dt.timedelta(0), error="podman rm failed")
    client.simulate_post(f"/api/deploy/apps/{two}/restart", headers=auth())
    assert targets(Job.get_by_id(first.id)) == {one: 1, two: 2}  # it joined the older, queued one
    assert jobqueue.claim("w3", lease_s=30) is None  # not beside two's run
    with database_proxy.obj.atomic():
        assert jobqueue.finish(second, "w2", succeeded=True)
    assert jobqueue.claim("w3", lease_s=30).id == first.id


def test_a_suspects_change_queued_while_its_shared_run_hung_goes_on_in_its_solo_converge(client, deployments):
    """'one' and 'two' run together; one's restart, queued while they run, is in the host's ordinary
    converge, which another tenant's create joins. The run times out: one's change moves into its solo
    converge (the later generation wins), so the ordinary converge runs 'three' beside the suspects' (it
    used to run 'one' again, in a shared run, before one's solo converge, dragging 'three' into the hang)."""
    one, two = deployments
    first = jobqueue.claim("w1", lease_s=30)
    assert first is not None and targets(first) == {one: 2, two: 1}
    client.simulate_post(f"/api/deploy/apps/{one}/restart", headers=auth())  # queued while it runs
    three = create_deployment(client, "operator-2", subdomain="three")
    [later] = queued_converges()
    assert targets(later) == {one: 3, three: 1}
    restart = _entry(one, 3)
    assert restart.job_id == later.id
    with database_proxy.obj.atomic():  # the run timed out
        assert jobqueue.finish(first, "w1", succeeded=False, error="timed out")
        solo_one = jobqueue.retry_alone(first, one, 2, run_after=utcnow(), error="timed out", task=None)
        solo_two = jobqueue.retry_alone(first, two, 1, run_after=utcnow(), error="timed out", task=None)
    assert solo_one.solo and solo_two.solo and later.id < solo_one.id != solo_two.id
    assert (targets(solo_one), targets(solo_two), targets(later)) == ({one: 3}, {two: 1}, {three: 1})
    assert jobqueue.targets(solo_one)[0].last_error == "timed out"
    assert _entry(one, 3).job_id == solo_one.id  # the restart's entry names where it goes on
    assert {t.state for t in jobqueue.targets(first)} == {"failed"}
    # Nothing in common: the ordinary converge runs beside the suspects'.
    assert [jobqueue.claim(f"w{i}", lease_s=30).id for i in range(3)] == [later.id, solo_one.id, solo_two.id]
    four = create_deployment(client, "operator-2", subdomain="four")
    [ordinary] = queued_converges()
    assert not ordinary.solo and targets(ordinary) == {four: 1}  # a new change joins no solo converge
    client.simulate_post(f"/api/deploy/apps/{one}/restart", headers=auth())  # while one's solo converge runs
    nxt = Job.get_by_id(_entry(one, 4).job_id)
    assert nxt.id not in {solo_one.id, ordinary.id} and nxt.solo and targets(nxt) == {one: 4}
    assert jobqueue.claim("w3", lease_s=30).id == ordinary.id
    assert jobqueue.claim("w4", lease_s=30) is None  # one's next waits for its running one


def test_a_suspects_change_queued_while_its_lone_run_hung_leaves_the_hosts_ordinary_converge(client):
    """'one' runs alone and hangs; its restart, queued meanwhile, queues the host's ordinary converge,
    which another tenant's create joins. The run times out and retries as a solo converge, which takes
    one's change: the ordinary converge runs beside it (it used to wait for it, retried with a backoff
    for as long as 'one' hangs, and every later change of the host with it)."""
    one = create_deployment(client, subdomain="one")
    hung = jobqueue.claim("w1", lease_s=30)
    assert hung is not None and targets(hung) == {one: 1}
    client.simulate_post(f"/api/deploy/apps/{one}/restart", headers=auth())
    two = create_deployment(client, "operator-2", subdomain="two")
    [ordinary] = queued_converges()
    assert targets(ordinary) == {one: 2, two: 1} and _entry(one, 2).job_id == ordinary.id
    with database_proxy.obj.atomic():  # the run timed out
        assert jobqueue.retry_later(hung, "w1", delay=dt.timedelta(seconds=60), error="timed out", solo=True)
    solo = Job.get_by_id(hung.id)
    assert (solo.solo, solo.state, targets(solo)) == (True, "queued", {one: 2})
    assert targets(Job.get_by_id(ordinary.id)) == {two: 1} and _entry(one, 2).job_id == solo.id
    assert jobqueue.claim("w2", lease_s=30).id == ordinary.id  # while one's waits out its backoff
    assert jobqueue.claim("w3", lease_s=30) is None
    three = create_deployment(client, "operator-2", subdomain="three")
    assert jobqueue.claim("w3", lease_s=30).id == _converge_of(three).id  # and the host's next changes


def test_an_ordinary_converge_a_suspects_change_leaves_with_no_target_is_gone(client):
    """It never ran and has nothing left to do: as if the change had joined the solo converge."""
    one = create_deployment(client, subdomain="one")
    hung = jobqueue.claim("w1", lease_s=30)
    client.simulate_post(f"/api/deploy/apps/{one}/restart", headers=auth())
    [ordinary] = queued_converges()
    with database_proxy.obj.atomic():
        assert jobqueue.retry_later(hung, "w1", delay=dt.timedelta(seconds=60), error="timed out", solo=True)
    assert Job.get_or_none(Job.id == ordinary.id) is None and [j.id for j in queued_converges()] == [hung.id]
    assert targets(Job.get_by_id(hung.id)) == {one: 2} and _entry(one, 2).job_id == hung.id
    two = create_deployment(client, "operator-2", subdomain="two")
    assert jobqueue.claim("w2", lease_s=30).id == _converge_of(two).id


def test_a_retried_converge_a_suspects_change_leaves_with_no_open_target_is_finished(client):
    """A retried ordinary converge (three converged in its run, two's step failed on the host) whose
    open target is a suspect's goes no further: it ends as its next run would (nothing to run)."""
    one = create_deployment(client, subdomain="one")
    older = jobqueue.claim("w1", lease_s=30)
    assert older is not None and targets(older) == {one: 1}
    two = create_deployment(client, subdomain="two")
    three = create_deployment(client, subdomain="three")
    retried = jobqueue.claim("w2", lease_s=30)
    assert retried is not None and targets(retried) == {two: 1, three: 1}  # beside one's
    with database_proxy.obj.atomic():  # one's run failed on the host: back in the queue
        assert jobqueue.retry_later(older, "w1", delay=dt.timedelta(0), error="podman rm failed")
    client.simulate_post(f"/api/deploy/apps/{two}/restart", headers=auth())  # joins the older, queued one
    assert targets(Job.get_by_id(older.id)) == {one: 1, two: 2}
    with database_proxy.obj.atomic():
        jobqueue.finish_target(retried, three, succeeded=True)
        assert jobqueue.retry_later(retried, "w2", delay=dt.timedelta(seconds=60), error="podman rm failed")
    assert jobqueue.claim("w3", lease_s=30).id == older.id  # one and two: it times out
    with database_proxy.obj.atomic():
        assert jobqueue.finish(older, "w3", succeeded=False, error="timed out")
        jobqueue.retry_alone(older, one, 1, run_after=utcnow(), error="timed out", task=None)
        solo_two = jobqueue.retry_alone(older, two, 2, run_after=utcnow(), error="timed out", task=None)
    assert targets(solo_two) == {two: 2}
    done = Job.get_by_id(retried.id)
    assert (done.state, done.lease_owner, done.finished_at is not None, targets(done)) == (
        "succeeded", None, True, {three: 1})


def test_a_reconcile_and_a_suspects_solo_converge_wait_for_each_other_only_while_one_runs(client, deployments):
    """The reconcile leaves the suspects alone: it does not wait for a solo converge in its backoff,
    and a solo converge whose backoff ended does not wait for a queued reconcile; the two never run
    together. While the solo converge runs, ordinary converges queued after the reconcile do not wait
    for it either (it waits for that run, which may hang until its timeout); once no solo converge of
    the host runs they wait for it again, and it runs as soon as no job of the host runs."""
    one, two = deployments
    first = jobqueue.claim("w1", lease_s=30)
    assert first is not None  # 'one' and 'two'
    three = create_deployment(client, subdomain="three")
    beside = jobqueue.claim("w2", lease_s=30)
    assert beside is not None and list(targets(beside)) == [three]
    with database_proxy.obj.atomic():
        reconcile = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60)  # waits for both runs
    with database_proxy.obj.atomic():  # the first run timed out: 'one' and 'two' go on alone
        assert jobqueue.finish(first, "w1", succeeded=False, error="timed out")
        solo_one = jobqueue.retry_alone(first, one, 2, run_after=utcnow() + dt.timedelta(seconds=60),
                                        error="timed out", task=None)
        solo_two = jobqueue.retry_alone(first, two, 1, run_after=utcnow() + dt.timedelta(seconds=60),
                                        error="timed out", task=None)
    assert solo_two.id > reconcile.id and jobqueue.suspects("container-host-1") == sorted([one, two])
    four = create_deployment(client, "operator-2", subdomain="four")  # queued after the reconcile
    assert jobqueue.claim("w3", lease_s=30) is None  # four's waits for the reconcile, which waits for 'beside'
    # two's solo converge is due: it runs although the reconcile is queued (it waits for 'beside').
    Job.update(run_after=utcnow()).where(Job.id == solo_two.id).execute()
    assert jobqueue.claim("w3", lease_s=30).id == solo_two.id
    # Four's converge runs beside it: it no longer waits for the reconcile, which waits for the solo run.
    assert jobqueue.claim("w4", lease_s=30).id == _converge_of(four).id
    with database_proxy.obj.atomic():
        assert jobqueue.finish(beside, "w2", succeeded=True)
    assert jobqueue.claim("w5", lease_s=30) is None  # two's solo converge still runs: never beside a reconcile
    with database_proxy.obj.atomic():
        jobqueue.finish_target(solo_two, two, succeeded=True)
        assert jobqueue.finish(solo_two, "w3", succeeded=True)
    # No solo converge runs: what is queued after the reconcile waits for it again, which waits for four's run.
    five = create_deployment(client, "operator-2", subdomain="five")
    assert jobqueue.claim("w5", lease_s=30) is None
    with database_proxy.obj.atomic():
        assert jobqueue.finish(_converge_of(four), "w4", succeeded=True)
    # one's solo converge, in its backoff, does not hold the reconcile.
    assert jobqueue.suspects("container-host-1") == [one]
    assert jobqueue.claim("w5", lease_s=30).id == reconcile.id
    Job.update(run_after=utcnow() - dt.timedelta(seconds=1)).where(Job.id == solo_one.id).execute()
    assert jobqueue.claim("w6", lease_s=30) is None  # nothing beside the reconcile
    with database_proxy.obj.atomic():
        assert jobqueue.finish(reconcile, "w5", succeeded=True)
    assert [jobqueue.claim(f"w{i}", lease_s=30).id for i in (6, 7)] == [solo_one.id, _converge_of(five).id]


def test_no_periodic_reconcile_is_queued_while_a_suspects_solo_converge_runs(client, deployments):
    """A reconcile queued then would wait for a run that may hang until its timeout, and every
    converge queued after it with it; the next timer tick queues it. The operator's own
    (reserved) reconcile is queued all the same."""
    one, _ = deployments
    first = jobqueue.claim("w1", lease_s=30)
    with database_proxy.obj.atomic():
        assert jobqueue.finish(first, "w1", succeeded=False, error="timed out")
        solo = jobqueue.retry_alone(first, one, 2, run_after=utcnow(), error="timed out", task=None)
    with database_proxy.obj.atomic():  # queued, in its backoff or due: the reconcile is queued
        queued = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60)
    assert queued is not None
    Job.delete().where(Job.id == queued.id).execute()
    assert jobqueue.claim("w2", lease_s=30).id == solo.id
    with database_proxy.obj.atomic():
        assert jobqueue.enqueue_reconcile("container-host-1", timeout_s=60) is None
        assert jobqueue.enqueue_reconcile("container-host-1", timeout_s=60, reserved_for="cli", lease_s=30)
    with database_proxy.obj.atomic():
        jobqueue.finish_target(solo, one, succeeded=True)
        assert jobqueue.finish(solo, "w2", succeeded=True)
        assert jobqueue.enqueue_reconcile("container-host-1", timeout_s=60) is not None


def _converge_of(ident: str) -> Job:
    found: Job = jobqueue.open_converge(Deployment.get_by_id(ident))
    return found


def _entry(ident: str, generation: int) -> AuditEntry:
    """The deployment's audit entry of that generation."""
    found: AuditEntry = AuditEntry.get((AuditEntry.deployment == ident) & (AuditEntry.generation == generation))
    return found


def test_reconcile_and_converge_of_one_host_never_run_together(client, deployments):
    converge = jobqueue.claim("w1", lease_s=30)
    assert converge is not None
    with database_proxy.obj.atomic():
        reconcile = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60)
        assert jobqueue.enqueue_reconcile("container-host-1", timeout_s=60) is None  # one queued is enough
    later = client.simulate_post("/api/deploy/apps", json=create_body(subdomain="three"), headers=auth())
    assert jobqueue.claim("w3", lease_s=30) is None  # the reconcile waits for the converge; 'three' waits behind it
    with database_proxy.obj.atomic():
        jobqueue.finish(converge, "w1", succeeded=True)
    assert jobqueue.claim("w2", lease_s=30).id == reconcile.id
    assert jobqueue.claim("w3", lease_s=30) is None  # nothing else on the host while it runs
    with database_proxy.obj.atomic():
        jobqueue.finish(reconcile, "w2", succeeded=True)
    after = jobqueue.claim("w3", lease_s=30)
    assert after is not None
    assert list(targets(after)) == [later.json["deployment"]["id"]]


def test_a_reserved_reconcile_is_claimed_by_its_reserver_only(client, deployments):
    with database_proxy.obj.atomic():
        job = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60, reserved_for="cli", lease_s=30)
    assert jobqueue.claim("cli", lease_s=30, job_id=job.id).id == job.id
    assert jobqueue.claim("w", lease_s=30) is None  # converges wait while the reconcile runs
    # A reserver that died before its turn blocks nobody once its hold lapsed.
    with database_proxy.obj.atomic():
        jobqueue.finish(job, "cli", succeeded=True)
        stale = jobqueue.enqueue_reconcile("container-host-1", timeout_s=60, reserved_for="gone", lease_s=30)
    Job.update(lease_expires_at=utcnow() - dt.timedelta(seconds=1)).where(Job.id == stale.id).execute()
    assert jobqueue.claim("w", lease_s=30) is not None


def test_concurrent_claims_never_share_a_job(client, settings):
    with database_proxy.obj.atomic():
        for i in range(12):  # a reconcile of each of 12 hosts: 12 runnable jobs
            jobqueue.enqueue_reconcile(f"host-{i}", timeout_s=60)
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


def test_api_writes_never_fail_while_claims_run(client, settings):
    """Claims hold the write lock briefly (SQLite's BEGIN IMMEDIATE, PostgreSQL's claim lock): creates
    made while two workers claim hundreds of jobs all succeed (no 'database is locked')."""
    with database_proxy.obj.atomic():
        for i in range(300):
            jobqueue.enqueue_reconcile(f"host-{i}", timeout_s=60)
    claimed: list[int] = []
    answers: list[tuple[int, str]] = []
    creating = threading.Event()

    def claim(name: str) -> None:
        database_proxy.obj.connect(reuse_if_open=True)
        creating.wait()
        while (job := jobqueue.claim(name, lease_s=30)) is not None:
            claimed.append(job.id)
        database_proxy.obj.close()

    def create(i: int) -> None:
        creating.set()
        for n in range(4):
            resp = client.simulate_post("/api/deploy/apps", json=create_body(subdomain=f"during-{i}-{n}"),
                                        headers=auth(f"creator-{i}-{n}"))
            answers.append((resp.status_code, resp.text))
        database_proxy.obj.close()

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(2)]
    threads += [threading.Thread(target=create, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [text for status, text in answers if status != 201] == []
    assert len(answers) == 16 and len(set(claimed)) == len(claimed) >= 300


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


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the plan read is SQLite's EXPLAIN QUERY PLAN
def test_a_claim_seeks_however_many_jobs_are_queued_and_however_long_the_history(client, deployments):
    """SQLite's plan of the claim: each way a job is due is a walk of jobs_open in id order
    that stops at its first claimable job (no sort of every due job), and every subquery
    seeks by an index (no table scanned); only the two found are sorted."""
    db = database_proxy.obj
    now = utcnow()
    queued, lapsed = (jobqueue._CLAIMABLE.format(p=db.param, only="j.reserved_for IS NULL", due=due.format(p=db.param))
                      for due in jobqueue._DUE)
    rows = db.execute_sql("EXPLAIN QUERY PLAN " + jobqueue._CLAIM.format(queued=queued, lapsed=lapsed),
                          (now,) * 12).fetchall()
    parent = {row[0]: row[1] for row in rows}

    def within_a_side(node: int) -> bool:
        while node:
            if any(r[0] == node and str(r[3]).startswith("CO-ROUTINE") for r in rows):
                return True
            node = parent.get(node, 0)
        return False

    inside = [str(r[3]) for r in rows if within_a_side(r[1])]
    assert sum(step.startswith("SEARCH j USING INDEX jobs_open") for step in inside) == 2, inside
    assert not [step for step in inside if step.startswith("SCAN") or "TEMP B-TREE" in step], inside
    for index in ("jobs_host_state", "deployments_subdomain", "job_targets_deployment", "jobs_lock_key"):
        assert any(index in step for step in inside), (index, inside)
    claimed = jobqueue.claim("w", 30)
    assert claimed is not None and claimed.action == "converge"


def test_a_locked_row_is_the_row_as_a_select_reads_it(client):
    """db.lock_row reuses its statement (built once per model and database): each id gets its own row."""
    from buddo_deploy.db import lock_row

    first, second = (create_deployment(client, subdomain=name) for name in ("lock-one", "lock-two"))
    with write_transaction(database_proxy.obj):
        for ident in (first, second, first):
            row = lock_row(Deployment, ident)
            assert row is not None
            assert row.__data__ == Deployment.get_by_id(ident).__data__
        assert lock_row(Deployment, "00000000-0000-0000-0000-000000000000") is None
        job = Job.select().first()
        assert job is not None and lock_row(Job, job.id).__data__ == job.__data__
