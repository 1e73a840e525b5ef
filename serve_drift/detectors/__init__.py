"""Drift detectors behind one small interface, with a choice of backend per kind.

``native`` is ours (pure PyTorch, Apache-2.0); ``alibi`` wraps alibi-detect (Business Source
License 1.1), imported only when that backend is built.
"""

from serve_drift.detectors._registry import BACKENDS, build_detector
from serve_drift.detectors.base import DetectorInputError, DriftDetector

__all__ = ["BACKENDS", "DetectorInputError", "DriftDetector", "build_detector"]
