"""The ready-made app's ingress without Ray: error contract, counting, spans, marks, 408, 500."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from serve_drift import monitored
from serve_drift.apps.classifier import ImageClassifier
from serve_drift.ingress import STATUS_BY_CODE
from serve_drift.messages import EventBatch
from serve_drift.replica.decorator import replica_monitor
from serve_drift.telemetry import instruments as tel
from tests.support.serve import ADMIN_TOKEN
from tests.support.telemetry_memory import memory_telemetry, metric_points


class _Ingest:
    def __init__(self) -> None:
        self.batches: list[EventBatch] = []

    async def remote(self, batch: EventBatch) -> int:
        self.batches.append(batch)
        return len(batch.events)


class _Answer:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []

    async def remote(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.answer


@dataclass(frozen=True)
class _Health:
    status: str = "ready"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reasons": [], "event_log": {"path": "/secret/store"}}


class FakeMonitor:
    def __init__(self) -> None:
        self.ingest = _Ingest()
        self.results = _Answer([])
        self.health = _Answer(_Health())
        self.submit_labels = _Answer([])


def make_request(
    chunks: list[bytes] | bytes,
    *,
    content_type: str = "image/png",
    method: str = "POST",
    path: str = "/predict",
    query: bytes = b"",
    stall: bool = False,
    disconnect: bool = False,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> Request:
    """A Starlette request whose body arrives in ``chunks``; then it stalls or disconnects."""
    pending = [chunks] if isinstance(chunks, bytes) else list(chunks)
    headers = [(b"content-type", content_type.encode()), *(extra_headers or [])]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers,
        "scheme": "http",
        "server": ("testserver", 80),
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        if pending:
            more = len(pending) > 1 or stall or disconnect
            return {"type": "http.request", "body": pending.pop(0), "more_body": more}
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return Request(scope, receive)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_png(index: int = 0) -> bytes:
    from serve_drift.models.digits import split_digits

    return png_bytes(split_digits(seed=0).test_images[index])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("ingress-app-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERVE_DRIFT_CACHE_DIR", str(path))
        patch.setenv("SERVE_DRIFT_ADMIN_TOKEN", ADMIN_TOKEN)
        yield path


def build(ingress: dict[str, Any] | None = None, *, name: str = "ingress-unit") -> Any:
    cls = monitored(
        {"model_name": name, "shipping": {"flush_interval_s": 0.01}}, methods=("predict",)
    )(ImageClassifier)
    return cls({"source": "digits"}, top_k=3, ingress=ingress, drift_monitor=FakeMonitor())


@pytest.fixture(scope="module")
def app(cache_dir: Path) -> Any:
    memory_telemetry()
    return build({"limits": {"body_timeout_s": 0.2, "max_body_bytes": 100_000}})


def call(instance: Any, request: Request) -> tuple[int, dict[str, Any]]:
    async def run() -> Response:
        response = await instance(request)
        await replica_monitor(instance).shipper.flush()
        return response

    response = asyncio.run(run())
    return response.status_code, json.loads(bytes(response.body))


def assert_error(status: int, body: dict[str, Any], code: str) -> None:
    assert (status, body["error"]["code"]) == (STATUS_BY_CODE[code], code), body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}


def test_good_png_is_classified(app: Any) -> None:
    status, body = call(app, make_request(digit_png()))
    assert status == 200 and "flags" not in body
    assert 0 <= body["class_index"] <= 9 and len(body["top_k"]) == 3


def test_body_arriving_in_chunks_is_read_whole(app: Any) -> None:
    raw = digit_png()
    status, _ = call(app, make_request([raw[:10], raw[10:50], raw[50:]]))
    assert status == 200


def test_stalled_body_is_408(app: Any) -> None:
    status, body = call(app, make_request([b"\x89PNG"], stall=True))
    assert_error(status, body, "body_timeout")


def test_client_disconnect_is_a_typed_error(app: Any) -> None:
    status, body = call(app, make_request([b"\x89PNG"], disconnect=True))
    assert_error(status, body, "client_disconnected")


def test_declared_oversized_body_is_refused_before_reading(app: Any) -> None:
    request = make_request([b"x"], stall=True, extra_headers=[(b"content-length", b"999999999")])
    status, body = call(app, request)  # would time out if the body were read
    assert_error(status, body, "body_too_large")


def test_chunked_body_is_cut_off_at_the_limit(app: Any) -> None:
    status, body = call(app, make_request([b"x" * 60_000, b"x" * 60_000], stall=True))
    assert_error(status, body, "body_too_large")


def test_tensor_payloads_are_classified(app: Any) -> None:
    batch = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, batch, allow_pickle=False)
    status, body = call(app, make_request(buffer.getvalue(), content_type="application/x-npy"))
    assert status == 200 and len(body["predictions"]) == 2
    as_json = json.dumps({"tensor": batch[0].tolist()}).encode()
    status, body = call(app, make_request(as_json, content_type="application/json"))
    assert status == 200 and "class_index" in body


def test_rejection_is_counted_and_recorded_on_the_request_span(app: Any) -> None:
    spans, reader = memory_telemetry()
    spans.clear()
    status, body = call(app, make_request(b"GIF89a....", content_type="image/png"))
    assert_error(status, body, "unsupported_image_format")
    span = next(s for s in spans.get_finished_spans() if s.name == "serve_drift.request")
    assert span.attributes[tel.ATTR_INGRESS_ERROR_CODE] == "unsupported_image_format"
    assert span.attributes[tel.ATTR_HTTP_STATUS] == 415
    assert [e.name for e in span.events] == ["serve_drift.ingress.rejected"]
    assert span.attributes[tel.ATTR_CORRELATION_ID] == body["error"]["request_id"]
    codes = [p.attributes["code"] for p in metric_points(reader, "serve_drift.ingress.rejected")]
    assert "unsupported_image_format" in codes
    outcomes = {p.attributes["outcome"] for p in metric_points(reader, "serve_drift.requests")}
    assert "rejected" in outcomes


def test_payload_is_never_logged(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    secret = b"SECRET-PAYLOAD-" + b"z" * 40
    with caplog.at_level("DEBUG"):
        call(app, make_request(secret, content_type="image/png"))
        call(app, make_request(b'{"image": "' + secret + b'"}', content_type="application/json"))
    assert "SECRET-PAYLOAD" not in caplog.text


def test_unexpected_exception_is_a_generic_counted_500(
    app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, reader = memory_telemetry()

    leaked = "/home/secret/path.py leaked " + "SECRET-PAYLOAD"

    def explode(*_: Any) -> None:
        raise RuntimeError(leaked)  # the traceback shows this line, not the message

    monkeypatch.setattr(app, "_classify", explode)
    with caplog.at_level("ERROR"):
        status, body = call(app, make_request(digit_png()))
    assert_error(status, body, "internal_error")
    assert "secret" not in json.dumps(body).lower()
    assert "RuntimeError" in caplog.text and "SECRET-PAYLOAD" not in caplog.text
    codes = [p.attributes["code"] for p in metric_points(reader, "serve_drift.ingress.rejected")]
    assert "internal_error" in codes


def test_unknown_route_and_bad_query_follow_the_contract(app: Any) -> None:
    status, body = call(app, make_request(b"", method="GET", path="/nope"))
    assert_error(status, body, "not_found")
    for limit in (b"abc", "²".encode(), b"0", b"501", b"99999999999999999999"):
        request = make_request(b"", method="GET", path="/drift", query=b"limit=" + limit)
        request = _with_headers(request, ADMIN_HEADER)
        status, body = call(app, request)
        assert_error(status, body, "invalid_query")


ADMIN_HEADER = [(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())]


def _with_headers(request: Request, headers: list[tuple[bytes, bytes]]) -> Request:
    request.scope["headers"] = [*request.scope["headers"], *headers]
    return Request(request.scope, request.receive)


ADMIN_ROUTES = [("GET", "/drift"), ("POST", "/labels"), ("GET", "/admin/health")]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize(
    "credential", [[], [(b"authorization", b"Bearer wrong-but-long-enough-token")]]
)
def test_admin_routes_refuse_a_missing_or_wrong_credential(
    app: Any, method: str, path: str, credential: list[tuple[bytes, bytes]]
) -> None:
    request = _with_headers(make_request(b"{}", method=method, path=path), credential)
    status, body = call(app, request)
    assert_error(status, body, "unauthorized")
    assert "token" in body["error"]["message"] and ADMIN_TOKEN not in json.dumps(body)


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_answer_the_right_credential(app: Any, method: str, path: str) -> None:
    body_bytes = b'{"correlation_id": "c-1", "label": 3}'
    request = make_request(body_bytes, method=method, path=path, content_type="application/json")
    status, _ = call(app, _with_headers(request, ADMIN_HEADER))
    assert status == 200


def test_admin_operations_are_disabled_without_a_configured_token(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SERVE_DRIFT_ADMIN_TOKEN")
    instance = build(name="no-admin")
    status, body = call(
        instance, _with_headers(make_request(b"", method="GET", path="/drift"), ADMIN_HEADER)
    )
    assert_error(status, body, "admin_disabled")


def test_public_health_says_ready_or_degraded_and_nothing_else(app: Any) -> None:
    status, body = call(app, make_request(b"", method="GET", path="/healthz"))
    assert status == 200 and body == {"status": "ready"}
    request = _with_headers(make_request(b"", method="GET", path="/admin/health"), ADMIN_HEADER)
    status, body = call(app, request)
    assert status == 200 and body["monitor"]["event_log"] == {"path": "/secret/store"}


def test_labels_are_checked_against_the_model_classes(app: Any) -> None:
    labels = [
        {"correlation_id": "ok", "label": 9},
        {"correlation_id": "too-big", "label": 10},
        {"correlation_id": "huge", "label": 2**63},
        {"correlation_id": "negative", "label": -1},
    ]
    request = make_request(
        json.dumps({"labels": labels}).encode(),
        path="/labels",
        content_type="application/json",
    )
    monitor = replica_monitor(app)._monitor_handle
    monitor.submit_labels.calls.clear()
    status, _ = call(app, _with_headers(request, ADMIN_HEADER))
    assert status == 200
    (items,) = monitor.submit_labels.calls[0]
    statuses = [getattr(item, "status", "label") for item in items]
    assert statuses == ["label", "invalid", "invalid", "invalid"]  # the batch is not lost


def test_an_unverified_sentinel_claim_is_refused(app: Any) -> None:
    claim = [(b"x-serve-drift-context-source", b"sentinel")]
    status, body = call(app, _with_headers(make_request(digit_png()), claim))
    assert_error(status, body, "unauthorized")
    status, body = call(app, _with_headers(make_request(digit_png()), [*claim, *ADMIN_HEADER]))
    assert status == 200 and "class_index" in body


def test_constant_frame_is_flagged_and_marked_out_of_drift(app: Any) -> None:
    monitor = replica_monitor(app)
    before = len(monitor._monitor_handle.ingest.batches)
    status, body = call(app, make_request(png_bytes(np.zeros((8, 8), dtype=np.uint8))))
    assert status == 200 and set(body["flags"]) >= {"constant", "dark"}
    batch = monitor._monitor_handle.ingest.batches[before]
    (event,) = batch.events
    assert "constant" in event.flags and event.exclude_from_drift


def test_blocking_policy_answers_422_without_a_forward_pass(cache_dir: Path) -> None:
    blocking = build({"plausibility": {"constant": {"action": "block"}}}, name="blocking")
    batches = replica_monitor(blocking)._monitor_handle.ingest.batches
    status, body = call(blocking, make_request(png_bytes(np.full((8, 8), 9, dtype=np.uint8))))
    assert_error(status, body, "implausible_input")
    assert "constant" in body["error"]["message"] and batches == []


def test_quarantine_keeps_the_input_and_serves(cache_dir: Path, tmp_path: Path) -> None:
    config = {
        "plausibility": {"constant": {"action": "quarantine"}},
        "quarantine": {"directory": str(tmp_path)},
    }
    instance = build(config, name="quarantining")
    raw = png_bytes(np.full((8, 8), 200, dtype=np.uint8))

    async def run() -> Response:
        response = await instance(make_request(raw))
        await instance.gate.drain()
        return response

    assert asyncio.run(run()).status_code == 200
    (entry,) = instance.gate.quarantine.entries()
    assert entry.data_path.read_bytes() == raw and entry.data_path.suffix == ".png"
    assert entry.metadata["checks"][0]["check"] == "constant" and entry.metadata["served"]
