"""What a handler tells serve-drift about the request it is serving (flags, stats, context)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve_drift.eventlog.schema import InputStats


@dataclass(frozen=True)
class RowMark:
    """What the handler said about one input row of the current request."""

    flags: tuple[str, ...] = ()
    exclude_from_drift: bool = False
    input_stats: InputStats | None = None


@dataclass
class RequestMarks:
    rows: dict[int | None, RowMark] = field(default_factory=dict)
    outcome: str | None = None
    context: dict[str, str] = field(default_factory=dict)

    def row(self, index: int) -> RowMark:
        return self.rows.get(index) or self.rows.get(None) or RowMark()


# One mutable record per monitored request, set before the handler runs. The handler (or a
# thread started with ``asyncio.to_thread``, which copies the context) updates it in place.
_REQUEST_MARKS: ContextVar[RequestMarks | None] = ContextVar(
    "serve_drift_request_marks", default=None
)


@contextmanager
def request_marks(*, context: Mapping[str, str] | None = None) -> Iterator[RequestMarks]:
    marks = RequestMarks(context=dict(context or {}))
    token = _REQUEST_MARKS.set(marks)
    try:
        yield marks
    finally:
        _REQUEST_MARKS.reset(token)


def mark_request(
    *,
    flags: Sequence[str] = (),
    exclude_from_drift: bool = False,
    row: int | None = None,
    outcome: str | None = None,
    input_stats: InputStats | None = None,
) -> bool:
    """Mark the monitored request being handled; returns False outside one (then a no-op).

    ``flags``, ``exclude_from_drift`` and ``input_stats`` go on the event of input ``row``
    (every row when ``None``); the monitor keeps excluded rows out of drift windows and counts
    them. ``outcome`` replaces ``"ok"`` in the ``serve_drift.requests`` counter (e.g.
    ``"rejected"`` when the handler answers a 4xx itself).

    >>> mark_request(flags=["constant"], exclude_from_drift=True)
    False
    """
    marks = _REQUEST_MARKS.get()
    if marks is None:
        return False
    if flags or exclude_from_drift or input_stats is not None:
        previous = marks.rows.get(row, RowMark())
        marks.rows[row] = RowMark(
            flags=tuple(flags) or previous.flags,
            exclude_from_drift=exclude_from_drift or previous.exclude_from_drift,
            input_stats=input_stats or previous.input_stats,
        )
    if outcome is not None:
        marks.outcome = outcome
    return True
