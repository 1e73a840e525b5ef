"""The multi-node suite: Ray clusters of their own, so never in the same run as the tests that
share one local Ray (``tests/integration``). ``make test`` runs it second:
``pytest -m multinode tests/multinode``."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kinds = {
        marker
        for item in items
        for marker in ("integration", "multinode")
        if marker in item.keywords
    }
    if kinds == {"integration", "multinode"}:
        raise pytest.UsageError(
            "the multinode tests start Ray clusters of their own: run them in a pytest run of "
            "their own (pytest -m multinode tests/multinode), not beside tests/integration"
        )
