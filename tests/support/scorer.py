"""A user's ordinary deployment class for integration tests: a tiny torch model, ``@monitored``.

Built inside a function so that Ray ships the class by value to its workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_drift import ReferenceSet, monitored


def _stop_telemetry(self: Any) -> None:
    from serve_drift.telemetry import shutdown_telemetry

    shutdown_telemetry()


def scorer_class(config: dict[str, Any], *, stop_telemetry_on_delete: bool = False) -> type:
    """``Scorer``: ``{"x": [4 floats]}`` in, ``{"scores": [3 floats], "mine": True}`` out.

    With ``stop_telemetry_on_delete`` its ``__del__``, which Serve calls before it kills a
    replica, runs the bounded ``shutdown_telemetry()``.
    """

    class Scorer:
        def __init__(self) -> None:
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
            )

        async def __call__(self, request: Any) -> dict[str, Any]:
            values = (await request.json())["x"]
            with torch.no_grad():
                scores = self.model(torch.tensor([values], dtype=torch.float32))
            return {"scores": scores[0].tolist(), "mine": True}

    if stop_telemetry_on_delete:
        Scorer.__del__ = _stop_telemetry  # type: ignore[attr-defined]
    return monitored(config)(Scorer)


def scorer_reference(path: Path, *, model_name: str) -> str:
    """A reference set for ``Scorer``: its hidden layer (same seed, so the same weights) on 200
    standard-normal inputs, saved at ``path``; returns the path as a string."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    inputs = torch.tensor(np.random.default_rng(0).normal(size=(200, 4)), dtype=torch.float32)
    with torch.no_grad():
        hidden = model[1](model[0](inputs))
    ReferenceSet.from_embeddings(
        hidden.numpy(), model_name=model_name, model_version="1", data_version="normal-0"
    ).save(path)
    return str(path)
