"""Event records reach a real OTLP receiver as log records, linked to their traces."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from serve_drift.eventlog.otlp_logs import EventLogExporter
from serve_drift.eventlog.schema import DriftTestRecord, LabelRecord, _example_drift_dict
from serve_drift.telemetry.logs_setup import build_logger_provider
from tests.support.eventlog_helpers import make_record
from tests.support.otlp_receiver import OtlpReceiver, ReceivedLog

ROOT = Path(__file__).resolve().parents[3]


def _logs_for(receiver: OtlpReceiver, marker: str, n: int) -> list[ReceivedLog]:
    def found(r: OtlpReceiver) -> list[ReceivedLog] | None:
        logs = [log for log in r.logs() if marker in str(log.body)]
        return logs if len(logs) >= n else None

    return receiver.wait_for(found, timeout_s=20)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_records_arrive_as_log_records_with_their_trace_ids(
    otlp_receiver: OtlpReceiver, protocol: str
) -> None:
    marker = uuid.uuid4().hex
    endpoint = otlp_receiver.endpoint if protocol == "grpc" else otlp_receiver.http_endpoint
    provider = build_logger_provider(
        endpoint=endpoint, protocol=protocol, service_name="eventlog-test"
    )
    assert provider is not None
    inference = make_record(7, correlation_id=f"{marker}-a", trace_id="ab" * 16, span_id="cd" * 8)
    flagged = make_record(
        8, correlation_id=f"{marker}-b", validation_flags=("too_dark",), trace_id=None, span_id=None
    )
    drift = DriftTestRecord.from_result(
        {
            **_example_drift_dict(),
            "test_id": f"{marker}-t",
            "trace_id": "12" * 16,
            "span_id": "34" * 8,
        }
    )
    label = LabelRecord(correlation_id=f"{marker}-a", label=3, received_at=2000.0)
    try:
        assert (
            EventLogExporter(logger_provider=provider).export([inference, flagged, drift, label])
            == 4
        )
        provider.force_flush()
        logs = _logs_for(otlp_receiver, marker, 4)
    finally:
        provider.shutdown()
    by_type = {log.attributes["serve_drift.record_type"]: log for log in logs}
    (first,) = [
        log
        for log in logs
        if log.attributes.get("serve_drift.internal_id") == inference.internal_id
    ]
    assert (first.trace_id, first.span_id) == ("ab" * 16, "cd" * 8)
    assert json.loads(first.body) == inference.to_dict()  # nothing lost in the log backend
    assert first.attributes["serve_drift.correlation_id"] == f"{marker}-a"
    assert first.attributes["serve_drift.context.camera"] == "cam-1"
    assert first.severity_text == "INFO" and first.resource["service.name"] == "eventlog-test"
    assert (by_type["drift_test"].trace_id, by_type["drift_test"].severity_text) == (
        "12" * 16,
        "WARN",
    )
    warn = [
        log for log in logs if log.attributes.get("serve_drift.validation.flags") == ["too_dark"]
    ]
    assert warn and warn[0].trace_id is None and warn[0].severity_text == "WARN"
    assert by_type["label"].attributes["serve_drift.label"] == 3


def test_without_an_endpoint_no_provider_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert build_logger_provider() is None


_GLOBAL_PROVIDER_SCRIPT = """
import sys, types
from pathlib import Path
package = types.ModuleType("serve_drift")  # skip the package's Ray/torch imports: not needed
package.__path__ = [str(Path.cwd() / "serve_drift")]
sys.modules["serve_drift"] = package
from opentelemetry._logs import set_logger_provider
from serve_drift.telemetry.logs_setup import build_logger_provider
from serve_drift.eventlog.otlp_logs import EventLogExporter
from tests.support.eventlog_helpers import make_record
exporter = EventLogExporter()  # made before the application sets its provider
provider = build_logger_provider()  # from OTEL_EXPORTER_OTLP_ENDPOINT
set_logger_provider(provider)
exporter.export([make_record(3, correlation_id=sys.argv[1])])
provider.shutdown()
"""


def test_the_global_provider_is_used_when_none_is_given(otlp_receiver: OtlpReceiver) -> None:
    marker = uuid.uuid4().hex
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint, "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [sys.executable, "-c", _GLOBAL_PROVIDER_SCRIPT, marker],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
    )
    (log,) = _logs_for(otlp_receiver, marker, 1)
    assert log.trace_id == f"{4:032x}" and log.attributes["serve_drift.record_type"] == "inference"
