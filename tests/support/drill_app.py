"""The ready-made digits app deployed for drills: small windows, every event stored."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.serve import ServeInstance

DRILL_WINDOW = 50


@dataclass(frozen=True)
class DrillApp:
    url: str
    db: Path


@contextmanager
def digits_app(serve_instance: ServeInstance, *, name: str, db: Path) -> Iterator[DrillApp]:
    """``serve_drift.apps.classifier:build_app`` with the embedded model under ``/<name>``."""
    from ray import serve

    from serve_drift.apps.classifier import build_app

    args = {
        "model": {"source": "digits"},
        "drift": {
            "model_name": "digits",
            "window": {"size": DRILL_WINDOW},
            # Every event stored, so every label joins and the report has every input.
            "events": {"path": str(db), "sample_rate": 1.0},
        },
    }
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    try:
        yield DrillApp(url=serve_instance.url(f"/{name}"), db=db)
    finally:
        serve.delete(name)
