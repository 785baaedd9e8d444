"""gunicorn settings of ``buddo-deploy serve`` (``--config python:buddo_deploy.gunicorn_conf``).

``serve`` passes ``--workers`` and ``--threads`` (BUDDO_API_WORKERS, BUDDO_API_THREADS); the
rest is here, so bench/api.py serves its baseline app the same way.
"""

from __future__ import annotations

from typing import Any

from .metrics import mark_process_dead

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


# gunicorn's own answer to a longer request line is an undocumented HTML 414; 8190 is the
# most it allows (0 would mean no bound), twice its default, room for every query we define.
limit_request_line = 8190
