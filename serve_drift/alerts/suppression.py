"""Why a notification is held back: maintenance, a suppression schedule, or an inhibiting rule.

>>> from serve_drift.alerts.config import SuppressionSchedule
>>> weekend = SuppressionSchedule(name="weekend-batch", weekdays=("saturday",),
...     start="02:00", end="04:00")
>>> saturday_3am = 1_767_409_200.0  # 2026-01-03T03:00:00Z, a Saturday
>>> schedule_active(weekend, at=saturday_3am), schedule_active(weekend, at=saturday_3am + 3600)
(True, False)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

from serve_drift.alerts.config import WEEKDAYS, SuppressionSchedule, minutes_of_day

__all__ = ["labels_agree", "schedule_active", "schedules_holding"]


def schedule_active(schedule: SuppressionSchedule, *, at: float) -> bool:
    """Whether Unix time ``at`` falls in the schedule's weekly range (in its timezone)."""
    local = datetime.fromtimestamp(at, ZoneInfo(schedule.timezone))
    if WEEKDAYS[local.weekday()] not in schedule.weekdays:
        return False
    minute = local.hour * 60 + local.minute + local.second / 60.0
    return minutes_of_day(schedule.start) <= minute < minutes_of_day(schedule.end)


def schedules_holding(
    schedules: Iterable[SuppressionSchedule], *, rule: str, at: float
) -> str | None:
    """The name of the first schedule that holds ``rule`` back at ``at``, if any."""
    for schedule in schedules:
        applies = not schedule.rules or rule in schedule.rules
        if applies and schedule_active(schedule, at=at):
            return schedule.name
    return None


def labels_agree(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Equal on every label both have (Alertmanager's ``equal`` over their common labels)."""
    return all(a[key] == b[key] for key in a.keys() & b.keys())
