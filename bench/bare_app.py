"""The baseline: a bare Falcon app returning the same status JSON, no auth, no database."""

import falcon

BODY = (
    b'{"id":"00000000-0000-0000-0000-000000000000","status":"running","subdomain":"bench",'
    b'"health_status":"healthy","last_health_check":"2026-05-21T10:05:00Z"}'
)


class Status:
    def on_get(self, req: falcon.Request, resp: falcon.Response, deployment_id: str) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = BODY


app = falcon.App()
app.add_route("/api/deploy/apps/{deployment_id}/status", Status())
