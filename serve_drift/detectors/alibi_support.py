"""Importing alibi-detect lazily, with its import-time warning filtered, and seeding it.

alibi-detect is licensed under the Business Source License 1.1; nothing here runs unless an
``alibi`` backend is built.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def import_alibi(name: str) -> Any:
    """``alibi_detect.cd.<name>``, importing alibi-detect (seconds) only when first needed."""
    with warnings.catch_warnings():
        # alibi-detect 0.13 decorates a distance function with @torch.jit.script at import
        # time, which recent torch (2.14 here) deprecates with a FutureWarning: harmless, but
        # it would fail a test run with warnings as errors.
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning
        )
        module = importlib.import_module("alibi_detect.cd")
    return getattr(module, name)


class SeededRuns:
    """Runs alibi code under seeds drawn from our own generator, leaving global RNGs alone.

    alibi draws from torch's and numpy's global generators. With an integer ``seed`` each run
    happens under :func:`torch.random.fork_rng` and a saved-and-restored numpy state, so
    results are reproducible and the process-wide state is unchanged afterwards (not
    thread-safe: do not run seeded tests concurrently with other users of those RNGs).
    """

    def __init__(self, seed: int | None) -> None:
        self._seeds = None if seed is None else np.random.default_rng(seed)

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        if self._seeds is None:
            yield
            return
        seed = int(self._seeds.integers(0, 2**31 - 1))
        numpy_state = np.random.get_state()
        # devices=[] keeps fork_rng from touching (and initialising) CUDA.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            np.random.seed(seed)
            try:
                yield
            finally:
                np.random.set_state(numpy_state)
