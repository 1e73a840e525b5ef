"""What an arm answered, read off its response: predicted class and confidence per input row.

The router keeps responses as they are (the client gets the incumbent's untouched); the
comparator reads them here, off the request path. It understands the ready-made app's answer
(``class_index``, ``confidence``, ``top_k``, or ``predictions`` for a batch, plus
``model_version``) and the same keys in a dict a decorated deployment returns (``class`` is
accepted for ``class_index``). Anything else is **garbage**, recorded as an ``invalid`` answer
with the reason: not JSON, no class, a class that is not a non-negative integer, a confidence
that is NaN, infinite or outside [0, 1].

>>> answer = read_answer({"class_index": 3, "confidence": 0.9, "model_version": "v2"},
...                      latency_s=0.004)
>>> (answer.status, answer.rows[0].predicted, answer.model_version)
('ok', 3, 'v2')
>>> read_answer({"class_index": 3, "confidence": float("nan")}, latency_s=0.004).detail
'confidence is not a finite number in [0, 1]'
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

AnswerStatus = Literal["ok", "error", "timeout", "invalid", "unreachable"]
MAX_ROWS = 1024


@dataclass(frozen=True)
class RowAnswer:
    """One input row's top-1 prediction."""

    predicted: int
    confidence: float


@dataclass(frozen=True)
class Answer:
    """One arm's answer to one request, as the router saw it.

    ``status`` is ``ok`` (parsed), ``error`` (it raised, or answered 4xx/5xx), ``timeout``,
    ``invalid`` (garbage; ``detail`` says why) or ``unreachable`` (the arm's app was not
    found). ``latency_s`` is the round trip from the router.
    """

    status: AnswerStatus
    latency_s: float | None
    rows: tuple[RowAnswer, ...] = ()
    model_version: str | None = None
    http_status: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Garbage(ValueError):
    pass


def failed(status: AnswerStatus, *, latency_s: float | None, detail: str = "") -> Answer:
    """An answer that never came: raised, timed out or unreachable."""
    return Answer(status=status, latency_s=latency_s, detail=detail[:200])


def read_answer(result: Any, *, latency_s: float) -> Answer:
    """Parse what an arm returned (a Starlette response, a dict, bytes or str)."""
    status_code = getattr(result, "status_code", None)
    if isinstance(status_code, int) and status_code >= 400:
        return Answer("error", latency_s, http_status=status_code, detail=f"HTTP {status_code}")
    try:
        body = _body(result)
        rows = _rows(body)
    except _Garbage as exc:
        return Answer("invalid", latency_s, http_status=status_code, detail=str(exc))
    version = body.get("model_version")
    return Answer(
        "ok",
        latency_s,
        rows=rows,
        model_version=str(version) if version is not None else None,
        http_status=status_code,
    )


def _body(result: Any) -> dict[str, Any]:
    raw = getattr(result, "body", result)
    if isinstance(raw, bytes | bytearray | memoryview | str):
        try:
            raw = json.loads(bytes(raw) if not isinstance(raw, str) else raw)
        except (ValueError, UnicodeDecodeError):
            raise _Garbage("the answer is not JSON") from None
    if not isinstance(raw, dict):
        raise _Garbage(f"the answer is a {type(raw).__name__}, not an object")
    return raw


def _rows(body: dict[str, Any]) -> tuple[RowAnswer, ...]:
    items = body.get("predictions", [body])
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ROWS:
        raise _Garbage(f"predictions must be a list of 1..{MAX_ROWS} objects")
    return tuple(_row(item) for item in items)


def _row(item: Any) -> RowAnswer:
    if not isinstance(item, dict):
        raise _Garbage("a prediction is not an object")
    predicted = item.get("class_index", item.get("class"))
    if isinstance(predicted, bool) or not isinstance(predicted, int) or predicted < 0:
        raise _Garbage("class_index is not a non-negative integer")
    confidence = item.get("confidence")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not (math.isfinite(confidence) and 0 <= confidence <= 1)
    ):
        raise _Garbage("confidence is not a finite number in [0, 1]")
    return RowAnswer(predicted=predicted, confidence=float(confidence))
