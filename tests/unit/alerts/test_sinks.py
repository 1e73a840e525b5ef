"""Sinks: a signed webhook against a real local receiver, stdout, OTel log records over OTLP;
and the dispatcher's promise: a failing or blocked sink is counted and delays nothing."""

from __future__ import annotations

import json
import threading
import uuid

import jsonschema
import pytest

from serve_drift.alerts.config import AlertsConfig, WebhookSinkConfig
from serve_drift.alerts.incidents import Transition, load_alert_schema
from serve_drift.alerts.sinks import (
    SIGNATURE_HEADER,
    AlertDispatcher,
    OtelLogSink,
    SinkSecretMissing,
    StdoutSink,
    WebhookSink,
    build_sinks,
    verify_signature,
)
from serve_drift.telemetry.logs_setup import build_logger_provider
from tests.support.alert_signals import replay, windows
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.webhook_receiver import WebhookReceiver

SECRET = b"s3cret"


@pytest.fixture(scope="module")
def opened() -> Transition:
    config = AlertsConfig(rules=(AlertsConfig().rule("input-drift"),), sinks=())
    (transition,) = replay(windows([0.5, 0.002, 0.003, 0.004]), config=config)
    return transition


def test_the_webhook_posts_alertmanager_json_signed_with_hmac(opened: Transition) -> None:
    with WebhookReceiver() as receiver:
        sink = WebhookSink(url=receiver.url, secret=SECRET, clock=lambda: 1_700_000_000.0)
        sink.send(opened)
        (call,) = receiver.received
    body = call.json()
    assert verify_signature(SECRET, call.body, call.headers[SIGNATURE_HEADER.lower()], now=1.7e9)
    assert not verify_signature(
        b"other", call.body, call.headers[SIGNATURE_HEADER.lower()], now=1.7e9
    )
    assert body["version"] == "4" and body["status"] == "firing"
    alert = body["alerts"][0]
    assert alert["labels"]["severity"] == "warning" and alert["labels"]["owner"] == "ml-platform"
    assert alert["annotations"]["runbook_url"].endswith("#input-drift")
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    incident = body["serve_drift"]["incident"]
    assert [w["p_value"] for w in incident["evidence"]["windows"]] == [0.5, 0.002, 0.003, 0.004]
    jsonschema.validate(opened.to_dict(), load_alert_schema())


def test_the_webhook_retries_with_backoff_and_a_fresh_signature() -> None:
    waits: list[float] = []
    times = iter([100.0, 200.0, 300.0])
    with WebhookReceiver(answer=lambda n: 503 if n < 2 else 204) as receiver:
        sink = WebhookSink(
            url=receiver.url,
            secret=SECRET,
            backoff_s=0.5,
            sleep=waits.append,
            clock=lambda: next(times),
        )
        sink.send(_any_transition())
        calls = receiver.received
    assert len(calls) == 3 and waits == [0.5, 1.0]
    stamps = [c.headers[SIGNATURE_HEADER.lower()].split(",")[0] for c in calls]
    assert stamps == ["t=100", "t=200", "t=300"]


def test_the_webhook_honours_retry_after_and_gives_up_on_a_client_error() -> None:
    waits: list[float] = []
    with WebhookReceiver(answer=lambda n: 429 if n == 0 else 400) as receiver:
        sink = WebhookSink(url=receiver.url, max_attempts=5, backoff_s=0.1, sleep=waits.append)
        with pytest.raises(OSError, match="answered 400") as raised:
            sink.send(_any_transition())
        assert len(receiver.received) == 2  # 400 is not retried
    assert raised.value.code == "alert_webhook_failed"  # type: ignore[attr-defined]
    assert waits == [0.1]  # the receiver sent no Retry-After: doubling from backoff_s


def test_a_timeout_is_retried_then_counted_as_a_failure() -> None:
    with WebhookReceiver(delay_s=0.5) as receiver:
        sink = WebhookSink(url=receiver.url, timeout_s=0.05, max_attempts=2, sleep=lambda s: None)
        dispatcher = AlertDispatcher([sink])
        dispatcher.submit([_any_transition()])
        assert dispatcher.drain(timeout_s=10)
        stats = dispatcher.stats()[sink.name]
        dispatcher.close()
    assert (stats.delivered, stats.failed) == (0, 1)
    assert "ReadTimeout" in (stats.last_error or "")


class _Blocked:
    """A sink stuck until released: a webhook that hangs."""

    name = "blocked"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sent: list[Transition] = []

    def send(self, transition: Transition) -> None:
        self.entered.set()
        self.release.wait(30)
        self.sent.append(transition)

    def close(self) -> None:
        return None


