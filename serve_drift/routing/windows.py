"""The comparator's windows: observations in, labels joined by correlation ID, windows out.

Pure state (no Ray, no I/O), so it is tested as it is. A window closes when it holds
``window_size`` observations, or early when the routing epoch, the mode or either arm's model
version changes: a window never mixes two candidates, or traffic before and after a promotion.
The last ``windows_kept`` closed windows stay in memory, so that labels arriving later still
join their requests and update those windows.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serve_drift.routing.answers import Answer
from serve_drift.routing.comparison import (
    Comparison,
    WindowAccumulator,
    labelled_answers,
    reconcile,
)
from serve_drift.routing.drift import ArmDrift
from serve_drift.routing.messages import Observation


@dataclass(frozen=True)
class WindowRecord:
    """One window as stored and reported; ``drift`` holds each arm's monitor summary."""

    index: int
    epoch: int
    mode: str
    incumbent_version: str | None
    candidate_version: str | None
    opened_at: float
    closed_at: float | None
    comparison: Comparison
    drift: Mapping[str, ArmDrift] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "epoch": self.epoch,
            "mode": self.mode,
            "incumbent_version": self.incumbent_version,
            "candidate_version": self.candidate_version,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "comparison": self.comparison.to_dict(),
            "drift": {arm: d.to_dict() for arm, d in self.drift.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowRecord:
        return cls(
            index=int(data["index"]),
            epoch=int(data["epoch"]),
            mode=str(data["mode"]),
            incumbent_version=data["incumbent_version"],
            candidate_version=data["candidate_version"],
            opened_at=float(data["opened_at"]),
            closed_at=data["closed_at"],
            comparison=Comparison.from_dict(data["comparison"]),
            drift={arm: ArmDrift.from_dict(d) for arm, d in data.get("drift", {}).items()},
        )


class _Window:
    def __init__(self, *, index: int, epoch: int, observation: Observation) -> None:
        self.index = index
        self.epoch = epoch
        self.mode = observation.mode
        self.versions: dict[str, str | None] = {"incumbent": None, "candidate": None}
        self.opened_at = observation.timestamp
        self.closed_at: float | None = None
        self.accumulator = WindowAccumulator()
        self.drift: dict[str, ArmDrift] = {}
        self.ids: list[str] = []

    def fits(self, observation: Observation, *, epoch: int) -> bool:
        if epoch != self.epoch or observation.mode != self.mode:
            return False
        seen = _versions(observation)
        return all(self.versions[arm] in (None, v) for arm, v in seen.items() if v is not None)

    def record(self) -> WindowRecord:
        return WindowRecord(
            index=self.index,
            epoch=self.epoch,
            mode=self.mode,
            incumbent_version=self.versions["incumbent"],
            candidate_version=self.versions["candidate"],
            opened_at=self.opened_at,
            closed_at=self.closed_at,
            comparison=self.accumulator.freeze(),
            drift=dict(self.drift),
        )


def _versions(observation: Observation) -> dict[str, str | None]:
    return {
        arm: answer.model_version if answer is not None else None
        for arm, answer in (
            ("incumbent", observation.incumbent),
            ("candidate", observation.candidate),
        )
    }


# A label joins one request: the window it sits in and its answers (None: the ID repeated,
# so the label could belong to either request).
_Joinable = tuple[_Window, dict[str, Answer] | None]


class ComparisonWindows:
    """Open window, recent closed windows, and the correlation-ID index for labels.

    >>> from serve_drift.routing.answers import Answer, RowAnswer
    >>> ok = Answer("ok", 0.01, rows=(RowAnswer(1, 0.8),), model_version="v")
    >>> windows = ComparisonWindows(window_size=2, windows_kept=5)
    >>> windows.add(Observation("a", 1.0, "shadow", "incumbent", ok, ok), epoch=0)
    []
    >>> [w.index for w in windows.add(Observation("b", 2.0, "shadow", "incumbent", ok, ok),
    ...                                epoch=0)]
    [0]
    """

    def __init__(
        self,
        *,
        window_size: int,
        windows_kept: int,
        next_index: int = 0,
        early_labels: int = 10_000,
    ) -> None:
        self._size = window_size
        self._kept: deque[_Window] = deque(maxlen=windows_kept)
        self._open: _Window | None = None
        self._next_index = next_index
        self._by_id: dict[str, _Joinable] = {}
        self._labelled: set[str] = set()
        # Labels that arrived before their request's answers did (the mirror still in flight,
        # or the batch still on its way): applied when the observation comes, oldest evicted.
        self._early: OrderedDict[str, int] = OrderedDict()
        self._early_limit = early_labels

    def add(self, observation: Observation, *, epoch: int) -> list[WindowRecord]:
        """Take one observation; returns the windows it closed (zero, one or two)."""
        closed = []
        if self._open is not None and not self._open.fits(observation, epoch=epoch):
            closed.append(self._close(observation.timestamp))
        window = self._open or self._start(observation, epoch=epoch)
        self._take(window, observation)
        if window.accumulator.observations >= self._size:
            closed.append(self._close(observation.timestamp))
        return closed

    def close_open(self, *, now: float) -> WindowRecord | None:
        """Close the open window (an epoch change), if it holds anything."""
        return self._close(now) if self._open is not None else None

    def label(self, correlation_id: str, label: int) -> WindowRecord | None:
        """Join a label; returns the updated window, or None when it joins nothing now
        (past the kept windows, repeated ID, already labelled, or no usable answer). A label
        for a request not seen yet waits for it."""
        window, answers = self._by_id.get(correlation_id, (None, None))
        if window is None:
            self._early[correlation_id] = label
            if len(self._early) > self._early_limit:
                self._early.popitem(last=False)
            return None
        if not answers or correlation_id in self._labelled:
            return None
        self._labelled.add(correlation_id)
        window.accumulator.label(answers, label)
        return window.record()

    def open_record(self) -> WindowRecord | None:
        return None if self._open is None else self._open.record()

    def closed_records(self) -> list[WindowRecord]:
        return [w.record() for w in self._kept]

    def set_drift(self, index: int, drift: Mapping[str, ArmDrift]) -> WindowRecord | None:
        window = next((w for w in self._kept if w.index == index), None)
        if window is None:
            return None
        window.drift.update(drift)
        return window.record()

    def _start(self, observation: Observation, *, epoch: int) -> _Window:
        self._open = _Window(index=self._next_index, epoch=epoch, observation=observation)
        self._next_index += 1
        return self._open

    def _take(self, window: _Window, observation: Observation) -> None:
        for arm, version in _versions(observation).items():
            window.versions[arm] = window.versions[arm] or version
        accumulator = window.accumulator
        incumbent, candidate = observation.incumbent, observation.candidate
        if incumbent is not None and candidate is not None:
            candidate = reconcile(incumbent, candidate)
            accumulator.add_pair(incumbent=incumbent, candidate=candidate)
        else:
            arm, answer = (
                ("incumbent", incumbent) if incumbent is not None else ("candidate", candidate)
            )
            assert answer is not None
            accumulator.add_single(arm=arm, answer=answer)
        self._index(window, observation, candidate)

    def _index(self, window: _Window, observation: Observation, candidate: Answer | None) -> None:
        answers = labelled_answers([("incumbent", observation.incumbent), ("candidate", candidate)])
        key = observation.correlation_id
        self._by_id[key] = (window, None if key in self._by_id else answers)
        window.ids.append(key)
        early = self._early.pop(key, None)
        if early is not None:
            self.label(key, early)

    def _close(self, now: float) -> WindowRecord:
        window = self._open
        assert window is not None
        window.closed_at = now
        self._open = None
        if len(self._kept) == self._kept.maxlen:
            self._forget(self._kept[0])
        self._kept.append(window)
        return window.record()

    def _forget(self, window: _Window) -> None:
        for key in window.ids:
            if self._by_id.get(key, (None, None))[0] is window:
                del self._by_id[key]
                self._labelled.discard(key)
