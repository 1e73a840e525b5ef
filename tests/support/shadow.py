"""Shadow and canary apps for integration tests: two monitored digits apps and a router."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from serve_drift.models.digits import split_digits
from serve_drift.tools.imageio import encode_png
from tests.support.serve import ADMIN

T = TypeVar("T")
WEAK = {"seed": 0, "epochs": 2}
EQUAL = {"seed": 1, "epochs": 30}


def arm_args(name: str, *, db_dir: Path, window: int) -> dict[str, Any]:
    return {
        "model": {"source": "digits"},
        "drift": {
            "model_name": name,
            "window": {"size": window},
            "detectors": [{"backend": "native"}],
            "monitor_deployment": "DriftMonitor",
            "shipping": {"flush_interval_s": 0.05},
            "events": {"path": str(db_dir / f"{name}.sqlite")},
        },
    }


def deploy_incumbent(app: str, *, db_dir: Path, window: int) -> None:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    serve.run(build_app(arm_args(app, db_dir=db_dir, window=window)), name=app, route_prefix=None)


def deploy_variant(app: str, variant: dict[str, int], *, db_dir: Path, window: int) -> None:
    from ray import serve

    from serve_drift.tools.shadow_models import build_app

    args = {
        **arm_args(f"{app}-s{variant['seed']}-e{variant['epochs']}", db_dir=db_dir, window=window)
    }
    serve.run(build_app({**args, "variant": variant}), name=app, route_prefix=None)


def deploy_router(app: str, prefix: str, router: dict[str, Any], **options: Any) -> None:
    from ray import serve

    from serve_drift.routing.app import build_app

    config = {
        "name": app,
        "comparison": {"shipping": {"flush_interval_s": 0.05}},
        "telemetry": {"configure_sdk": True},
        **router,
    }
    serve.run(build_app({"router": config, **options}), name=app, route_prefix=prefix)


def version_of(seed: int = 0, epochs: int = 30) -> str:
    from serve_drift.models.digits import load_or_train_digits_model

    return load_or_train_digits_model(seed=seed, epochs=epochs)[1].version


def traffic(count: int, *, seed: int) -> tuple[list[bytes], list[int]]:
    split = split_digits(seed=0)
    picks = np.random.default_rng(seed).integers(0, len(split.test_images), size=count)
    return [encode_png(split.test_images[i]) for i in picks], [
        int(split.test_labels[i]) for i in picks
    ]


def predict(
    client: httpx.Client, url: str, body: bytes, cid: str, **headers: str
) -> httpx.Response:
    return client.post(
        f"{url}/predict",
        content=body,
        headers={"content-type": "image/png", "x-request-id": cid, **headers},
    )


def send_all(
    url: str, bodies: Sequence[bytes], ids: Sequence[str], *, concurrency: int = 8, **headers: str
) -> list[httpx.Response]:
    """Concurrent clients over real HTTP; every response, in order."""
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(concurrency) as pool:
        return list(
            pool.map(lambda i: predict(client, url, bodies[i], ids[i], **headers), range(len(ids)))
        )


def report(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/shadow", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def change(url: str, action: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/shadow/{action}", json=body, headers=ADMIN, timeout=30)
    return {"status_code": response.status_code, **response.json()}


def label_all(url: str, labels: dict[str, int], *, wait_s: float = 60) -> dict[str, str]:
    from serve_drift.tools.shadow_demo import send_labels

    with httpx.Client(base_url=url, headers=ADMIN, timeout=60) as client:
        return send_labels(client, labels, wait_s=wait_s)


def wait(check: Callable[[], T | None], *, timeout_s: float = 60, what: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except (httpx.HTTPError, KeyError):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.3)


def evidence(report_body: dict[str, Any]) -> dict[str, Any]:
    return report_body["decision"]["evidence"]["summary"]


class BackgroundLoad:
    """Closed-loop clients over real HTTP until stopped; every status and answering version.

    >>> # with BackgroundLoad(url, bodies, workers=4) as load: ...; load.statuses
    """

    def __init__(self, url: str, bodies: Sequence[bytes], *, workers: int, tag: str) -> None:
        self.statuses: Counter[int] = Counter()
        self.versions: list[str] = []
        self._url, self._bodies, self._tag = url, bodies, tag
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(workers)]

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = 0
            while not self._stop.is_set():
                cid = f"{self._tag}-{worker}-{i}-{uuid.uuid4().hex[:6]}"
                response = predict(client, self._url, self._bodies[i % len(self._bodies)], cid)
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    self.versions.append(response.json()["model_version"])
                i += 1
