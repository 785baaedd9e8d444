"""App output (issue 10): validation, reads a worker answers, masking; answered at once, reads coalesced."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from buddo_deploy import jobqueue
from buddo_deploy.models import Job, JobEvent, utcnow
from buddo_deploy.results import PlaybookResult
from buddo_deploy.services import output
from buddo_deploy.tasks import OutputTask

from tests.helpers import auth, create_deployment, run_job

LINES = [{"at": "2026-12-04T20:51:05.100000001Z", "stream": "stdout", "text": "token is t0ps3cret-value"},
         {"at": "2026-12-04T20:51:05.2Z", "stream": "stderr", "text": "crashed"},
         {"at": "2026-12-04T20:51:06Z", "stream": "stdout", "text": "bye"}]


@pytest.mark.parametrize("params", [
    {"tail": "0"}, {"tail": "5001"}, {"tail": "²"}, {"tail": "ten"},
    {"since": "yesterday"}, {"since": "2026-01-01T00:00:00"}, {"since": "2026-13-01T00:00:00Z"},
    {"since": "0.5"}, {"since": "1767225600"},
])
def test_bad_tail_and_since_are_422_and_queue_nothing(client, params):
    ident = create_deployment(client)
    before = Job.select().count()
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/output", params=params, headers=auth())
    assert resp.status_code == 422 and resp.json["error"]["code"] == "validation_failed", resp.text
    assert Job.select().count() == before


def test_another_operator_403_and_destroyed_422(client, settings):
    ident = create_deployment(client)
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/output", headers=auth("operator-2"))
    assert resp.status_code == 403
    client.simulate_delete(f"/api/deploy/apps/{ident}", headers=auth())
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/output", headers=auth())
    assert resp.status_code == 422 and resp.json["error"]["code"] == "deployment_destroyed"


def answer(settings, lines=LINES, ok=True):
    """Act as the worker: claim the next read, 'run' output.yml, record what it returned."""
    job = None
    while job is None or job.action != "output":
        job = jobqueue.claim("w", 30)
        assert job is not None
        if job.action != "output":
            jobqueue.finish(job, "w", succeeded=True)
    plan = OutputTask(settings, "w").start(job)
    assert plan is not None and plan.playbook == "output.yml"
    variables = plan.variables
    stats = {"buddo_output": {"lines": lines, "container": {"id": "c1", "name": "x", "state": "exited",
                                                            "exit_code": 3}}}
    result = PlaybookResult(status="successful" if ok else "failed", rc=0 if ok else 2, stats=stats if ok else {},
                            message=None if ok else "host unreachable")
    output.finish(job, "w", result, plan.secrets)
    return job, variables, plan


def reads() -> list[Job]:
    return list(Job.select().where(Job.action == "output").order_by(Job.id))


def get(client, ident, **params):
    return client.simulate_get(f"/api/deploy/apps/{ident}/output", params=params, headers=auth())


def age(job: Job, seconds: float) -> None:
    """Make a read (or its failure) this much older."""
    finished = Job.get_by_id(job.id).finished_at
    Job.update(finished_at=finished - dt.timedelta(seconds=seconds)).where(Job.id == job.id).execute()


def test_the_first_request_is_202_at_once_and_the_read_masked_once_in(client, settings):
    ident = create_deployment(client, env_vars={"TOKEN": "t0ps3cret-value"})
    run_job(settings)
    first = get(client, ident, tail="2")
    assert first.status_code == 202, first.text
    assert first.headers["Retry-After"] == "2"
    assert first.headers["Location"] == f"/api/deploy/apps/{ident}/output?tail=2"
    [read] = reads()
    assert first.json["lines"] == [] and first.json["collected_at"] is None
    assert first.json["refresh"] == {"job_id": read.id, "state": "queued", "queued_at": first.json["refresh"][
        "queued_at"]}
    # Asking again while it is queued joins it.
    assert get(client, ident).json["refresh"]["job_id"] == read.id
    assert len(reads()) == 1

    job, variables, plan = answer(settings)
    assert variables["output_request"] == {"id": ident, "host": plan.host, "container_name": variables[
        "output_request"]["container_name"], "tail": 100, "since": ""}
    assert "t0ps3cret" not in json.dumps(variables)

    resp = get(client, ident, tail="2")
    assert resp.status_code == 200, resp.text
    assert [(line["stream"], line["text"]) for line in resp.json["lines"]] == [("stderr", "crashed"),
                                                                                ("stdout", "bye")]
    assert resp.json["container"]["exit_code"] == 3
    assert resp.json["collected_at"] and resp.json["age_s"] is not None and resp.json["age_s"] < 5
    assert resp.json["refresh"] is None and resp.json["last_error"] is None
    since = get(client, ident, since="2026-12-04T21:51:05.15+01:00").json["lines"]
    assert [line["text"] for line in since] == ["crashed", "bye"]
    assert [line["text"] for line in get(client, ident).json["lines"]] == ["token is ********", "crashed", "bye"]
    assert len(reads()) == 1  # fresh: every request above answered from the one read
    stored = Job.get_by_id(job.id)
    assert stored.state == "succeeded" and "t0ps3cret" not in stored.result and "********" in stored.result
    assert not any("t0ps3cret" in (e.message or "") for e in JobEvent.select())


def test_a_stale_read_is_answered_while_one_new_read_is_queued(client, settings):
    ident = create_deployment(client)
    get(client, ident)
    first, _, _ = answer(settings)
    age(first, settings.output_max_age_s + 1)

    stale = get(client, ident)
    assert stale.status_code == 200 and len(stale.json["lines"]) == 3
    assert stale.json["age_s"] > settings.output_max_age_s
    refresh = stale.json["refresh"]
    assert refresh["state"] == "queued"
    assert get(client, ident).json["refresh"]["job_id"] == refresh["job_id"]  # coalesced
    assert len(reads()) == 2

    answer(settings, LINES[:1])
    fresh = get(client, ident)
    assert fresh.status_code == 200 and len(fresh.json["lines"]) == 1 and fresh.json["refresh"] is None
    assert Job.get_by_id(first.id).result is None  # one read's lines per deployment


def test_a_failed_read_is_502_at_once_and_not_retried_within_the_max_age(client, settings):
    ident = create_deployment(client)
    get(client, ident)
    failed, _, _ = answer(settings, ok=False)
    resp = get(client, ident)
    assert resp.status_code == 502 and resp.json["error"]["code"] == "output_failed"
    assert "host unreachable" in resp.json["error"]["message"]
    assert resp.json["error"]["details"]["job_id"] == failed.id
    assert 1 <= int(resp.headers["Retry-After"]) <= settings.output_max_age_s
    assert get(client, ident).status_code == 502
    assert len(reads()) == 1  # no read per request while the host is down

    age(failed, settings.output_max_age_s + 1)
    assert get(client, ident).status_code == 202  # a new read
    answer(settings)
    done = reads()[-1]
    age(done, settings.output_max_age_s + 1)
    get(client, ident)
    answer(settings, ok=False)
    resp = get(client, ident)  # an earlier read is there: its lines, and why the latest failed
    assert resp.status_code == 200 and len(resp.json["lines"]) == 3
    assert resp.json["last_error"] == "host unreachable" and resp.json["refresh"] is None


def test_a_longer_tail_than_the_read_asks_for_a_longer_read(client, settings):
    ident = create_deployment(client)
    get(client, ident, tail="50")
    many = [{"at": f"2026-12-04T20:51:{i:02d}Z", "stream": "stdout", "text": str(i)} for i in range(60)] * 2
    answer(settings, many[:100])  # the read asked for 100 and found 100: there may be more
    assert get(client, ident, tail="100").status_code == 200
    longer = get(client, ident, tail="300")
    assert longer.status_code == 202
    assert json.loads(Job.get_by_id(longer.json["refresh"]["job_id"]).result)["request"]["tail"] == 300
    get(client, ident, tail="400")  # the queued read grows to cover this one too
    assert json.loads(reads()[-1].result)["request"]["tail"] == 400 and len(reads()) == 2
    answer(settings, many[:7])  # fewer lines than asked for: all of them, any tail
    assert len(get(client, ident, tail="5000").json["lines"]) == 7


def test_destroy_drops_the_lines(client, settings):
    ident = create_deployment(client)
    get(client, ident)
    job, _, _ = answer(settings)
    assert Job.get_by_id(job.id).result is not None
    assert client.simulate_delete(f"/api/deploy/apps/{ident}", headers=auth()).status_code == 200
    assert Job.get_by_id(job.id).result is None


def test_a_read_does_not_wait_behind_a_converge_nor_another_deployments_read(client, settings):
    ident = create_deployment(client)
    other = create_deployment(client, subdomain="other-app")
    converge = jobqueue.claim("w", 30)
    assert converge is not None  # the first deploy runs (and holds the deployment's lock key)
    assert converge.action == "converge"
    get(client, ident)
    get(client, other)
    claimed = [jobqueue.claim(f"w{i}", 30) for i in range(3)]
    actions = sorted(job.action for job in claimed if job is not None)
    assert actions.count("output") == 2


def test_a_since_before_the_epoch_asks_for_every_line():
    from buddo_deploy.schemas import OutputQuery

    assert OutputQuery.model_validate({"since": "0001-01-01T00:00:00Z"}).since is None
    assert OutputQuery.model_validate({"since": "2026-01-01T00:00:00Z"}).since is not None


def test_select_lines_reads_podman_timestamps():
    since = dt.datetime(2026, 12, 4, 20, 51, 5, 100000, tzinfo=dt.UTC)
    # Compared to the microsecond (.100000001 is .1): only what came after.
    assert [line["text"] for line in output.select_lines(LINES, 5, since)] == ["crashed", "bye"]
    assert output.select_lines(LINES, 1, None) == LINES[-1:]
    assert output.select_lines([{"at": "garbage", "text": "x"}], 5, since) == [{"at": "garbage", "text": "x"}]
    assert utcnow()  # naive UTC, as stored
