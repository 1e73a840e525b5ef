"""alibi-detect's PyTorch ``MMDDrift`` behind our detector interface.

alibi-detect is licensed under the Business Source License 1.1 (production use needs a
commercial licence until four years after each release); it is imported only when this
backend is built. Differences from :class:`~serve_drift.detectors.mmd_native.NativeMMD` that
are alibi's own behaviour and kept on purpose:

- its p-value is ``#{permuted >= observed} / n_permutations`` (no +1), so it can be exactly 0;
- data is passed as float32 (alibi computes in the dtype it is given), so its MMD² differs
  from the native float64 one by about 1e-7 absolute;
- its permutation loop runs in Python, one kernel-matrix gather per permutation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from serve_drift.detectors.alibi_support import import_alibi
from serve_drift.detectors.base import PermutationDetector
from serve_drift.detectors.validate import as_compute_dtype, check_window
from serve_drift.messages import DriftStatistic


class AlibiMMD(PermutationDetector):
    """``alibi_detect.cd.MMDDrift(backend="pytorch")`` with our input checks and result type.

    alibi draws permutations from torch's global CPU generator. With an integer ``seed`` each
    test runs under :func:`torch.random.fork_rng` with a seed drawn from our own generator, so
    results are reproducible and the process-wide RNG state is left as it was (the fork is
    not thread-safe: do not run seeded tests concurrently with other users of that RNG).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> detector = AlibiMMD(rng.normal(size=(100, 4)), n_permutations=50, device="cpu")
    >>> detector.test(rng.normal(size=(50, 4)) + 3.0).p_value
    0.0
    """

    name = "mmd"
    backend = "alibi"

    def __init__(
        self,
        reference: Any,
        *,
        p_value_threshold: float = 0.05,
        n_permutations: int = 100,
        device: str | torch.device | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(
            reference,
            p_value_threshold=p_value_threshold,
            n_permutations=n_permutations,
            device=device,
        )
        x_ref = as_compute_dtype(self.reference, dtype=np.float32, what="reference set")
        self._seeds = None if seed is None else torch.Generator().manual_seed(seed)
        mmd_drift = _import_mmd_drift()
        # A torch.device, not a string: alibi 0.13 maps any string other than "cuda"/"gpu"/
        # "cpu" (e.g. "cuda:1") to the CPU with only a log message.
        self._detector = mmd_drift(
            x_ref,
            backend="pytorch",
            p_val=p_value_threshold,
            n_permutations=n_permutations,
            device=self.device,
        )

    @property
    def sigma(self) -> float:
        """The kernel bandwidth alibi inferred from the reference set (stored as float32)."""
        return float(self._detector._detector.kernel.sigma.detach().cpu()[0])

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic:
        """alibi's permutation test of ``window`` (M, d); ``probabilities`` are not used."""
        x = as_compute_dtype(check_window(window, dim=self.dim), dtype=np.float32, what="window")
        with self._seeded_rng():
            data = self._detector.predict(x, return_p_val=True, return_distance=True)["data"]
        return DriftStatistic(
            p_value=self._exact_p_value(float(data["p_val"])),
            distance=float(data["distance"]),
            distance_threshold=float(data["distance_threshold"]),
        )

    def _exact_p_value(self, p_value: float) -> float:
        # alibi averages a float32 tensor, so 4/100 arrives as 0.03999999910593033; its p-value
        # is always k / n_permutations, restored exactly here (still without the +1).
        return round(p_value * self.n_permutations) / self.n_permutations

    @contextlib.contextmanager
    def _seeded_rng(self) -> Iterator[None]:
        if self._seeds is None:
            yield
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds))
        # alibi calls torch.randperm without a device, so only the CPU generator is involved;
        # devices=[] keeps fork_rng from touching (and initialising) CUDA.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield


def _import_mmd_drift() -> Any:
    """Import ``alibi_detect.cd.MMDDrift``, which takes seconds, only when it is needed.

    Import alibi-detect through this (or :func:`serve_drift.detectors.alibi_support.import_alibi`)
    before any direct ``alibi_detect`` import under warnings-as-errors: it filters the
    FutureWarning that alibi-detect 0.13 raises at import time on torch 2.14.
    """
    return import_alibi("MMDDrift")
