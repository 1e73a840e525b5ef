"""The runnable examples in the event log's docstrings stay runnable."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "serve_drift.eventlog.schema",
    "serve_drift.eventlog.sampling",
    "serve_drift.eventlog.store",
    "serve_drift.eventlog.labels",
    "serve_drift.eventlog.recorder",
    "serve_drift.eventlog.otlp_logs",
    "serve_drift.eventlog.sentinel",
    "serve_drift.eventlog.cli",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
