"""Bad, hostile and odd inputs over real HTTP to a running Ray Serve app.

Every bad input of ``BAD_INPUTS`` gets its status and error code, the body holds nothing but
code, message and request ID, and the replica serves a good request right afterwards. Hostile
headers, slow bodies and overload are sent over raw sockets, since well-behaved HTTP clients
refuse to send them.
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_drift.telemetry import instruments as tel
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.serve import ADMIN, ServeInstance
from tests.unit.ingress.test_decoding import BAD_INPUTS, TABLE_CONFIG, BadInput, encode

pytestmark = pytest.mark.integration

APP, PREFIX = "ingress-it", "/ingress"
BODY_TIMEOUT_S = 1.0
MAX_ONGOING, MAX_QUEUED = 2, 2
LEAK_MARKERS = ("Traceback", 'File "', ".py", "site-packages", "/tmp", "/home", "/work")


@pytest.fixture(scope="module")
def app(serve_instance: ServeInstance) -> ServeInstance:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    args = {
        "model": {"source": "digits"},
        "drift": {
            "model_name": "digits-ingress",
            "window": {"size": 20},
            "detectors": [{"backend": "native"}],
            "shipping": {"flush_interval_s": 0.1},
        },
        "ingress": {**TABLE_CONFIG, "limits": {"body_timeout_s": BODY_TIMEOUT_S}},
        "deployment": {"max_ongoing_requests": MAX_ONGOING, "max_queued_requests": MAX_QUEUED},
    }
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    yield serve_instance
    serve.delete(APP)


def digit_png(seed: int = 0) -> bytes:
    from serve_drift.models.digits import split_digits

    return encode(Image.fromarray(split_digits(seed=0).test_images[seed]))


def post(app: ServeInstance, body: bytes, content_type: str, request_id: str) -> httpx.Response:
    headers = {"x-request-id": request_id}
    if content_type:
        headers["content-type"] = content_type
    return httpx.post(app.url(f"{PREFIX}/predict"), content=body, headers=headers, timeout=30)


def assert_serves(app: ServeInstance) -> None:
    response = post(app, digit_png(), "image/png", "after-bad-input")
    assert response.status_code == 200, response.text


def assert_no_leak(text: str) -> None:
    for marker in (*LEAK_MARKERS, socket.gethostname()):
        assert marker not in text, f"{marker!r} leaked in {text[:300]!r}"


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_gets_typed_error_and_replica_keeps_serving(
    app: ServeInstance, case: BadInput
) -> None:
    request_id = f"bad-{case.name}"
    response = post(app, case.body(), case.content_type, request_id)
    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert set(response.json()) == {"error"} and set(error) == {"code", "message", "request_id"}
    assert (error["code"], error["request_id"]) == (case.code, request_id)
    assert_no_leak(response.text)
    assert_serves(app)


GREY_99 = Image.new("L", (8, 8), 99)
ODD_BUT_VALID = {
    "16-bit-grey-png": encode(Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)),
    "cmyk-jpeg": encode(Image.new("CMYK", (16, 16), (0, 50, 100, 0)), "JPEG"),
    "palette-transparent": encode(Image.new("P", (8, 8), 3), transparency=0),
    "rgba-webp": encode(Image.new("RGBA", (8, 8), (9, 99, 199, 128)), "WEBP"),
    "bilevel-png": encode(Image.fromarray(np.indices((8, 8)).sum(axis=0) % 2 == 0)),
    "apng-3-frames": encode(Image.new("L", (8, 8), 9), save_all=True, append_images=[GREY_99] * 2),
    "tall-1x2000": encode(Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), 8)[:2000, None])),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ODD_BUT_VALID))
def test_odd_modes_and_shapes_are_served(app: ServeInstance, name: str) -> None:
    response = post(app, ODD_BUT_VALID[name], "image/png", f"odd-{name}")
    assert response.status_code == 200, response.text
    assert 0 <= response.json()["class_index"] <= 9


# --- raw sockets: hostile headers, slow bodies, overload -------------------------------------


def raw_request(app: ServeInstance, request_id: bytes, body: bytes | None = None) -> bytes:
    body = digit_png() if body is None else body
    head = (
        b"POST " + PREFIX.encode() + b"/predict HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: image/png\r\nConnection: close\r\n"
        b"X-Request-ID: " + request_id + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", app.http_port), timeout=30) as sock:
        sock.sendall(head + body)
        return _read_until_closed(sock)


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def parse(response: bytes) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        key, _, value = line.partition(b":")
        headers.setdefault(key.strip().lower(), []).append(value.strip())
    if headers.get(b"transfer-encoding") == [b"chunked"]:
        body = _unchunk(body)
    return int(status_line.split()[1]), headers, body


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2 :]
    return out


def json_of(body: bytes) -> Any:
    import json

    return json.loads(body)


@pytest.mark.parametrize(
    ("raw_id", "in_body"),
    [
        (b"a\tb c", "a_b_c"),
        ("caf\u00e9".encode(), "caf_"),  # decoded as UTF-8 by Ray: one character
        (b"x" * 8000, "x" * 128),
    ],
    ids=["tab-and-space", "utf8", "oversized-8k"],
)
def test_hostile_ids_are_sanitised_in_body_and_span(
    app: ServeInstance, otlp_receiver: OtlpReceiver, raw_id: bytes, in_body: str
) -> None:
    status, headers, body = parse(raw_request(app, raw_id))
    assert status == 200 and json_of(body)["request_id"] == in_body
    # Ray Serve's proxy echoes the client's value itself, unchanged (documented in the README).
    assert headers[b"x-request-id"] == [raw_id]
    otlp_receiver.wait_for(
        lambda r: any(s.attributes.get(tel.ATTR_CORRELATION_ID) == in_body for s in r.spans())
    )


def test_crlf_in_an_id_ends_the_header_and_injects_nothing(app: ServeInstance) -> None:
    status, headers, body = parse(raw_request(app, b"abc\r\nX-Injected: 1"))
    assert status == 200 and json_of(body)["request_id"] == "abc"
    assert b"x-injected" not in headers and headers[b"x-request-id"] == [b"abc"]


@pytest.mark.parametrize("raw_id", [b"a\x01b", b"a\x00b", b"a\x7fb", b"a\nb"])
def test_control_characters_are_refused_by_the_http_server(
    app: ServeInstance, raw_id: bytes
) -> None:
    status, _, body = parse(raw_request(app, raw_id))
    assert status == 400 and body == b"Invalid HTTP request received."  # uvicorn, before Ray
    assert_serves(app)


def test_non_utf8_id_never_leaks_and_the_replica_keeps_serving(app: ServeInstance) -> None:
    # Ray Serve 2.60's proxy decodes the header as UTF-8 and answers a bare 500 when it cannot;
    # the request never reaches the app. We check it stays bare and harmless.
    status, _, body = parse(raw_request(app, b"caf\xe9"))
    assert status in (200, 500)
    assert_no_leak(body.decode("latin-1"))
    assert_serves(app)


def slow_body(app: ServeInstance) -> socket.socket:
    """A request whose body never finishes arriving."""
    sock = socket.create_connection(("127.0.0.1", app.http_port), timeout=30)
    sock.sendall(
        b"POST " + PREFIX.encode() + b"/predict HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: image/png\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n\x89PNG"
    )
    return sock


def test_body_that_does_not_arrive_in_time_is_408(app: ServeInstance) -> None:
    started = time.monotonic()
    with slow_body(app) as sock:
        status, _, body = parse(_read_until_closed(sock))
    assert status == 408 and json_of(body)["error"]["code"] == "body_timeout"
    assert BODY_TIMEOUT_S <= time.monotonic() - started < BODY_TIMEOUT_S + 5


def test_overload_answers_503_at_once_with_retry_after(app: ServeInstance) -> None:
    holders = []
    try:
        for _ in range(MAX_ONGOING + MAX_QUEUED):  # fill the replica and the proxy's queue
            holders.append(slow_body(app))
            time.sleep(0.05)
        time.sleep(0.2)
        started = time.monotonic()
        status, headers, body = parse(raw_request(app, b"overload"))
        elapsed = time.monotonic() - started
    finally:
        for sock in holders:
            sock.close()
    assert status == 503 and elapsed < 0.5
    assert headers[b"retry-after"] == [b"1"] and b"backpressure" in body
    assert_no_leak(body.decode())
    time.sleep(BODY_TIMEOUT_S)  # let the held requests drain
    assert_serves(app)


def test_rejections_are_counted_and_on_the_request_span(
    app: ServeInstance, otlp_receiver: OtlpReceiver
) -> None:
    post(app, b"GIF89a", "image/png", "it-rejected-span")
    span = otlp_receiver.wait_for(
        lambda r: next(
            (
                s
                for s in r.spans()
                if s.name == "serve_drift.request"
                and s.attributes.get(tel.ATTR_CORRELATION_ID) == "it-rejected-span"
            ),
            None,
        )
    )
    assert span.attributes[tel.ATTR_INGRESS_ERROR_CODE] == "unsupported_image_format"
    assert span.attributes[tel.ATTR_HTTP_STATUS] == 415
    codes = otlp_receiver.wait_for(
        lambda r: (
            {p.attributes.get("code") for p in r.metric_points("serve_drift.ingress.rejected")}
            >= {"unsupported_image_format", "body_timeout", "json_too_deep"}
        )
    )
    assert codes


def test_constant_frames_are_flagged_and_kept_out_of_drift_windows(app: ServeInstance) -> None:
    ids = [f"blank-{i}" for i in range(40)]
    for i, request_id in enumerate(ids):
        frame = encode(Image.new("L", (8, 8), 6 * i))  # below "saturated", blocked here
        response = post(app, frame, "image/png", request_id)
        assert response.status_code == 200 and "constant" in response.json()["flags"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        monitor = httpx.get(app.url(f"{PREFIX}/admin/health"), headers=ADMIN, timeout=10).json()[
            "monitor"
        ]
        if monitor.get("excluded", 0) >= len(ids):
            break
        time.sleep(0.3)
    assert monitor["excluded"] >= len(ids), monitor
    results = httpx.get(app.url(f"{PREFIX}/drift?limit=500"), headers=ADMIN, timeout=10).json()[
        "results"
    ]
    assert not any(set(r["correlation_ids_sample"]) & set(ids) for r in results)


def test_image_too_large_for_a_real_decoder_is_refused_fast(app: ServeInstance) -> None:
    # A real 7000x7000 PNG of zeros: ~150 KB on the wire, 49 MP once decoded.
    buffer = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buffer, format="PNG", optimize=False)
    started = time.monotonic()
    response = post(app, buffer.getvalue(), "image/png", "real-bomb")
    assert response.status_code == 413 and response.json()["error"]["code"] == "image_too_large"
    assert time.monotonic() - started < 2
