"""Where notifications go: stdout, a signed webhook, OpenTelemetry log records.

Every sink runs behind its own bounded queue and thread (:class:`AlertDispatcher`): handing a
notification over never blocks and never raises, a full queue drops it and counts the drop, and
a slow or failing sink (a webhook retrying with backoff) delays nothing but itself. Each sink
counts what it delivered, failed and dropped (:class:`SinkStats`, and the
``serve_drift.alerts.notifications{sink, outcome}`` counter).

**Webhook signature.** With a secret, each POST carries ``X-Serve-Drift-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``; :func:`verify_signature` is the
receiver's check (it also refuses stale timestamps, against replays).

>>> header = signature_header(b"secret", b'{"status":"firing"}', timestamp=1700000000)
>>> header.startswith("t=1700000000,v1=")
True
>>> verify_signature(b"secret", b'{"status":"firing"}', header, now=1700000010)
True
>>> verify_signature(b"secret", b'{"status":"resolved"}', header, now=1700000010)
False
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

import httpx
from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger
from opentelemetry.context import Context

from serve_drift.alerts.config import (
    OtelLogsSinkConfig,
    SinkConfig,
    StdoutSinkConfig,
    WebhookSinkConfig,
)
from serve_drift.alerts.incidents import Transition
from serve_drift.alerts.payload import notification
from serve_drift.errors import ServeDriftError
from serve_drift.telemetry.spans import remote_span_context

__all__ = [
    "SIGNATURE_HEADER",
    "AlertDispatcher",
    "OtelLogSink",
    "Sink",
    "SinkStats",
    "StdoutSink",
    "WebhookDeliveryError",
    "WebhookSink",
    "build_sinks",
    "signature_header",
    "verify_signature",
]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Serve-Drift-Signature"
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_SEVERITY = {
    "critical": SeverityNumber.ERROR,
    "warning": SeverityNumber.WARN,
    "info": SeverityNumber.INFO,
}


class SinkSecretMissing(ServeDriftError, ValueError):
    """A webhook names a secret variable that is not set: refuse to send unsigned."""

    code = "alert_sink_secret_missing"


class WebhookDeliveryError(ServeDriftError, OSError):
    """A webhook could not be delivered after its retries (or was refused with a 4xx)."""

    code = "alert_webhook_failed"


class Sink(Protocol):
    """Sends one notification; raises on failure (the dispatcher counts it)."""

    name: str

    def send(self, transition: Transition) -> None: ...

    def close(self) -> None: ...


def _body(transition: Transition) -> bytes:
    return json.dumps(notification(transition), sort_keys=True, separators=(",", ":")).encode()


# --- stdout -----------------------------------------------------------------------------------


class StdoutSink:
    """One JSON document per line."""

    name = "stdout"

    def __init__(self, *, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def send(self, transition: Transition) -> None:
        stream = self._stream or sys.stdout  # looked up late: test runners swap sys.stdout
        stream.write(_body(transition).decode() + "\n")
        stream.flush()

    def close(self) -> None:
        return None


# --- webhook ----------------------------------------------------------------------------------


def signature_header(secret: bytes, body: bytes, *, timestamp: int) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: bytes, body: bytes, header: str, *, now: float, tolerance_s: float = 300.0
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature_header(secret, body, timestamp=timestamp)
    return hmac.compare_digest(expected, header)


@dataclass(frozen=True)
class _Retry:
    max_attempts: int
    backoff_s: float
    max_backoff_s: float

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds before attempt ``attempt + 1``: the server's Retry-After, else doubling."""
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_backoff_s)
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


