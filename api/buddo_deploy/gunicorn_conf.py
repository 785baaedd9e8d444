"""gunicorn settings of ``buddo-deploy serve`` (``--config python:buddo_deploy.gunicorn_conf``).

``serve`` passes ``--workers`` and ``--threads`` (BUDDO_API_WORKERS, BUDDO_API_THREADS); the
rest is here, so bench/api.py serves its baseline app the same way.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

from .metrics import mark_process_dead

# Caddy's ask URL carries the ask secret as ?token=: the access log shows it blanked.
_TOKEN = re.compile(r"((?:^|[?&])token=)[^&\s]*")


def redact(text: str) -> str:
    return _TOKEN.sub(r"\1-", text)


class AccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with the ask secret kept out of the access log (request line and query)."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "q"):
            if isinstance(atoms.get(key), str):
                atoms[key] = redact(atoms[key])
        return atoms


# gthread, with each request read in the main loop before it gets a thread (serving.py): a
# slow client holds a connection, never a thread; a long request holds one thread of many.
worker_class = "buddo_deploy.serving.HeadFirstWorker"
threads = 8
# Idle kept-alive connections wait in the poller (no thread); a short keep-alive frees their
# connection slots (worker_connections) soon.
keepalive = 5
# gunicornc's control socket has one default path per user ($XDG_RUNTIME_DIR or ~/.gunicorn):
# a second server on the machine (the tests', the bench's) would take it over from the first.
control_socket_disable = True


def child_exit(server: Any, worker: Any) -> None:
    """A worker's metrics files: its counters stay in the totals, its live gauges go."""
    mark_process_dead(worker.pid)


logger_class = AccessLogger
# gunicorn's own answer to a longer request line is an undocumented HTML 414; 8190 is the
# most it allows (0 would mean no bound), twice its default, room for every query we define.
limit_request_line = 8190
