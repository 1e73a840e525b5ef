"""A drill phase's traffic: images chosen and corrupted under the scenario's seed, sent over
HTTP at the phase's rate, and what came back.

Requests are paced open-loop (request ``i`` is due ``i / rate`` seconds after the phase
starts, sent by one of ``concurrency`` workers), so a slow endpoint shows as a lower achieved
rate, not as a drill that waits politely. Each image's corruption is seeded by
``(scenario seed, phase, request)``: a drill replays the same pixels whatever the thread
timing. Correlation IDs are ``drill-<run>-<phase>-<request>``, which is how drift windows are
matched back to phases.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np

from serve_drift.corruptions import corrupt
from serve_drift.tools.drill_scenario import Phase
from serve_drift.tools.imageio import encode_png
from serve_drift.tools.sentinel_sets import ImageSet

ID_PREFIX = "drill"


@dataclass(frozen=True)
class Outcome:
    """One request: its status (``ok``, an HTTP status and error code, or ``transport_error``),
    the predicted class when it was answered, and the ingress flags the answer carried."""

    status: str
    predicted: int | None = None
    flags: tuple[str, ...] = ()
    latency_s: float = 0.0


@dataclass(frozen=True)
class PhaseTraffic:
    """What one phase sent and got back (wall-clock times, ``time.time()``)."""

    index: int
    name: str
    clean: bool
    corruption: str | None
    started_at: float
    ended_at: float
    sent: int
    ok: int
    rejected: dict[str, int]
    flagged: dict[str, int]
    correct: int | None  # None: the images have no labels
    labels: dict[str, int] = field(repr=False, default_factory=dict)  # answered id -> label
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None or not self.ok else self.correct / self.ok

    @property
    def achieved_rate_per_s(self) -> float:
        return self.sent / max(self.ended_at - self.started_at, 1e-9)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def request_id(run_id: str, phase: int, i: int) -> str:
    return f"{ID_PREFIX}-{run_id}-{phase:02d}-{i:06d}"


def phase_of(correlation_id: str, run_id: str) -> int | None:
    """The phase index a drill request's ID names; ``None`` for any other traffic."""
    prefix = f"{ID_PREFIX}-{run_id}-"
    if not correlation_id.startswith(prefix):
        return None
    head = correlation_id[len(prefix) :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


class PhasePlan:
    """Which images a phase sends and how each is corrupted (deterministic under the seed)."""

    def __init__(
        self, phase: Phase, *, index: int, images: ImageSet, count: int, seed: int
    ) -> None:
        rng = np.random.default_rng([seed, index])
        self.phase, self.index, self.images, self.seed = phase, index, images, seed
        self.picks = rng.integers(0, len(images.items), size=count)
        fraction = phase.corruption.fraction if phase.corruption else 0.0
        self.corrupted = (
            rng.random(count) < fraction if fraction < 1.0 else np.full(count, fraction == 1.0)
        )

    def __len__(self) -> int:
        return len(self.picks)

    def payload(self, i: int) -> tuple[bytes, str]:
        """The request body and content type of request ``i``: the file's own bytes when it
        is sent clean, a PNG of the corrupted pixels otherwise."""
        item = self.images.items[int(self.picks[i])]
        spec = self.phase.corruption
        if spec is None or not self.corrupted[i]:
            return item.data, item.content_type
        seed = np.random.default_rng([self.seed, self.index, i, 1])
        image = corrupt(item.pixels(), spec.name, severity=spec.severity, seed=seed, **spec.options)
        return encode_png(np.asarray(image)), "image/png"

    def label(self, i: int) -> int | None:
        return self.images.items[int(self.picks[i])].label


def send_phase(
    client: httpx.Client,
    plan: PhasePlan,
    *,
    run_id: str,
    concurrency: int,
    advance: Callable[[], None] = lambda: None,
) -> PhaseTraffic:
    """Send every request of ``plan`` at its phase's rate; returns when all are answered."""
    rate = plan.phase.rate_per_s
    started_at, start = time.time(), time.monotonic()
    lock = threading.Lock()

    def send(i: int) -> Outcome:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            return _post(client, plan, i, request_id(run_id, plan.index, i))
        finally:
            with lock:
                advance()

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(send, range(len(plan))))
    return _summarise(plan, outcomes, run_id=run_id, started_at=started_at, ended_at=time.time())


def _post(client: httpx.Client, plan: PhasePlan, i: int, correlation_id: str) -> Outcome:
    body, content_type = plan.payload(i)
    headers = {"content-type": content_type, "x-request-id": correlation_id}
    began = time.monotonic()
    try:
        response = client.post("/predict", content=body, headers=headers)
    except httpx.HTTPError:
        return Outcome("transport_error", latency_s=time.monotonic() - began)
    latency = time.monotonic() - began
    if response.status_code != 200:
        return Outcome(_refusal(response), latency_s=latency)
    answer = response.json()
    return Outcome(
        "ok",
        predicted=int(answer["class_index"]),
        flags=tuple(answer.get("flags", ())),
        latency_s=latency,
    )


def _refusal(response: httpx.Response) -> str:
    """``"<status> <code>"`` from the app's error body, or the bare status (Ray's proxy answers
    backpressure in plain text)."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return str(response.status_code)
    return f"{response.status_code} {code}"


def _summarise(
    plan: PhasePlan, outcomes: list[Outcome], *, run_id: str, started_at: float, ended_at: float
) -> PhaseTraffic:
    answered = [(i, o) for i, o in enumerate(outcomes) if o.status == "ok"]
    known = [(i, o) for i, o in answered if plan.label(i) is not None]
    latencies = np.asarray([o.latency_s for _, o in answered])
    spec = plan.phase.corruption
    return PhaseTraffic(
        index=plan.index,
        name=plan.phase.name,
        clean=plan.phase.clean,
        corruption=None if spec is None else spec.describe(),
        started_at=started_at,
        ended_at=ended_at,
        sent=len(outcomes),
        ok=len(answered),
        rejected=dict(Counter(o.status for o in outcomes if o.status != "ok")),
        flagged=dict(Counter(flag for _, o in answered for flag in o.flags)),
        correct=sum(o.predicted == plan.label(i) for i, o in known) if known else None,
        labels={request_id(run_id, plan.index, i): int(plan.label(i) or 0) for i, _ in known},
        latency_p50_s=float(np.quantile(latencies, 0.5)) if len(latencies) else None,
        latency_p99_s=float(np.quantile(latencies, 0.99)) if len(latencies) else None,
    )
