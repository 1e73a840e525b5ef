"""Windows of embeddings to test: by count or by time, tumbling or sliding with a stride.

Every model version has its own stream, so a window never mixes model versions. A window
carries the embeddings, the softmax probabilities when every row has them, and the events.

- :class:`CountWindows`: ``size`` rows; with ``stride < size`` a window of the latest ``size``
  rows every ``stride`` rows (sliding), else consecutive disjoint windows (tumbling).
- :class:`TimeWindows`: the rows whose event timestamps fall in ``[start, start + duration_s)``,
  starts on a grid of ``stride_s`` (default ``duration_s``); a window closes when a later row
  arrives or :meth:`TimeWindows.flush_due` sees its end pass. Late rows (timestamps before the
  open window, e.g. a slow replica) join the open window. Windows with fewer than ``min_size``
  rows, and rows beyond ``size`` in one window, are not tested: their events are handed back
  through :meth:`Windows.take_untested`, so the monitor can still log them.

>>> from serve_drift.config import WindowConfig
>>> make_windows(WindowConfig(size=100, stride=50)).stride
50
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from serve_drift.config import WindowConfig
from serve_drift.messages import EventBatch, InferenceEvent


@dataclass(frozen=True)
class Window:
    """``sampling_rate`` is the window's rows over the served requests they stand for (the
    sum of their ``sampling_weight``): 1.0 unless replicas shipped a sample of their rows."""

    index: int
    model_version: str
    embeddings: np.ndarray
    events: tuple[InferenceEvent, ...]
    probabilities: np.ndarray | None = None
    sampling_rate: float = 1.0


@dataclass
class _Row:
    # Views into the batch, so a held row keeps the message it came in alive (Ray delivers a
    # batch's arrays as views into it): bounded, as rows are held only while a window may
    # still include them. What outlives the windows keeps copies (see ``traffic_sample``).
    embedding: np.ndarray
    probabilities: np.ndarray | None
    event: InferenceEvent
    tested: bool = False  # included in a window handed out for testing


@dataclass
class _Stream:
    """The rows of one model version that a future window may still include."""

    rows: deque[_Row] = field(default_factory=deque)
    new_rows: int = 0  # rows since the last window (count windows)
    start: float | None = None  # the open window's start (time windows)


class Windows:
    """What both window kinds share: per-version streams, numbering, untested events."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._next_index = 0
        self._untested: list[InferenceEvent] = []

    def add(self, batch: EventBatch, *, keep: np.ndarray) -> list[Window]:
        """Add the rows of ``batch`` where ``keep`` is true; return the windows that closed."""
        probabilities = batch.probabilities
        closed: list[Window] = []
        for row in np.flatnonzero(keep):
            event = batch.events[row]
            item = _Row(
                embedding=batch.embeddings[row],
                probabilities=None if probabilities is None else probabilities[row],
                event=event,
            )
            stream = self._streams.setdefault(event.model_version, _Stream())
            closed.extend(self._add_row(event.model_version, stream, item))
        return closed

    def flush_due(self, now: float) -> list[Window]:
        """Windows whose time is up although no later row arrived (time windows only)."""
        return []

    def take_untested(self) -> tuple[InferenceEvent, ...]:
        """Events of rows that no window will test; each is handed out once."""
        events, self._untested = tuple(self._untested), []
        return events

    def start_at(self, index: int) -> None:
        """Number the next window ``index`` (a restarted monitor continues its predecessor's)."""
        self._next_index = index

    def pending_rows(self) -> int:
        """Rows received that no window has included yet."""
        raise NotImplementedError

    def _pending_events(self) -> list[InferenceEvent]:
        return [r.event for s in self._streams.values() for r in s.rows if not r.tested]

    def _add_row(self, version: str, stream: _Stream, row: _Row) -> list[Window]:
        raise NotImplementedError

    def _window(self, version: str, rows: list[_Row]) -> Window:
        for row in rows:
            row.tested = True
        window = Window(
            index=self._next_index,
            model_version=version,
            embeddings=np.stack([r.embedding for r in rows]),
            events=tuple(r.event for r in rows),
            probabilities=_stack_probabilities(rows),
            sampling_rate=len(rows) / sum(r.event.sampling_weight for r in rows),
        )
        self._next_index += 1
        return window


