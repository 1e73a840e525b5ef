"""End to end over real HTTP: Ray Serve app, drift monitor, and a real OTLP receiver."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest

from serve_drift.models.digits import split_digits
from serve_drift.telemetry import instruments as tel
from serve_drift.tools.imageio import encode_png
from serve_drift.tools.shifts import apply_shift
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.serve import ADMIN, ServeInstance

pytestmark = pytest.mark.integration

WINDOW = 40
APP = "digits-it"


@pytest.fixture(scope="module")
def digits_app(serve_instance: ServeInstance) -> ServeInstance:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    args = {
        "model": {"source": "digits"},
        "drift": {
            "model_name": "digits",
            "window": {"size": WINDOW},
            "detectors": [{"backend": "alibi"}, {"backend": "native"}],
            "telemetry": {"configure_sdk": True, "link_sample_size": WINDOW},
            "shipping": {"flush_interval_s": 0.1},
        },
    }
    serve.run(build_app(args), name=APP, route_prefix="/digits")
    yield serve_instance
    serve.delete(APP)


def _images(count: int, *, seed: int, shift: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    split = split_digits(seed=0)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(split.test_images), size=count, replace=False)
    images = split.test_images[picks]
    if shift is not None:
        images = apply_shift(shift, images, severity=0.6, fraction=1.0, rng=rng)
    return images, split.test_labels[picks]


def _post(
    client: httpx.Client, app: ServeInstance, image: np.ndarray, request_id: str, **headers: str
) -> httpx.Response:
    return client.post(
        app.url("/digits/predict"),
        content=encode_png(image),
        headers={"content-type": "image/png", "x-request-id": request_id, **headers},
    )


def _send_window(app: ServeInstance, images: np.ndarray, prefix: str) -> list[str]:
    ids = [f"{prefix}-{i:03d}-{uuid.uuid4().hex[:8]}" for i in range(len(images))]
    with httpx.Client(timeout=30) as client:
        for image, request_id in zip(images, ids, strict=True):
            response = _post(client, app, image, request_id)
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == request_id
    return ids


def _results_for(
    app: ServeInstance, ids: list[str], *, pure: bool = False, timeout_s: float = 60
) -> list[dict[str, Any]]:
    """Results of windows holding some of ``ids`` (``pure``: windows made only of ``ids``)."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        results = httpx.get(app.url("/digits/drift?limit=500"), headers=ADMIN, timeout=10).json()[
            "results"
        ]
        mine = [
            r
            for r in results
            if (
                set(r["correlation_ids_sample"]) <= wanted
                if pure
                else wanted & set(r["correlation_ids_sample"])
            )
        ]
        if len(mine) >= 2:  # one per detector
            return mine
        time.sleep(0.3)
    raise AssertionError(f"no drift result covering {ids[0]}..: got {results}")


def test_predict_returns_prediction_and_echoes_request_id(digits_app: ServeInstance) -> None:
    images, _labels = _images(1, seed=1)
    with httpx.Client(timeout=30) as client:
        response = _post(client, digits_app, images[0], "it-predict-1")
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "it-predict-1"
    body = response.json()
    assert body["request_id"] == "it-predict-1"
    assert set(body) >= {"class_index", "label", "confidence", "top_k", "model_version"}
    assert 0.0 < body["confidence"] <= 1.0
    assert len(body["top_k"]) == 5 and body["top_k"][0]["class_index"] == body["class_index"]


