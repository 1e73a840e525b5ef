"""The runnable examples in the detectors', windows' and reference tools' docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

from serve_drift.detectors.mmd_alibi import _import_mmd_drift

MODULES = [
    "serve_drift.detectors._registry",
    "serve_drift.detectors.mmd_native",
    "serve_drift.detectors.mmd_alibi",
    "serve_drift.detectors.classifier_native",
    "serve_drift.detectors.classifier_alibi",
    "serve_drift.detectors.bbsd",
    "serve_drift.detectors.bbsd_alibi",
    "serve_drift.detectors.mmd_online_alibi",
    "serve_drift.detectors.combined",
    "serve_drift.detectors.reduction",
    "serve_drift._windows",
    "serve_drift._embed",
    "serve_drift._traffic_sample",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    _import_mmd_drift()  # alibi-detect's import-time warning, filtered once
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
