"""A replayed request crosses a pickle boundary and reads like the client's own request."""

from __future__ import annotations

import asyncio
import pickle

from serve_drift.ingress.body import read_body
from serve_drift.routing.forward import ReplayedRequest


def test_a_replayed_request_pickles_and_its_body_reads_once() -> None:
    request = ReplayedRequest.build(
        method="POST", path="/v1/predict", body=b"\x89PNG...", headers={"Content-Type": "image/png"}
    )
    copy = pickle.loads(pickle.dumps(request))
    assert (copy.method, copy.url.path, copy.headers["content-type"]) == (
        "POST",
        "/v1/predict",
        "image/png",
    )
    body = asyncio.run(read_body(copy, max_bytes=100, timeout_s=1.0))
    assert body == b"\x89PNG..."


def test_with_headers_replaces_only_the_named_headers() -> None:
    request = ReplayedRequest.build(
        method="POST",
        path="/predict",
        headers={"traceparent": "00-aa-bb-01", "x-request-id": "r1", "authorization": "Bearer t"},
    )
    changed = request.with_headers({"Traceparent": "00-cc-dd-01"})
    assert changed.headers.getlist("traceparent") == ["00-cc-dd-01"]
    assert (
        changed.headers["x-request-id"] == "r1" and changed.headers["authorization"] == "Bearer t"
    )
    assert request.headers["traceparent"] == "00-aa-bb-01"  # the original is unchanged


def test_only_the_scope_an_arm_needs_is_kept() -> None:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/healthz",
        "headers": [],
        "query_string": b"limit=5",
        "app": object(),  # the proxy's own objects never travel
        "state": {"x": 1},
    }
    request = ReplayedRequest(scope, b"")
    assert "app" not in request.scope and "state" not in request.scope
    assert pickle.loads(pickle.dumps(request)).query_params["limit"] == "5"
