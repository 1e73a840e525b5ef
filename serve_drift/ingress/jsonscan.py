"""JSON parsing with a nesting-depth limit checked *before* the parser runs.

``json.loads`` recurses once per nesting level: a body of ten thousand ``[`` reaches the
interpreter's recursion limit, and any code that later walks the result recursively is at risk
too. The depth is measured with a vectorised scan instead: strings are blanked out, then the
running count of openers minus closers gives the depth at every byte.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from serve_drift.ingress.errors import IngressError

# A JSON string: a quote, runs of non-special bytes or escapes, a quote (no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_DELTA = np.zeros(256, dtype=np.int8)
_DELTA[[ord("["), ord("{")]] = 1
_DELTA[[ord("]"), ord("}")]] = -1


def nesting_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects (brackets inside strings do not count).

    >>> nesting_depth(b'{"a": [[1], "]]]"]}')
    3
    """
    structural = _STRING.sub(b"", body)
    if not structural:
        return 0
    steps = _DELTA[np.frombuffer(structural, dtype=np.uint8)].astype(np.int32)
    return max(0, int(np.cumsum(steps).max()))


def load_json(body: bytes, *, max_depth: int) -> Any:
    """Parse ``body`` (UTF-8 JSON) after checking its depth; typed errors only."""
    depth = nesting_depth(body)
    if depth > max_depth:
        raise IngressError("json_too_deep", f"the JSON nests deeper than {max_depth} levels")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise IngressError("invalid_json", "the body is not valid JSON") from None