class WebhookSink:
    """POSTs the notification JSON; signs it when given a secret; retries with backoff."""

    def __init__(
        self,
        *,
        url: str,
        secret: bytes | None = None,
        timeout_s: float = 5.0,
        max_attempts: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = f"webhook {url}"
        self._url = url
        self._secret = secret
        self._retry = _Retry(max_attempts, backoff_s, max_backoff_s)
        self._sleep = sleep
        self._clock = clock
        self._client = httpx.Client(timeout=timeout_s, transport=transport)

    def send(self, transition: Transition) -> None:
        body = _body(transition)
        for attempt in range(1, self._retry.max_attempts + 1):
            delivered, retry_after = self._attempt(body, final=attempt == self._retry.max_attempts)
            if delivered:
                return
            self._sleep(self._retry.delay(attempt, retry_after))

    def _attempt(self, body: bytes, *, final: bool) -> tuple[bool, str | None]:
        """(delivered, the server's Retry-After); raises when no attempt is left or worth it."""
        try:
            response = self._client.post(self._url, content=body, headers=self._headers(body))
        except httpx.HTTPError as exc:
            if final:
                raise WebhookDeliveryError(f"{self._url}: {type(exc).__name__}: {exc}") from exc
            return False, None
        if response.is_success:
            return True, None
        if response.status_code not in _RETRY_STATUSES or final:
            raise WebhookDeliveryError(f"{self._url} answered {response.status_code}")
        return False, response.headers.get("retry-after")

    def _headers(self, body: bytes) -> dict[str, str]:
        headers = {"content-type": "application/json", "user-agent": "serve-drift-alerts"}
        if self._secret is not None:  # signed per attempt: a retry carries a fresh timestamp
            header = signature_header(self._secret, body, timestamp=int(self._clock()))
            headers[SIGNATURE_HEADER] = header
        return headers

    def close(self) -> None:
        self._client.close()


# --- OpenTelemetry logs -----------------------------------------------------------------------


class OtelLogSink:
    """An OTel log record per notification, in the trace of the latest triggering drift test.

    Attributes carry every triggering test's trace ID and test ID and a sample of the requests'
    correlation IDs, so the log backend links the alert to the traces and events behind it.
    """

    name = "otel_logs"

    def __init__(self, *, logger_provider: LoggerProvider | None = None) -> None:
        self._logger = get_logger("serve_drift.alerts", logger_provider=logger_provider)

    def send(self, transition: Transition) -> None:
        incident = transition.incident
        severity = _SEVERITY.get(incident.severity, SeverityNumber.WARN)
        if transition.kind == "resolved":
            severity = SeverityNumber.INFO
        self._logger.emit(
            timestamp=int(transition.at * 1e9),
            observed_timestamp=time.time_ns(),
            context=_trigger_context(transition),
            severity_number=severity,
            severity_text=severity.name,
            body=_body(transition).decode(),
            attributes=log_attributes(transition),
            event_name="serve_drift.alert",
        )

    def close(self) -> None:
        return None


def log_attributes(transition: Transition) -> dict[str, Any]:
    incident = transition.incident
    evidence = incident.evidence
    attributes: dict[str, Any] = {
        "serve_drift.alert.rule": incident.rule,
        "serve_drift.alert.severity": incident.severity,
        "serve_drift.alert.owner": incident.owner,
        "serve_drift.alert.status": transition.status,
        "serve_drift.alert.transition": transition.kind,
        "serve_drift.alert.incident_id": incident.incident_id,
        "serve_drift.alert.trace_ids": list(evidence.trace_ids),
        "serve_drift.alert.test_ids": [w.test_id for w in evidence.windows if w.significant],
        "serve_drift.correlation_ids": list(evidence.correlation_ids),
    }
    for key, value in incident.scope:
        attributes[f"serve_drift.{key.replace('_', '.', 1)}"] = value
    if incident.runbook_url:
        attributes["serve_drift.alert.runbook_url"] = incident.runbook_url
    return attributes


def _trigger_context(transition: Transition) -> Context | None:
    triggering = [w for w in transition.incident.evidence.windows if w.significant and w.trace_id]
    if not triggering:
        return None
    latest = max(triggering, key=lambda w: w.tested_at)
    return remote_span_context(latest.trace_id, latest.span_id)


# --- dispatch ---------------------------------------------------------------------------------


@dataclass
class SinkStats:
    """What one sink did with the notifications handed to it."""

    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    last_error: str | None = None
    # The last notification handed to it was not delivered (failed, or dropped on a full
    # queue); the next delivery clears it. Notifications are not reaching the sink now.
    failing: bool = False


Outcome = Callable[[str, str], None]  # (sink name, delivered | failed | dropped)


class _Worker:
    """One sink's bounded queue and thread."""

    def __init__(self, sink: Sink, *, queue_size: int, severities: frozenset[str], on: Outcome):
        self.sink = sink
        self.severities = severities
        self.stats = SinkStats()
        self._on = on
        self._queue: queue.Queue[Transition | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name=f"alerts {sink.name}", daemon=True)
        self._thread.start()

    def offer(self, transition: Transition) -> None:
        if self.severities and transition.incident.severity not in self.severities:
            return
        try:
            self._queue.put_nowait(transition)
        except queue.Full:
            self._count("dropped")

    def _run(self) -> None:
        while (transition := self._queue.get()) is not None:
            try:
                self.sink.send(transition)
                self._count("delivered")
            except Exception as exc:  # a sink's failure is counted, never raised
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self._count("failed")
                logger.warning("serve-drift alert sink %s failed: %s", self.sink.name, exc)
            finally:
                self._queue.task_done()

    def _count(self, outcome: str) -> None:
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        self.stats.failing = outcome != "delivered"
        with contextlib.suppress(Exception):  # metrics must not break delivery
            self._on(self.sink.name, outcome)

    def drain(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def stop(self, timeout_s: float) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        with contextlib.suppress(Exception):
            self.sink.close()


class AlertDispatcher:
    """Hands transitions that ``notify`` to every sink, through per-sink queues and threads.

    ``severities[i]`` (optional) limits sink ``i`` to those severities. ``on_outcome`` is told
    ``(sink name, "delivered" | "failed" | "dropped")`` for every notification.
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        queue_size: int = 1000,
        severities: Sequence[Sequence[str]] | None = None,
        on_outcome: Outcome | None = None,
    ) -> None:
        filters = list(severities or [()] * len(sinks))
        self._workers = [
            _Worker(sink, queue_size=queue_size, severities=frozenset(f), on=on_outcome or _noop)
            for sink, f in zip(sinks, filters, strict=True)
        ]

    def submit(self, transitions: Sequence[Transition]) -> None:
        """Never blocks, never raises."""
        for transition in transitions:
            if transition.notify:
                for worker in self._workers:
                    worker.offer(transition)

    def stats(self) -> dict[str, SinkStats]:
        return {w.sink.name: w.stats for w in self._workers}

    def drain(self, *, timeout_s: float = 10.0) -> bool:
        """Wait until every queue is empty (tests, shutdown); whether they all emptied."""
        return all([w.drain(timeout_s) for w in self._workers])

    def close(self, *, timeout_s: float = 5.0) -> None:
        for worker in self._workers:
            worker.stop(timeout_s)


def _noop(sink: str, outcome: str) -> None:
    return None


def build_sinks(
    configs: Sequence[SinkConfig],
    *,
    environ: Mapping[str, str] | None = None,
    logger_provider: LoggerProvider | None = None,
) -> list[Sink]:
    """Sinks from their configs; a webhook's secret comes from ``environ[secret_env]``."""
    env = os.environ if environ is None else environ
    return [_build(config, env, logger_provider) for config in configs]


def _build(config: SinkConfig, env: Mapping[str, str], provider: LoggerProvider | None) -> Sink:
    if isinstance(config, StdoutSinkConfig):
        return StdoutSink()
    if isinstance(config, OtelLogsSinkConfig):
        return OtelLogSink(logger_provider=provider)
    assert isinstance(config, WebhookSinkConfig)
    secret = None
    if config.secret_env is not None:
        if not env.get(config.secret_env):
            raise SinkSecretMissing(
                f"webhook {config.url}: environment variable {config.secret_env} is not set"
            )
        secret = env[config.secret_env].encode()
    return WebhookSink(
        url=config.url,
        secret=secret,
        timeout_s=config.timeout_s,
        max_attempts=config.max_attempts,
        backoff_s=config.backoff_s,
        max_backoff_s=config.max_backoff_s,
    )
