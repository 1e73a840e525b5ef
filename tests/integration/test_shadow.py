"""Shadow mode over real HTTP with two real models: the incumbent answers every request, the
candidate sees a copy of each under the same correlation ID, the comparison reaches the OTLP
receiver, the decision rolls back a weaker candidate and promotes an equal one, and promotion
and rollback during load fail no request."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from serve_drift.eventlog.store import EventStore
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.serve import ServeInstance
from tests.support.shadow import (
    EQUAL,
    WEAK,
    BackgroundLoad,
    change,
    deploy_incumbent,
    deploy_router,
    deploy_variant,
    evidence,
    label_all,
    report,
    send_all,
    traffic,
    version_of,
    wait,
)

pytestmark = pytest.mark.integration

WINDOW = 50
INCUMBENT, CANDIDATE, ROUTER = "sh-inc", "sh-cand", "sh"
PREFIX = "/sh"


@pytest.fixture(scope="module")
def apps(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from ray import serve

    db_dir = tmp_path_factory.mktemp("shadow")
    deploy_incumbent(INCUMBENT, db_dir=db_dir, window=WINDOW)
    deploy_variant(CANDIDATE, WEAK, db_dir=db_dir, window=WINDOW)
    deploy_router(
        ROUTER,
        PREFIX,
        {
            "incumbent": {"app": INCUMBENT},
            "candidate": {"app": CANDIDATE},
            "comparison": {
                "window_size": WINDOW,
                "path": str(db_dir / "shadow.sqlite"),
                "shipping": {"flush_interval_s": 0.05},
            },
            "decision": {"min_pairs": 2 * WINDOW, "min_labels": 2 * WINDOW},
        },
    )
    yield {"url": serve_instance.url(PREFIX), "db_dir": db_dir}
    for app in (ROUTER, CANDIDATE, INCUMBENT):
        serve.delete(app)


def _ids(tag: str, n: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"{tag}-{run}-{i:04d}" for i in range(n)]


def _phase(url: str, n: int, *, tag: str, seed: int) -> tuple[list[httpx.Response], list[str]]:
    """n requests, then their labels; waits until the comparator holds all of them."""
    bodies, labels = traffic(n, seed=seed)
    ids = _ids(tag, n)
    before = evidence(report(url))["observations"]
    responses = send_all(url, bodies, ids)
    label_all(url, dict(zip(ids, labels, strict=True)))
    wait(
        lambda: (
            (s := evidence(report(url)))["observations"] >= before + n and s["paired_labels"] >= n
        ),
        what="the comparator to hold every request and label",
    )
    return responses, ids


def test_in_shadow_mode_every_response_comes_from_the_incumbent(apps: dict[str, Any]) -> None:
    url = apps["url"]
    responses, ids = _phase(url, 2 * WINDOW, tag="shadow-only", seed=1)
    assert [r.status_code for r in responses] == [200] * len(ids)
    assert {r.json()["model_version"] for r in responses} == {version_of()}
    assert {r.headers["x-serve-drift-arm"] for r in responses} == {"incumbent"}
    assert [r.headers["x-request-id"] for r in responses] == ids
    # The candidate served every copy under the client's correlation ID, in its own event log.
    candidate_db = apps["db_dir"] / f"{CANDIDATE}-s0-e2.sqlite"
    with EventStore(candidate_db) as store:
        served = wait(lambda: (s := store.served(ids)) and len(s) == len(ids) and s, what="rows")
    assert {r.model_version for rows in served.values() for r in rows} == {version_of(0, 2)}


def test_the_comparison_reaches_the_otlp_receiver_with_linked_traces(
    apps: dict[str, Any], otlp_receiver: OtlpReceiver
) -> None:
    url = apps["url"]
    _phase(url, WINDOW, tag="otlp", seed=2)
    agreement = otlp_receiver.wait_for(
        lambda r: [p for p in r.metric_points("serve_drift.shadow.agreement")], timeout_s=60
    )
    assert all(0 <= p.value <= 1 for p in agreement)
    assert otlp_receiver.wait_for(lambda r: r.metric_points("serve_drift.shadow.mirrored"))
    for name in ("serve_drift.shadow.flips", "serve_drift.shadow.verdict"):
        assert otlp_receiver.wait_for(lambda r, n=name: r.metric_points(n), timeout_s=30)

    def linked(receiver: OtlpReceiver) -> Any:
        spans = receiver.spans()
        by_id = {s.span_id: s for s in spans}
        for mirror in (s for s in spans if s.name == "serve_drift.shadow.mirror"):
            children = [s for s in spans if s.parent_span_id == mirror.span_id]
            route = next((by_id.get(link.span_id) for link in mirror.links), None)
            if children and route is not None:
                return mirror, children[0], route, spans
        return None

    mirror, candidate_span, route, spans = otlp_receiver.wait_for(linked, timeout_s=60)
    cid = mirror.attributes["serve_drift.correlation_id"]
    incumbent_span = next(
        s for s in spans if s.parent_span_id == route.span_id and s.name == "serve_drift.request"
    )
    assert candidate_span.name == "serve_drift.request"
    assert candidate_span.attributes["serve_drift.correlation_id"] == cid
    assert incumbent_span.attributes["serve_drift.correlation_id"] == cid
    assert candidate_span.trace_id != incumbent_span.trace_id  # linked, not in the same trace


def test_the_decision_rolls_back_the_weaker_candidate(apps: dict[str, Any]) -> None:
    url = apps["url"]
    _phase(url, 3 * WINDOW, tag="weak", seed=3)
    body = wait(
        lambda: (r := report(url))["decision"]["evidence"]["drift"]["candidate"]["windows"] and r,
        what="the candidate's monitor to test a window",
    )
    decision = body["decision"]
    assert decision["verdict"] == "rollback", decision["reasons"]
    accuracy = next(c for c in decision["checks"] if c["name"] == "accuracy")
    assert accuracy["rollback"] and accuracy["value"] > 0.02
    refused = change(url, "promote", reason="try anyway")
    assert refused["status_code"] == 409 and refused["code"] == "decision_not_promote"
    applied = change(url, "rollback", reason="weaker candidate")
    assert applied["applied"] and applied["state"]["route_all_to"] == "incumbent"
    arms = {arm["arm"]: arm for arm in applied["change"]["arms"]}
    assert arms["candidate"]["model_version"] == version_of(0, 2)
    assert arms["candidate"]["reference_hash"].startswith("sha256:")
    assert arms["incumbent"]["model_version"] == version_of()


def test_an_equal_candidate_is_promoted(apps: dict[str, Any]) -> None:
    url = apps["url"]
    deploy_variant(CANDIDATE, EQUAL, db_dir=apps["db_dir"], window=WINDOW)
    resumed = change(url, "resume", reason="an equal candidate")
    assert resumed["applied"] and resumed["state"]["route_all_to"] is None
    _phase(url, 3 * WINDOW, tag="equal", seed=4)
    body = wait(
        lambda: (r := report(url))["decision"]["evidence"]["drift"]["candidate"]["windows"] and r,
        what="the new candidate's monitor to test a window",
    )
    decision = body["decision"]
    assert decision["evidence"]["candidate_version"] == version_of(1, 30)
    assert decision["verdict"] == "promote", decision["reasons"]
    applied = change(url, "promote", reason="equal candidate")
    assert applied["applied"] and applied["state"]["route_all_to"] == "candidate"


def test_promote_and_rollback_under_load_fail_no_request(apps: dict[str, Any]) -> None:
    url = apps["url"]
    bodies, _ = traffic(40, seed=5)
    with BackgroundLoad(url, bodies, workers=4, tag="load") as load:
        for action, body in (
            ("rollback", {}),
            ("resume", {}),
            ("promote", {"force": True, "reason": "load test"}),
            ("rollback", {"reason": "load test"}),
        ):
            before = load.sent
            wait(lambda b=before: load.sent > b + 30, what="load before the change")
            assert change(url, action, **body)["applied"]
        wait(lambda b=load.sent: load.sent > b + 30, what="load after the last change")
    assert set(load.statuses) == {200}, load.statuses
    assert {version_of(), version_of(1, 30)} <= set(load.versions)  # both arms answered in turn
    history = httpx.get(f"{url}/shadow/history", headers={"authorization": "Bearer x"}, timeout=10)
    assert history.status_code == 401
