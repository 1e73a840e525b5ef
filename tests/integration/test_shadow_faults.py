"""Faults of the candidate, with real processes: it raises, hangs, answers garbage, or is
killed mid-load. The incumbent answers every request, unchanged, and never waits for it; each
fault ends up counted in the comparison as the candidate's failure."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
import torch

from serve_drift import monitored
from tests.support.serve import ServeInstance
from tests.support.shadow import (
    BackgroundLoad,
    deploy_incumbent,
    deploy_router,
    report,
    traffic,
    version_of,
    wait,
)

pytestmark = pytest.mark.integration

INCUMBENT, CANDIDATE, ROUTER = "fa-inc", "fa-cand", "fa"
PREFIX = "/fa"
HANG_S = 30.0
TIMEOUT_S = 0.5


@monitored(
    {
        "model_name": "faulty-candidate",
        "monitor_deployment": "DriftMonitor",
        "shipping": {"flush_interval_s": 0.05},
        "events": {"enabled": False},
    }
)
class FaultyCandidate:
    """A monitored digits-shaped deployment whose behaviour its user_config chooses."""

    def __init__(self) -> None:
        from serve_drift.models.digits import load_or_train_digits_model

        self.model, _ = load_or_train_digits_model(seed=0, epochs=2)
        self.fault = "none"

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.fault = config.get("fault", "none")

    async def __call__(self, request: Any) -> Any:
        if request.url.path.endswith("/pid"):
            return {"pid": os.getpid()}
        await request.body()
        with torch.no_grad():
            logits = self.model(torch.zeros(1, 1, 8, 8))
        if self.fault == "raise":
            raise RuntimeError("the candidate has a bug")
        if self.fault == "hang":
            await asyncio.sleep(HANG_S)
        if self.fault == "nan":
            return {"class_index": 3, "confidence": float("nan"), "model_version": "faulty"}
        if self.fault == "wrong_shape":
            return {"predictions": [{"class_index": 1, "confidence": 0.5}] * 3}
        return {
            "class_index": int(logits.argmax()),
            "confidence": float(torch.softmax(logits, -1).max()),
            "model_version": "faulty",
        }


def _deploy_candidate(fault: str) -> None:
    from ray import serve

    from serve_drift import monitored_app

    deployment: Any = serve.deployment(FaultyCandidate)
    deployment = deployment.options(
        name="FaultyCandidate", user_config={"fault": fault}, max_ongoing_requests=8
    )
    serve.run(monitored_app(deployment), name=CANDIDATE, route_prefix=None)


@pytest.fixture(scope="module")
def apps(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from ray import serve

    db_dir = tmp_path_factory.mktemp("faults")
    deploy_incumbent(INCUMBENT, db_dir=db_dir, window=50)
    _deploy_candidate("none")
    deploy_router(
        ROUTER,
        PREFIX,
        {
            "incumbent": {"app": INCUMBENT},
            "candidate": {"app": CANDIDATE},
            "mirror": {"timeout_s": TIMEOUT_S, "max_in_flight": 4, "queue_size": 16},
            "comparison": {"window_size": 10, "path": str(db_dir / "faults.sqlite")},
        },
    )
    yield {"url": serve_instance.url(PREFIX)}
    for app in (ROUTER, CANDIDATE, INCUMBENT):
        serve.delete(app)


def _failures(url: str) -> Counter[str]:
    """The candidate's failures in the comparator's current evidence, by kind."""
    arms = report(url)["decision"]["evidence"]["summary"]["arms"]
    return Counter(arms["candidate"]["failures"])


def _mirror_counts(url: str) -> dict[str, int]:
    """Shadow copies by outcome, as the comparator (which sends them) counted them."""
    counts: dict[str, int] = report(url)["mirror"]
    return counts


def _serve_sequentially(url: str, n: int, tag: str) -> tuple[list[httpx.Response], float]:
    bodies, _ = traffic(n, seed=11)
    started = time.monotonic()
    with httpx.Client(timeout=60) as client:
        responses = [
            client.post(
                f"{url}/predict",
                content=body,
                headers={"content-type": "image/png", "x-request-id": f"{tag}-{uuid.uuid4().hex}"},
            )
            for body in bodies
        ]
    return responses, time.monotonic() - started


def _assert_incumbent_answered(responses: list[httpx.Response]) -> None:
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert {r.json()["model_version"] for r in responses} == {version_of()}


@pytest.mark.parametrize(
    ("fault", "status"),
    [("raise", "error"), ("hang", "timeout"), ("nan", "invalid"), ("wrong_shape", "invalid")],
)
def test_a_faulty_candidate_never_fails_or_delays_the_incumbent(
    apps: dict[str, Any], fault: str, status: str
) -> None:
    url = apps["url"]
    _deploy_candidate(fault)  # only user_config changes
    before = _failures(url)[status]
    responses, elapsed_s = _serve_sequentially(url, 30, fault)
    _assert_incumbent_answered(responses)
    if fault == "hang":
        # 30 requests in a row, each copied to a candidate that holds it 30 s: none waited.
        assert elapsed_s < HANG_S
    failures = wait(
        lambda: (f := _failures(url))[status] >= before + 10 and f, what=f"{fault} counted"
    )
    assert failures[status] >= before + 10
    _deploy_candidate("none")


def test_a_candidate_killed_mid_load_fails_no_incumbent_request(apps: dict[str, Any]) -> None:
    from ray import serve

    from serve_drift.routing.forward import ReplayedRequest

    url = apps["url"]
    handle = serve.get_app_handle(CANDIDATE)
    pid = handle.remote(ReplayedRequest.build(method="GET", path="/pid")).result()["pid"]
    bodies, _ = traffic(20, seed=12)
    with BackgroundLoad(url, bodies, workers=3, tag="kill") as load:
        wait(lambda: _mirror_counts(url).get("completed", 0) > 20, what="load and copies")
        completed = _mirror_counts(url)["completed"]
        os.kill(pid, signal.SIGKILL)
        wait(
            lambda: _failures(url)["error"] + _failures(url)["timeout"] > 0,
            what="the killed candidate's failures counted",
        )
        # Serve restarts the candidate; the comparator's copies complete again.
        wait(
            lambda: _mirror_counts(url).get("completed", 0) > completed + 20,
            timeout_s=120,
            what="copies completing again",
        )
    assert set(load.statuses) == {200}, load.statuses
    assert {version_of()} == set(load.versions)
    new_pid = handle.remote(ReplayedRequest.build(method="GET", path="/pid")).result()["pid"]
    assert new_pid != pid
