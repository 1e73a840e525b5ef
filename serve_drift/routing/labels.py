"""Labels posted to the router: each arm judges them, and the comparator gets the accepted ones.

A label belongs to a correlation ID; in shadow mode both arms served that request, in canary
mode one did. The router posts the same body to every arm and merges their per-item answers:
an item is ``accepted`` when any arm accepted it; otherwise the most telling answer stands
(``duplicate_label``, then ``ambiguous``, ``invalid``, ``unknown_correlation_id``).

>>> a = [{"correlation_id": "x", "status": "accepted", "detail": ""}]
>>> b = [{"correlation_id": "x", "status": "unknown_correlation_id", "detail": ""}]
>>> [item["status"] for item in merge_answers([a, b])]
['accepted']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from serve_drift.eventlog.labels import parse_labels

_RANK = ("accepted", "duplicate_label", "ambiguous", "invalid", "unknown_correlation_id")


def _rank(item: dict[str, Any]) -> int:
    status = item.get("status")
    return _RANK.index(status) if status in _RANK else len(_RANK)


def merge_answers(per_arm: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One answer per item, from the arms' answers (lists of equal length, same order)."""
    usable = [answers for answers in per_arm if answers]
    if not usable:
        return []
    return [min(items, key=_rank) for items in zip(*usable, strict=True)]


def accepted_labels(payload: Any, merged: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """(correlation ID, label) of every item an arm accepted, for the comparator."""
    try:
        items = parse_labels(payload)
    except ValueError:
        return []
    found = []
    for item, answer in zip(items, merged, strict=False):
        label = getattr(item, "label", None)
        if answer.get("status") == "accepted" and label is not None:
            found.append((str(getattr(item, "correlation_id", "")), int(label)))
    return found


def read_json_answer(result: Any) -> Any:
    """The JSON an arm (or a client) sent, from a response, bytes or an object."""
    raw = getattr(result, "body", result)
    if isinstance(raw, bytes | bytearray | str):
        return json.loads(raw)
    return raw


def label_results(result: Any) -> list[dict[str, Any]] | None:
    """An arm's per-item answers to a labels request, or None when it gave none."""
    if isinstance(result, BaseException) or getattr(result, "status_code", 200) != 200:
        return None
    try:
        results = read_json_answer(result).get("results")
    except Exception:
        return None
    return results if isinstance(results, list) else None