class CountWindows(Windows):
    """Windows of exactly ``size`` rows, one every ``stride`` rows (default ``size``)."""

    def __init__(self, *, size: int, stride: int | None = None) -> None:
        super().__init__()
        self.size = size
        self.stride = size if stride is None else stride

    def resize(self, size: int, *, stride: int | None = None) -> None:
        """Applies to windows started from now on; rows already collected are kept."""
        self.size, self.stride = size, size if stride is None else stride
        for stream in self._streams.values():
            # Sliding windows reuse rows: keep the newest ``size`` (rows not yet in a window
            # are never dropped, even if the window shrank below them).
            keep = max(size, stream.new_rows)
            while len(stream.rows) > keep:
                stream.rows.popleft()

    def pending_rows(self) -> int:
        return sum(s.new_rows for s in self._streams.values())

    def _add_row(self, version: str, stream: _Stream, row: _Row) -> list[Window]:
        stream.rows.append(row)
        stream.new_rows += 1
        if len(stream.rows) < self.size or stream.new_rows < self.stride:
            return []
        while len(stream.rows) > self.size:
            stream.rows.popleft()
        stream.new_rows = 0
        window = self._window(version, list(stream.rows))
        if self.stride >= self.size:  # tumbling: nothing carries over
            stream.rows.clear()
        else:
            for _ in range(self.stride):
                stream.rows.popleft()
        return [window]


class TimeWindows(Windows):
    """Windows of the rows in ``[start, start + duration_s)``, starts every ``stride_s``."""

    def __init__(
        self,
        *,
        duration_s: float,
        stride_s: float | None = None,
        min_size: int = 10,
        max_size: int = 1_000_000,
    ) -> None:
        super().__init__()
        self.duration_s = duration_s
        self.stride_s = duration_s if stride_s is None else stride_s
        self.min_size = min_size
        self.size = max_size  # the cap, reported as the window size in health

    def pending_rows(self) -> int:
        return sum(len(s.rows) for s in self._streams.values())

    def flush_due(self, now: float) -> list[Window]:
        closed: list[Window] = []
        for version, stream in self._streams.items():
            closed.extend(self._close_until(version, stream, now))
        return closed

    def _add_row(self, version: str, stream: _Stream, row: _Row) -> list[Window]:
        timestamp = row.event.timestamp
        closed = self._close_until(version, stream, timestamp)
        if stream.start is None:
            # Starts on a fixed grid, so windows line up across restarts and versions.
            stream.start = math.floor(timestamp / self.stride_s) * self.stride_s
        # Every row still held lies in the open window (rows at or past its end close it).
        if len(stream.rows) >= self.size:
            self._untested.append(row.event)  # the open window is full
        else:
            stream.rows.append(row)
        return closed

    def _close_until(self, version: str, stream: _Stream, now: float) -> list[Window]:
        """Close every window of ``stream`` that ends at or before ``now``."""
        closed: list[Window] = []
        while stream.start is not None and now >= self._end(stream):
            start, end = stream.start, self._end(stream)
            rows = [r for r in stream.rows if _time(r, start) < end]
            if len(rows) >= self.min_size:
                closed.append(self._window(version, rows))
            stream.start = start + self.stride_s
            # Arrival order is not timestamp order across replicas: filter, not pop.
            kept = deque(r for r in stream.rows if _time(r, start) >= stream.start)
            self._untested.extend(
                r.event for r in stream.rows if not r.tested and _time(r, start) < stream.start
            )
            stream.rows = kept
            if not stream.rows:
                # Nothing left to include: restart on the grid at the next row, instead of
                # stepping through every empty window up to ``now``.
                stream.start = None
        return closed

    def _end(self, stream: _Stream) -> float:
        assert stream.start is not None
        return stream.start + self.duration_s


def _time(row: _Row, start: float) -> float:
    """A row's timestamp, with late rows (before the open window) counted at its start."""
    return max(row.event.timestamp, start)


def make_windows(config: WindowConfig) -> CountWindows | TimeWindows:
    """The window policy ``config`` describes."""
    if config.duration_s is not None:
        return TimeWindows(
            duration_s=config.duration_s,
            stride_s=config.stride_s,
            min_size=config.min_size,
            max_size=config.size,
        )
    return CountWindows(size=config.size, stride=config.stride)


def _stack_probabilities(rows: list[_Row]) -> np.ndarray | None:
    # All or nothing: a test on probabilities needs them for every row of the window.
    if any(r.probabilities is None for r in rows):
        return None
    return np.stack([r.probabilities for r in rows])  # type: ignore[misc]


def reconfigure_windows(
    windows: CountWindows | TimeWindows, *, old: WindowConfig, new: WindowConfig
) -> CountWindows | TimeWindows:
    """Windows for ``new``: the same object resized for a count change, else a fresh policy.

    Count windows keep their collected rows; switching between count and time windows, or
    changing a time window, starts afresh (rows collected so far are handed to
    :meth:`Windows.take_untested`), keeping the window numbering.
    """
    if isinstance(windows, CountWindows) and new.duration_s is None:
        windows.resize(new.size, stride=new.stride)
        return windows
    fresh = make_windows(new)
    fresh.start_at(windows._next_index)
    fresh._untested = [*windows._untested, *windows._pending_events()]
    return fresh