def test_bad_payload_gets_clear_error(digits_app: ServeInstance) -> None:
    response = httpx.post(
        digits_app.url("/digits/predict"),
        content=b"not an image",
        headers={"content-type": "image/png", "x-request-id": "it-bad-1"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "image_decode_failed",
        "message": "the image could not be decoded as JPEG, PNG or WebP",
        "request_id": "it-bad-1",
    }


def test_correlation_id_ties_request_span_event_and_drift_test(
    digits_app: ServeInstance, otlp_receiver: OtlpReceiver
) -> None:
    images, _ = _images(WINDOW, seed=2)
    ids = _send_window(digits_app, images, "it-corr")
    results = _results_for(digits_app, ids)
    assert {r["backend"] for r in results} == {"alibi", "native"}
    probe = ids[WINDOW // 2]

    def request_span(r: OtlpReceiver):
        return next(
            (
                s
                for s in r.spans()
                if s.name == "serve_drift.request"
                and s.attributes.get(tel.ATTR_CORRELATION_ID) == probe
            ),
            None,
        )

    span = otlp_receiver.wait_for(request_span)
    assert span.attributes[tel.ATTR_MODEL_NAME] == "digits"
    assert span.attributes[tel.ATTR_MODEL_VERSION].startswith("digits-cnn-")
    assert tel.ATTR_PREDICTED_CLASS in span.attributes and tel.ATTR_CONFIDENCE in span.attributes
    assert span.attributes[tel.ATTR_LATENCY_S] > 0
    assert span.attributes[tel.ATTR_REFERENCE_VERSION] == results[0]["reference_version"]

    def drift_spans(r: OtlpReceiver):
        found = [
            s
            for s in r.spans()
            if s.name == "serve_drift.drift_test"
            and any(link.attributes.get(tel.ATTR_CORRELATION_ID) == probe for link in s.links)
        ]
        return found if len(found) >= 2 else None

    for drift_span in otlp_receiver.wait_for(drift_spans):
        link = next(
            link for link in drift_span.links if link.attributes[tel.ATTR_CORRELATION_ID] == probe
        )
        assert (link.trace_id, link.span_id) == (span.trace_id, span.span_id)
        assert drift_span.span_id in {r["span_id"] for r in results}
    for name in (
        "serve_drift.drift.p_value",
        "serve_drift.drift.distance",
        "serve_drift.drift.is_drift",
        "serve_drift.drift.windows_tested",
        "serve_drift.requests",
        "serve_drift.request.duration",
        "serve_drift.prediction.confidence",
        "serve_drift.embeddings.shipped",
    ):
        otlp_receiver.wait_for(lambda r, name=name: name in r.metric_names())
    histogram = otlp_receiver.metric_points("serve_drift.drift.p_value")[-1]
    assert list(histogram.bucket_bounds) == list(tel.P_VALUE_BUCKETS)


def test_client_traceparent_makes_request_span_part_of_client_trace(
    digits_app: ServeInstance, otlp_receiver: OtlpReceiver
) -> None:
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    images, _ = _images(1, seed=3)
    with httpx.Client(timeout=30) as client:
        response = _post(
            client,
            digits_app,
            images[0],
            "it-traceparent",
            traceparent=f"00-{trace_id}-{parent_id}-01",
        )
    assert response.status_code == 200
    span = otlp_receiver.wait_for(
        lambda r: next(
            (s for s in r.spans() if s.attributes.get(tel.ATTR_CORRELATION_ID) == "it-traceparent"),
            None,
        )
    )
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id)
    assert span.kind == "SERVER"


def test_clean_traffic_passes_and_shifted_traffic_drifts(digits_app: ServeInstance) -> None:
    # Two windows' worth of each, so at least one window holds nothing but that traffic.
    clean, _ = _images(2 * WINDOW, seed=4)
    clean_results = _results_for(digits_app, _send_window(digits_app, clean, "it-clean"), pure=True)
    shifted, _ = _images(2 * WINDOW, seed=5, shift="brightness")
    shifted_results = _results_for(
        digits_app, _send_window(digits_app, shifted, "it-shift"), pure=True
    )
    native_clean = next(r for r in clean_results if r["backend"] == "native")
    assert native_clean["p_value"] > 0.01 and not native_clean["is_drift"]
    for result in shifted_results:
        assert result["is_drift"], result
        assert result["distance"] > max(r["distance"] for r in clean_results)
    assert all(r["p_value"] > 0 for r in shifted_results if r["backend"] == "native")


def test_healthz_reports_ready(digits_app: ServeInstance) -> None:
    body = httpx.get(digits_app.url("/digits/admin/health"), headers=ADMIN, timeout=10).json()
    assert body["status"] == "ready", body
    assert body["monitor"]["reference"]["count"] > 0
