"""Client correlation IDs are untrusted: sanitised before logs, spans, bodies and headers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serve_drift.request_context import (
    MAX_CORRELATION_ID_LENGTH,
    RequestIds,
    bind_request_ids,
    current_request_ids,
    sanitize_correlation_id,
)

SAFE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces: safe in any header


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("cam7-000123", "cam7-000123"),
        ("abc\r\nSet-Cookie: x=1", "abc__Set-Cookie:_x=1"),
        ("a\tb c", "a_b_c"),
        ("nul\x00byte\x7f", "nul_byte_"),
        ("café", "caf_"),
        ("\u202eevil", "_evil"),  # right-to-left override: would garble a log line
        ("x" * 20_000, "x" * MAX_CORRELATION_ID_LENGTH),
    ],
    ids=["plain", "crlf", "tab-space", "control", "non-ascii", "bidi", "oversized"],
)
def test_hostile_ids_are_sanitised(raw: str, expected: str) -> None:
    assert sanitize_correlation_id(raw) == expected


@given(st.text(min_size=1, max_size=500))
def test_any_id_becomes_header_safe_and_bounded(raw: str) -> None:
    cleaned = sanitize_correlation_id(raw)
    assert SAFE.match(cleaned) and len(cleaned) <= MAX_CORRELATION_ID_LENGTH


def test_outside_ray_ids_are_generated_and_unique() -> None:
    first, second = current_request_ids(), current_request_ids()
    assert SAFE.match(first.correlation_id) and first.correlation_id != second.correlation_id
    assert first.internal_id != second.internal_id


def test_bound_ids_are_what_the_handler_sees() -> None:
    ids = RequestIds(correlation_id="bound", internal_id="internal")
    with bind_request_ids(ids):
        assert current_request_ids() is ids
    assert current_request_ids().correlation_id != "bound"
