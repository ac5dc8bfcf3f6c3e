"""Pure helpers for the job's status: conditions that keep their transition time, and change detection."""

from __future__ import annotations

import datetime as dt
from typing import Any

from elastra.api.trainingjob import Condition, TrainingJobStatus


def set_condition(
    conditions: tuple[Condition, ...],
    *,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
) -> tuple[Condition, ...]:
    """Pure: `conditions` with `type_` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition(type=type_, status=value, reason=reason, message=message, last_transition_time=since)
    return (*(c for c in conditions if c.type != type_), new)


def drop_condition(conditions: tuple[Condition, ...], type_: str) -> tuple[Condition, ...]:
    return tuple(c for c in conditions if c.type != type_)


def status_body(status: TrainingJobStatus) -> dict[str, Any]:
    """The status as the API stores it (camelCase JSON)."""
    body: dict[str, Any] = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return body


def changed(old: TrainingJobStatus, new: TrainingJobStatus) -> bool:
    """Whether a status patch is needed."""
    return status_body(old) != status_body(new)
