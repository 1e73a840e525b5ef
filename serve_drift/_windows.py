"""Count-based windows of embeddings, one stream per model version (a window never mixes them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serve_drift._events import EventBatch, InferenceEvent


@dataclass(frozen=True)
class Window:
    index: int
    model_version: str
    embeddings: np.ndarray
    events: tuple[InferenceEvent, ...]


@dataclass
class _Filling:
    rows: list[np.ndarray] = field(default_factory=list)
    events: list[InferenceEvent] = field(default_factory=list)


class CountWindows:
    """Accumulates accepted rows and hands out full windows of exactly ``size`` rows."""

    def __init__(self, *, size: int) -> None:
        self.size = size
        self._filling: dict[str, _Filling] = {}
        self._next_index = 0

    def add(self, batch: EventBatch, *, keep: np.ndarray) -> list[Window]:
        """Add the rows of ``batch`` where ``keep`` is true; return the windows that filled."""
        full: list[Window] = []
        for row in np.flatnonzero(keep):
            event = batch.events[row]
            filling = self._filling.setdefault(event.model_version, _Filling())
            filling.rows.append(batch.embeddings[row])
            filling.events.append(event)
            if len(filling.rows) >= self.size:
                full.append(self._close(event.model_version, filling))
        return full

    def start_at(self, index: int) -> None:
        """Number the next window ``index`` (a restarted monitor continues its predecessor's)."""
        self._next_index = index

    def resize(self, size: int) -> None:
        """Applies to windows started from now on; rows already collected are kept."""
        self.size = size

    def pending_rows(self) -> int:
        return sum(len(f.rows) for f in self._filling.values())

    def _close(self, model_version: str, filling: _Filling) -> Window:
        window = Window(
            index=self._next_index,
            model_version=model_version,
            embeddings=np.stack(filling.rows),
            events=tuple(filling.events),
        )
        self._next_index += 1
        self._filling[model_version] = _Filling()
        return window
