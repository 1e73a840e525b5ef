"""Every runnable example in the package's docstrings stays runnable."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import serve_drift
from serve_drift.detectors.mmd_alibi import _import_mmd_drift


def _modules_with_examples() -> list[str]:
    finder = doctest.DocTestFinder()
    names = []
    for info in pkgutil.walk_packages(serve_drift.__path__, prefix="serve_drift."):
        module = importlib.import_module(info.name)
        if any(test.examples for test in finder.find(module)):
            names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_the_public_modules_have_examples() -> None:
    expected = {"serve_drift.config", "serve_drift.replica.decorator", "serve_drift.errors"}
    assert expected <= set(MODULES) and len(MODULES) > 30


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    _import_mmd_drift()  # alibi-detect's import-time warning, filtered once
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
