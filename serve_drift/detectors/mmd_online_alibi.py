"""alibi-detect's streaming ``MMDDriftOnline`` (expected-run-time thresholds) as a window test.

alibi-detect is licensed under the Business Source License 1.1; it is imported only when this
backend is built. An online detector watches a stream one row at a time and raises an alarm
when the MMD² between a sliding window of the last ``online_window_size`` rows and the
reference exceeds a threshold. alibi configures the thresholds by bootstrap so that, without
drift, the expected time to a false alarm (the ERT) is ``ert`` rows.

Here each monitor window is streamed through the detector from a fresh state. The result's
p-value is the probability, without drift, of an alarm at least as early as the observed one,
``1 - (1 - 1/ERT)^t`` for an alarm at row ``t`` (run lengths are geometric with mean ERT), and
1.0 without an alarm, so ``p < alpha`` means "alarmed early enough to be significant".
When ``ert`` is not set it is chosen per window length ``M`` so that a window without drift
raises an alarm with probability alpha: ``ERT = 1 / (1 - (1 - alpha)^(1/M))``. Thresholds are
configured once per ERT (``n_bootstraps`` simulations, 10 x ERT by default as alibi advises:
about a minute for ERT = 4000 on one CPU core).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from serve_drift.detectors.alibi_support import SeededRuns, import_alibi
from serve_drift.detectors.base import DetectorInputError, EmbeddingDetector, OnlineStatistic
from serve_drift.detectors.validate import as_compute_dtype, check_window


class AlibiOnlineMMD(EmbeddingDetector):
    """Streams each window through ``alibi_detect.cd.MMDDriftOnline(backend="pytorch")``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> detector = AlibiOnlineMMD(rng.normal(size=(200, 4)), ert=100, online_window_size=10,
    ...                           n_bootstraps=1000, device="cpu")
    >>> result = detector.test(rng.normal(size=(50, 4)) + 3.0)
    >>> result.detected_at is not None and result.p_value < 0.2
    True
    """

    name = "mmd_online"
    backend = "alibi"

    def __init__(
        self,
        reference: Any,
        *,
        p_value_threshold: float = 0.05,
        ert: float | None = None,
        online_window_size: int = 20,
        n_bootstraps: int | None = None,
        device: str | torch.device | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(reference, p_value_threshold=p_value_threshold, device=device)
        self._x_ref = as_compute_dtype(self.reference, dtype=np.float32, what="reference set")
        if self.reference_size <= 2 * online_window_size:
            raise DetectorInputError(
                f"reference set has {self.reference_size} rows; the online MMD needs more than "
                f"2 x online_window_size = {2 * online_window_size}"
            )
        self.ert = ert
        self.online_window_size = online_window_size
        self.n_bootstraps = n_bootstraps
        self._runs = SeededRuns(seed)
        self._detectors: dict[float, Any] = {}

    def expected_run_time(self, rows: int) -> float:
        """The ERT used for a window of ``rows`` rows."""
        if self.ert is not None:
            return float(self.ert)
        return 1.0 / -math.expm1(math.log1p(-self.p_value_threshold) / rows)

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> OnlineStatistic:
        """Stream ``window`` (M, d) row by row from a fresh state; stop at the first alarm."""
        x = as_compute_dtype(check_window(window, dim=self.dim), dtype=np.float32, what="window")
        ert = self.expected_run_time(len(x))
        detector = self._detector(ert)
        with self._runs.run():
            detector.reset_state()
            detected, data = None, {}
            for step, row in enumerate(x, start=1):
                data = detector.predict(row, return_test_stat=True)["data"]
                if data["is_drift"]:
                    detected = step
                    break
        return OnlineStatistic(
            p_value=1.0 if detected is None else -math.expm1(detected * math.log1p(-1.0 / ert)),
            distance=float(data["test_stat"]),
            distance_threshold=float(data["threshold"]),
            detected_at=detected,
            expected_run_time=ert,
        )

    def _detector(self, ert: float) -> Any:
        if ert not in self._detectors:
            bootstraps = self.n_bootstraps or max(1000, math.ceil(10 * ert))
            with self._runs.run():
                self._detectors[ert] = import_alibi("MMDDriftOnline")(
                    self._x_ref,
                    ert=ert,
                    window_size=self.online_window_size,
                    backend="pytorch",
                    n_bootstraps=bootstraps,
                    device=self.device,
                    verbose=False,
                )
        return self._detectors[ert]
