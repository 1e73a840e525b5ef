"""What a client may and may not make the replica believe: context, sentinel runs, traces."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from serve_drift import monitored
from serve_drift.credentials import AdminCredential
from serve_drift.messages import EventBatch, IngestReceipt
from serve_drift.replica.decorator import replica_monitor
from tests.support.serve import ADMIN, ADMIN_TOKEN
from tests.support.telemetry_memory import memory_telemetry
from tests.unit.replica.test_monitoring_path import FakeMonitorHandle, _Method

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class FakeRequest:
    """What the replica reads of a Starlette request: headers, url, method."""

    headers: dict[str, str] = field(default_factory=dict)
    url: str = "http://test/predict"
    method: str = "POST"


def _deployment(**config: Any) -> Any:
    @monitored({"model_name": "trust", "shipping": {"flush_interval_s": 0.01}, **config})
    class Classifier:
        def __init__(self) -> None:
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))

        async def __call__(self, request: FakeRequest) -> list[int]:
            return self.model(torch.randn(1, 3)).argmax(-1).tolist()

    return Classifier


def _serve(instance: Any, request: FakeRequest) -> None:
    async def run() -> None:
        await instance(request)
        await replica_monitor(instance).shipper.flush()

    asyncio.run(run())


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_DRIFT_ADMIN_TOKEN", ADMIN_TOKEN)


def test_only_allowed_context_headers_are_kept_and_cut(admin_env: None) -> None:
    memory_telemetry()
    handle = FakeMonitorHandle()
    instance = _deployment(context={"allow": ["camera"], "max_value_chars": 5})(
        drift_monitor=handle
    )
    headers = {
        "X-Serve-Drift-Context-Camera": "cam-7-north",
        "X-Serve-Drift-Context-User-Email": "someone@example.com",
    }
    _serve(instance, FakeRequest(headers=headers))
    assert handle.batches[0].events[0].context == {"camera": "cam-7"}


@pytest.mark.parametrize(
    ("extra", "is_sentinel"),
    [
        ({}, False),  # a client saying "sentinel" is ordinary traffic
        ({"authorization": "Bearer wrong-token-wrong-token"}, False),
        (ADMIN, True),
    ],
)
def test_only_the_admin_credential_makes_a_sentinel_run(
    admin_env: None, extra: dict[str, str], is_sentinel: bool
) -> None:
    memory_telemetry()
    handle = FakeMonitorHandle()
    instance = _deployment()(drift_monitor=handle)
    _serve(instance, FakeRequest(headers={"x-serve-drift-context-source": "sentinel", **extra}))
    event = handle.batches[0].events[0]
    assert event.exclude_from_drift is is_sentinel
    assert ("sentinel" in event.flags) is is_sentinel
    assert "source" not in event.context


def test_without_a_configured_token_nobody_is_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    memory_telemetry()
    monkeypatch.delenv("SERVE_DRIFT_ADMIN_TOKEN", raising=False)
    instance = _deployment()(drift_monitor=FakeMonitorHandle())
    assert replica_monitor(instance).admin is None
    assert not replica_monitor(instance).is_sentinel(
        {"x-serve-drift-context-source": "sentinel", **ADMIN}
    )


@pytest.mark.parametrize("trust", [True, False])
def test_the_client_traceparent_is_trusted_only_when_configured(trust: bool) -> None:
    spans, _ = memory_telemetry()
    spans.clear()
    instance = _deployment(telemetry={"trust_client_traceparent": trust})(
        drift_monitor=FakeMonitorHandle()
    )
    _serve(instance, FakeRequest(headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}))
    span = next(s for s in spans.get_finished_spans() if s.name == "serve_drift.request")
    assert (format(span.context.trace_id, "032x") == TRACE_ID) is trust


def test_rows_the_monitor_did_not_record_are_not_counted_shipped() -> None:
    memory_telemetry()

    class NotRecording(FakeMonitorHandle):
        def __init__(self) -> None:
            super().__init__()
            self.ingest = _Method(self._ingest_unrecorded)

        async def _ingest_unrecorded(self, batch: EventBatch) -> IngestReceipt:
            self.batches.append(batch)
            return IngestReceipt(accepted=len(batch.events), recorded=False)

    instance = _deployment()(drift_monitor=NotRecording())
    for _ in range(3):
        _serve(instance, FakeRequest())
    shipper = replica_monitor(instance).shipper
    assert shipper.shipped == 0 and shipper.dropped == {"monitor_not_recorded": 3}


def test_admin_tokens_are_compared_whole_and_refused_when_short(tmp_path: Any) -> None:
    credential = AdminCredential(ADMIN_TOKEN)
    assert credential.verify(f"Bearer {ADMIN_TOKEN}") and credential.verify(f"bearer {ADMIN_TOKEN}")
    assert not credential.verify(f"Bearer {ADMIN_TOKEN[:-1]}")
    assert not credential.verify(f"Basic {ADMIN_TOKEN}") and not credential.verify("")
    with pytest.raises(ValueError, match="at least"):
        AdminCredential("short")
    secret = tmp_path / "token"
    secret.write_text(f"{ADMIN_TOKEN}\n")
    loaded = AdminCredential.load(token_env="UNSET_VARIABLE_XYZ", token_file=str(secret))
    assert loaded is not None and loaded.verify(f"Bearer {ADMIN_TOKEN}")
    secret.write_text("short\n")
    assert AdminCredential.load(token_env="UNSET_VARIABLE_XYZ", token_file=str(secret)) is None


def _starlette_request(headers: dict[str, str]) -> Any:
    from starlette.requests import Request

    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": raw}
    return Request({**scope, "query_string": b"", "root_path": "", "scheme": "http"})


@pytest.mark.parametrize("traceparent", [True, False])
def test_starlette_headers_are_scanned_once_for_trace_and_caller_context(traceparent: bool) -> None:
    from opentelemetry.trace import SpanKind

    spans, _ = memory_telemetry()
    spans.clear()
    handle = FakeMonitorHandle()
    instance = _deployment(context={"allow": ["camera"]})(drift_monitor=handle)
    headers = {"content-type": "image/png", "x-serve-drift-context-camera": "cam-7"}
    if traceparent:
        headers["traceparent"] = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    _serve(instance, _starlette_request(headers))
    span = next(s for s in spans.get_finished_spans() if s.name == "serve_drift.request")
    # A trusted client's traceparent joins its trace; without one, a trace of its own. Both
    # are the server side of an HTTP request.
    assert (format(span.context.trace_id, "032x") == TRACE_ID) is traceparent
    assert span.kind == SpanKind.SERVER
    assert handle.batches[0].events[0].context == {"camera": "cam-7"}
