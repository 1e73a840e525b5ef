"""A phase's traffic: reproducible images, paced requests, and what came back."""

from __future__ import annotations

import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_drift.tools.drill_scenario import Phase, parse_scenario
from serve_drift.tools.drill_traffic import PhasePlan, phase_of, request_id, send_phase
from serve_drift.tools.sentinel_sets import embedded_set

IMAGES = embedded_set(40)


def _phase(**extra: object) -> Phase:
    data = {"name": "s", "phases": [{"name": "p", "windows": 1, "rate_per_s": 200, **extra}]}
    return parse_scenario(data).phases[0]


def _pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def test_the_same_seed_sends_the_same_images_in_any_order() -> None:
    phase = _phase(corruption={"name": "gaussian_noise", "severity": 3})
    a = PhasePlan(phase, index=1, images=IMAGES, count=20, seed=7)
    b = PhasePlan(phase, index=1, images=IMAGES, count=20, seed=7)
    forward = [a.payload(i) for i in range(20)]
    backward = [b.payload(i) for i in reversed(range(20))][::-1]  # threads finish in any order
    assert forward == backward
    other = PhasePlan(phase, index=2, images=IMAGES, count=20, seed=7)
    assert [other.payload(i) for i in range(20)] != forward  # each phase draws its own


def test_clean_requests_send_the_files_own_bytes_and_corrupted_ones_a_png_of_new_pixels() -> None:
    clean = PhasePlan(_phase(), index=0, images=IMAGES, count=5, seed=0)
    body, kind = clean.payload(0)
    assert body == IMAGES.items[int(clean.picks[0])].data and kind == "image/png"
    dark = PhasePlan(
        _phase(corruption={"name": "darkness", "severity": 4}),
        index=0,
        images=IMAGES,
        count=5,
        seed=0,
    )
    body, kind = dark.payload(0)
    original = _pixels(IMAGES.items[int(dark.picks[0])].data).astype(float)
    assert kind == "image/png" and _pixels(body).mean() < original.mean()


def test_a_fraction_corrupts_about_that_share() -> None:
    phase = _phase(corruption={"name": "darkness", "severity": 2, "fraction": 0.25})
    plan = PhasePlan(phase, index=0, images=IMAGES, count=400, seed=0)
    assert plan.corrupted.mean() == pytest.approx(0.25, abs=0.06)


def test_request_ids_name_their_run_and_phase() -> None:
    cid = request_id("ab12cd34", 3, 17)
    assert phase_of(cid, "ab12cd34") == 3
    assert phase_of(cid, "00000000") is None and phase_of("cam7-000123", "ab12cd34") is None


def _endpoint(answers: dict[int, httpx.Response], seen: list[float]) -> httpx.Client:
    lock = threading.Lock()

    def handle(request: httpx.Request) -> httpx.Response:
        i = int(request.headers["x-request-id"].rsplit("-", 1)[1])
        with lock:
            seen.append(time.monotonic())
        if i in answers:
            return answers[i]
        return httpx.Response(200, json={"class_index": 0, "flags": ["blur"] if i == 1 else []})

    return httpx.Client(transport=httpx.MockTransport(handle), base_url="http://app")


def test_a_phase_is_paced_at_its_rate_and_counts_every_answer() -> None:
    refused = {
        2: httpx.Response(503, text="Service Unavailable"),
        3: httpx.Response(422, json={"error": {"code": "implausible_input", "message": "m"}}),
    }
    seen: list[float] = []
    phase = _phase(rate_per_s=100)
    plan = PhasePlan(phase, index=0, images=IMAGES, count=30, seed=0)
    with _endpoint(refused, seen) as client:
        started = time.monotonic()
        t = send_phase(client, plan, run_id="r1", concurrency=4)
    assert t.sent == 30 and t.ok == 28
    assert t.rejected == {"503": 1, "422 implausible_input": 1}
    assert t.flagged == {"blur": 1}
    labels = [plan.label(i) for i in range(30) if i not in refused]
    assert t.correct == sum(label == 0 for label in labels) and len(t.labels) == 28
    # 30 requests at 100/s: the last is due 0.29 s after the start, and a pacer never sends
    # early (a slow machine only makes it later), so a burst would fail this.
    assert max(seen) - started >= 0.28


def test_a_transport_failure_is_counted_not_raised() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    plan = PhasePlan(_phase(), index=0, images=IMAGES, count=3, seed=0)
    with httpx.Client(transport=httpx.MockTransport(broken), base_url="http://app") as client:
        t = send_phase(client, plan, run_id="r1", concurrency=2)
    assert t.ok == 0 and t.rejected == {"transport_error": 3} and t.accuracy is None
    assert json.dumps(t.rejected)  # plain data, for the JSON verdict
