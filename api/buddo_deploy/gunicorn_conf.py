"""gunicorn settings of ``buddo-deploy serve`` (``--config python:buddo_deploy.gunicorn_conf``)."""

from __future__ import annotations

from typing import Any

from .metrics import mark_process_dead


def child_exit(server: Any, worker: Any) -> None:
    """A worker's metrics files: its counters stay in the totals, its live gauges go."""
    mark_process_dead(worker.pid)
