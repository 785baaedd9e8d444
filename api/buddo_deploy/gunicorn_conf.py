"""gunicorn settings of ``buddo-deploy serve`` (``--config python:buddo_deploy.gunicorn_conf``)."""

from __future__ import annotations

from typing import Any

from .metrics import mark_process_dead


def child_exit(server: Any, worker: Any) -> None:
    """A worker's metrics files: its counters stay in the totals, its live gauges go."""
    mark_process_dead(worker.pid)


# gunicorn's own answer to a longer request line is an undocumented HTML 414; 8190 is the
# most it allows (0 would mean no bound), twice its default, room for every query we define.
limit_request_line = 8190
