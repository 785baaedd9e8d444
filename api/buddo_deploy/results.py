"""What a playbook run reports: its result and the summary of each event.

Plain data, apart from the runner bridge (runner.py), so that services and the job tasks
read a run's outcome without importing ansible_runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EventSummary:
    event: str
    host: str | None
    task: str | None
    status: str | None
    message: str | None


@dataclass
class PlaybookResult:
    status: str  # successful | failed | timeout | canceled
    rc: int | None
    failed_task: str | None = None
    failed_host: str | None = None
    message: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    # The status of the event that failed the run: ``unreachable`` (the host, not an app) or ``failed``.
    failed_status: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "successful"
