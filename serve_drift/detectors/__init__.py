"""Drift detectors behind one small interface, with a choice of backend per kind.

Kinds: ``mmd`` (kernel MMD, permutation test), ``classifier`` (classifier two-sample test),
``bbsd`` (KS tests on softmax outputs, Bonferroni), ``mmd_online`` (streaming MMD with
expected-run-time thresholds) and ``combined`` (the default: several tests of one window with
an exact min-p correction). ``native`` is ours (PyTorch/SciPy, Apache-2.0); ``alibi`` wraps
alibi-detect (Business Source License 1.1), imported only when that backend is built.
"""

from serve_drift.detectors.base import DetectorInputError, DriftDetector, OnlineStatistic
from serve_drift.detectors.registry import BACKENDS, build_detector
from serve_drift.messages import ComponentStatistic, DriftStatistic

__all__ = [
    "BACKENDS",
    "ComponentStatistic",
    "DetectorInputError",
    "DriftDetector",
    "DriftStatistic",
    "OnlineStatistic",
    "build_detector",
]
