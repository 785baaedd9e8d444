from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import falcon
from pydantic import ValidationError

from ..domain_errors import Invalid, LimitReached, Unavailable
from ..schemas import (
    DeploymentCreate,
    DeploymentEnvelope,
    DeploymentList,
    DeploymentOut,
    DeploymentUpdate,
    DestroyOut,
    ListQuery,
    LogList,
    LogsQuery,
    OutputOut,
    OutputQuery,
    OutputRefresh,
    ReleaseList,
    ReleaseOut,
    ReleasesQuery,
    RollbackIn,
    RunEnvelope,
    RunIn,
    RunList,
    RunOut,
    RunQuery,
    StatusOut,
    StatusQuery,
    ValidationContext,
)
from ..services import follow
from ..services.lifecycle import Lifecycle, statuses_reached
from ..services.runs import Runs, runs_finished
from ..vocabulary import FINISHED_RUN_STATES
from .common import (
    deployment_out,
    log_entry_out,
    parse_json_object,
    parse_query,
    read_body,
    read_model,
    send,
    validation_error,
    wait_or_park,
)

# A read is one short playbook run on the host: about this long (bench/api.py).
OUTPUT_RETRY_AFTER_S = 2
# The poll of this process's run streams: their lines, then the run itself as the API shows it.
RUN_STREAMS = follow.RunStreams(lambda run: RunEnvelope(run=run_out(run)).model_dump_json())


