"""Job kinds as classes with one run template (AWX's ``BaseTask.run`` with hooks).

Every kind of job goes the same way (:meth:`BaseTask.run`): ``start`` marks the claimed
jobs as begun and builds the :class:`~buddo_deploy.services.engine.Plan` (or finds nothing
to do), one supervised playbook run (:class:`JobRun`: leases renewed, events recorded,
cancelled when either fails), then ``finish`` records the outcome. The worker
(``worker.py``) claims a job and hands it to :func:`task_for`; ``buddo-deploy reconcile``
runs its reserved job through the same :class:`ReconcileTask`.
"""

from __future__ import annotations

from .base import BaseTask, JobRun
from .converge import ConvergeTask
from .output import OutputTask
from .reconcile import ReconcileTask
from .run import RunTask

TASKS: dict[str, type[BaseTask]] = {task.kind: task for task in (ConvergeTask, ReconcileTask, OutputTask, RunTask)}


def task_for(kind: str) -> type[BaseTask]:
    """The task class of a job kind (``Job.action``)."""
    return TASKS[kind]


__all__ = ["TASKS", "BaseTask", "ConvergeTask", "JobRun", "OutputTask", "ReconcileTask", "RunTask", "task_for"]
