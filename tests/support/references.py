"""Reference sets for monitor tests: standard normal rows of model ``m`` version ``1``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serve_drift import ReferenceSet


def normal_reference(path: Path, *, dim: int, rows: int = 200) -> str:
    """Write ``rows`` standard normal embeddings of ``dim`` to ``path``; return the path."""
    data = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    ReferenceSet.from_embeddings(data, model_name="m", model_version="1", data_version="d").save(
        path
    )
    return str(path)