class AppsResource:
    def __init__(self, lifecycle: Lifecycle, context: ValidationContext) -> None:
        self.lifecycle = lifecycle
        self.runs = Runs(lifecycle.settings)
        self.max_body = lifecycle.settings.max_body_bytes
        self.context = context

    def _out(self, deployment: Any) -> DeploymentOut:
        return deployment_out(deployment, self.lifecycle.url_for(deployment),
                              self.lifecycle.custom_domain_verification(deployment))

    def _send_deployment(self, resp: falcon.Response, deployment: object, status: str = falcon.HTTP_200) -> None:
        send(resp, DeploymentEnvelope(deployment=self._out(deployment)), status)

    # collection

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = parse_query(req, ListQuery)
        page = self.lifecycle.list_deployments(
            req.context.principal,
            limit=query.limit,
            cursor=query.cursor,
            status=query.status,
            include_destroyed=query.include_destroyed,
        )
        items = [self._out(d) for d in page.deployments]
        send(resp, DeploymentList(deployments=items, next_cursor=page.next_cursor))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = read_model(req, DeploymentCreate, self.max_body, self.context)
        deployment = self.lifecycle.create_deployment(req.context.principal, request)
        resp.location = f"/api/deploy/apps/{deployment.id}"
        self._send_deployment(resp, deployment, falcon.HTTP_201)

    # item

    def on_get_item(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        self._send_deployment(resp, self.lifecycle.get_owned(req.context.principal, deployment_id))

    def on_patch_item(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        request = read_model(req, DeploymentUpdate, self.max_body, self.context)
        self._send_deployment(resp, self.lifecycle.update(req.context.principal, deployment_id, request))

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        deployment = self.lifecycle.destroy(req.context.principal, deployment_id)
        send(resp, DestroyOut(message="Deployment destroyed", id=deployment.id))

    def on_get_status(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        """At once, or with ``wait_for`` once the status is one of those (or at the timeout): our
        server parks the request meanwhile (serving.py), holding no thread."""
        query = parse_query(req, StatusQuery)
        wanted = query.statuses
        status = wait_or_park(req, lambda: self.lifecycle.status_of(req.context.principal, deployment_id),
                              lambda found: not wanted or found["status"] in wanted, (str(deployment_id), wanted),
                              statuses_reached, query.timeout)
        if status is None:
            return  # parked
        if wanted:
            resp.set_header("Wait-Result", "reached" if status["status"] in wanted else "timeout")
        send(resp, StatusOut(**status))

    def on_get_logs(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        query = parse_query(req, LogsQuery)
        entries, next_cursor = self.lifecycle.audit_log(req.context.principal, deployment_id, limit=query.limit,
                                                        cursor=query.cursor)
        send(resp, LogList(logs=[log_entry_out(entry) for entry in entries], next_cursor=next_cursor))

    def on_post_restart(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        self._send_deployment(resp, self.lifecycle.restart(req.context.principal, deployment_id))

    def on_get_releases(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        query = parse_query(req, ReleasesQuery)
        rows, next_number, kept = self.lifecycle.list_releases(
            req.context.principal, deployment_id, limit=query.limit,
            before=int(query.cursor) if query.cursor is not None else None)
        items = [ReleaseOut(number=r.number, image=r.image, image_digest=r.image_digest, pinned=r.pinned,
                            rollback_of=r.rollback_of, initiated_by=r.initiated_by, created_at=r.created_at,
                            kept=r.image_digest in kept, port=r.port,
                            env_var_names=json.loads(r.env_var_names) if r.env_var_names is not None else None)
                 for r in rows]
        send(resp, ReleaseList(releases=items, next_cursor=str(next_number) if next_number is not None else None))

    def on_post_runs(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        request = read_model(req, RunIn, self.max_body)
        run = self.runs.create(req.context.principal, deployment_id, request.command, request.timeout_s)
        resp.location = f"/api/deploy/apps/{deployment_id}/runs/{run.id}"
        send(resp, RunEnvelope(run=run_out(run)), falcon.HTTP_202)

    def on_get_runs(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        send(resp, RunList(runs=[run_out(r) for r in self.runs.list(req.context.principal, deployment_id, 20)]))

    def on_get_run(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID,
                   run_id: uuid.UUID) -> None:
        """At once, or with ``wait`` once the run finished (parked meanwhile, as a status wait);
        with ``follow``, its lines as Server-Sent Events from its first, then the run (``event: end``)."""
        query = parse_query(req, RunQuery)
        if query.follow:
            mine = str(self.runs.get(req.context.principal, deployment_id, run_id).id)
            owner = req.context.principal.operator_id
            self._stream(req, resp, RUN_STREAMS, lambda: follow.Follower(mine, owner, 0))
            return
        run = wait_or_park(req, lambda: self.runs.get(req.context.principal, deployment_id, run_id),
                           lambda found: not query.wait or found.state in FINISHED_RUN_STATES, str(run_id),
                           runs_finished, query.wait)
        if run is not None:  # else parked
            send(resp, RunEnvelope(run=run_out(run)))

    def on_get_output(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        """At once: the latest read (maybe with a newer one queued), or 202 while the first is."""
        query = parse_query(req, OutputQuery)
        if query.follow:
            self._follow(req, resp, deployment_id)
            return
        found = self.lifecycle.app_output(req.context.principal, deployment_id, tail=query.tail, since=query.since)
        pending = found.pending
        body = OutputOut(
            lines=found.lines, container=found.container, collected_at=found.collected_at, age_s=found.age_s,
            refresh=OutputRefresh(job_id=pending.id, state=pending.state, queued_at=pending.created_at)
            if pending is not None else None,
            last_error=found.failed.last_error if found.failed is not None else None)
        if found.collected_at is None:
            resp.location = req.relative_uri  # ask here again
            resp.retry_after = OUTPUT_RETRY_AFTER_S
            send(resp, body, falcon.HTTP_202)
            return
        send(resp, body)

    def _follow(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        """The app's lines as Server-Sent Events while the client stays (services/follow.py)."""
        principal = req.context.principal
        d = self.lifecycle.get_owned(principal, deployment_id)
        if d.desired_state == "absent":
            raise Invalid("The deployment is destroyed", code="deployment_destroyed")
        self._stream(req, resp, follow.STREAMS,
                     lambda: follow.Follower(str(d.id), principal.operator_id, follow.follow(str(d.id))))

    @staticmethod
    def _stream(req: falcon.Request, resp: falcon.Response, poll: Any,
                start: Callable[[], follow.Follower]) -> None:
        """Answer with Server-Sent Events (``start``: the follower, from ``Last-Event-ID`` when
        given): our server streams them from its waker thread, holding no request thread."""
        principal = req.context.principal
        stream, streams = req.env.get("buddo.stream"), req.env.get("buddo.streams")
        if stream is None or streams is None:
            raise Unavailable("Following output needs the API's own server (buddo-deploy serve)",
                              code="follow_unavailable")
        mine = sum(1 for key in streams() if isinstance(key, follow.Follower) and key.operator_id ==
                   principal.operator_id)
        if mine >= follow.FOLLOWERS_PER_OPERATOR:
            raise LimitReached(f"At most {follow.FOLLOWERS_PER_OPERATOR} output streams at once per operator",
                               code="too_many_followers", headers={"Retry-After": "5"})
        follower = start()
        resumed = req.get_header("Last-Event-ID") or ""
        if resumed.isdigit() and len(resumed) < 19:
            follower.cursor = int(resumed)
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in {"content-type", "content-length"}}
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if "\r" not in v and "\n" not in v)
        stream(follower, poll,
               (f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                f"X-Accel-Buffering: no\r\nConnection: close\r\n{head}\r\nretry: 2000\n\n").encode(),
               follow.MAX_FOLLOW_S)
        req.context.parked = True

    def on_post_rollback(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        raw = read_body(req, self.max_body)
        try:
            body = RollbackIn.model_validate(parse_json_object(raw) if raw.strip() else {})
        except ValidationError as exc:
            raise validation_error(exc) from exc
        self._send_deployment(resp, self.lifecycle.rollback(req.context.principal, deployment_id, body.release))

    def on_post_stop(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        self._send_deployment(resp, self.lifecycle.stop(req.context.principal, deployment_id))


def run_out(run: Any) -> RunOut:
    # The command is not shown: it may hold a secret (the operator has it).
    return RunOut(id=run.id, deployment_id=run.deployment_id, state=run.state, exit_code=run.exit_code,
                  timeout_s=run.timeout_s, error=run.error, initiated_by=run.initiated_by,
                  inserted_at=run.inserted_at, started_at=run.started_at, finished_at=run.finished_at,
                  output=json.loads(run.output) if run.output else [])