def test_a_blocked_sink_delays_nothing_and_drops_what_its_queue_cannot_hold() -> None:
    blocked, outcomes = _Blocked(), []
    dispatcher = AlertDispatcher(
        [blocked], queue_size=2, on_outcome=lambda s, o: outcomes.append((s, o))
    )
    dispatcher.submit([_any_transition()])
    assert blocked.entered.wait(10)  # the sink holds the first one and hangs
    dispatcher.submit([_any_transition()] * 4)  # returns although the sink cannot take them
    blocked.release.set()
    assert dispatcher.drain(timeout_s=10)
    stats = dispatcher.stats()
    dispatcher.close()
    # One in the sink's hands, two queued; two dropped.
    assert (stats["blocked"].delivered, stats["blocked"].dropped) == (3, 2)
    assert outcomes.count(("blocked", "dropped")) == 2


class _Failing:
    name = "failing"

    def send(self, transition: Transition) -> None:
        raise ConnectionError("receiver down")

    def close(self) -> None:
        return None


def test_a_failing_sink_is_counted_and_the_others_still_deliver() -> None:
    working = _Blocked()
    working.release.set()
    dispatcher = AlertDispatcher([_Failing(), working])
    dispatcher.submit([_any_transition()] * 3)
    assert dispatcher.drain(timeout_s=10)
    stats = dispatcher.stats()
    dispatcher.close()
    assert (stats["failing"].failed, stats["failing"].last_error) == (
        3,
        "ConnectionError: receiver down",
    )
    assert len(working.sent) == 3


class _Flaky:
    """Fails while ``down`` is set, delivers otherwise."""

    name = "flaky"

    def __init__(self) -> None:
        self.down = True

    def send(self, transition: Transition) -> None:
        if self.down:
            raise ConnectionError("receiver down")

    def close(self) -> None:
        return None


def test_a_sink_is_failing_until_its_next_delivery() -> None:
    flaky = _Flaky()
    dispatcher = AlertDispatcher([flaky])
    dispatcher.submit([_any_transition()])
    assert dispatcher.drain(timeout_s=10)
    assert dispatcher.stats()["flaky"].failing
    flaky.down = False
    dispatcher.submit([_any_transition()])
    assert dispatcher.drain(timeout_s=10)
    stats = dispatcher.stats()["flaky"]
    dispatcher.close()
    assert not stats.failing and (stats.failed, stats.delivered) == (1, 1)


def test_transitions_that_do_not_notify_reach_no_sink(capsys: pytest.CaptureFixture[str]) -> None:
    held = _any_transition(notify=False)
    dispatcher = AlertDispatcher([StdoutSink()])
    dispatcher.submit([held, _any_transition()])
    dispatcher.drain()
    dispatcher.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "firing"


def test_severities_limit_a_sink() -> None:
    blocked = _Blocked()
    blocked.release.set()
    dispatcher = AlertDispatcher([blocked], severities=[("critical",)])
    dispatcher.submit([_any_transition()])  # a warning
    dispatcher.drain()
    dispatcher.close()
    assert blocked.sent == []


def test_alert_log_records_sit_in_the_trigger_traces(
    otlp_receiver: OtlpReceiver, opened: Transition
) -> None:
    provider = build_logger_provider(endpoint=otlp_receiver.endpoint, service_name="alerts-test")
    assert provider is not None
    marker = uuid.uuid4().hex
    transition = Transition.from_dict({**opened.to_dict(), "transition_id": marker})
    try:
        OtelLogSink(logger_provider=provider).send(transition)
        provider.force_flush()
        (log,) = otlp_receiver.wait_for(
            lambda r: [x for x in r.logs() if marker in str(x.body)] or None, timeout_s=20
        )
    finally:
        provider.shutdown()
    latest = transition.incident.evidence.windows[-1]  # the latest significant test
    assert (log.trace_id, log.span_id) == (latest.trace_id, latest.span_id)
    assert log.severity_text == "WARN"
    assert log.attributes["serve_drift.alert.rule"] == "input-drift"
    assert log.attributes["serve_drift.alert.trace_ids"] == list(
        transition.incident.evidence.trace_ids
    )
    assert "req-1-0" in log.attributes["serve_drift.correlation_ids"]
    assert log.attributes["serve_drift.model.name"] == "digits"


def test_a_webhook_secret_that_is_not_set_is_refused_at_startup() -> None:
    config = WebhookSinkConfig(url="https://hooks.example.com/x", secret_env="NOT_SET_HERE")
    with pytest.raises(SinkSecretMissing, match="NOT_SET_HERE") as raised:
        build_sinks([config], environ={})
    assert raised.value.code == "alert_sink_secret_missing"
    (sink,) = build_sinks([config], environ={"NOT_SET_HERE": "x"})
    assert isinstance(sink, WebhookSink)


def _any_transition(*, notify: bool = True) -> Transition:
    config = AlertsConfig(rules=(AlertsConfig().rule("input-drift"),), sinks=())
    (transition,) = replay(windows([0.002, 0.003, 0.004]), config=config)
    return Transition.from_dict({**transition.to_dict(), "notify": notify})
