"""configure_telemetry, each case in a fresh subprocess (see tests/support/telemetry_subprocess).

``test_package_import_installs_no_provider`` is the one case that imports the real package.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.telemetry_subprocess import run_script

_RECEIVE_TIMEOUT_S = 15


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as started:
        yield started


def _spans_of(receiver: OtlpReceiver, pid: int) -> list[ReceivedSpan]:
    return [s for s in receiver.spans() if s.resource.get("process.pid") == pid]


def _check_received(receiver: OtlpReceiver, pid: int, transport: str) -> ReceivedSpan:
    """Assert the spans and metrics of ``emit()`` from process ``pid`` arrived; return the span."""
    spans = receiver.wait_for(
        lambda r: len(_spans_of(r, pid)) >= 3 and _spans_of(r, pid), timeout_s=_RECEIVE_TIMEOUT_S
    )
    by_name = {s.name: s for s in spans}
    span, child, request = by_name["unit.span"], by_name["unit.child"], by_name["unit.request"]
    assert span.transport == transport
    assert span.attributes == {
        "serve_drift.n": 3,
        "serve_drift.ids": ["a", "b"],
        "serve_drift.ok": True,
    }
    assert child.parent_span_id == span.span_id and child.trace_id == span.trace_id
    assert span.parent_span_id is None
    assert [(ln.trace_id, ln.span_id) for ln in span.links] == [(request.trace_id, request.span_id)]
    assert span.links[0].attributes == {"serve_drift.why": "batch"}
    assert [(e.name, e.attributes) for e in span.events] == [("unit.event", {"serve_drift.p": 0.5})]
    assert span.status_code == "UNSET" and span.kind == "INTERNAL"

    points = receiver.wait_for(
        lambda r: [
            p
            for p in r.metric_points("serve_drift.test.requests")
            if p.resource.get("process.pid") == pid
        ],
        timeout_s=_RECEIVE_TIMEOUT_S,
    )
    assert points[-1].value == 7 and points[-1].attributes == {"route": "/predict"}
    assert points[-1].kind == "sum" and points[-1].is_monotonic
    assert points[-1].transport == transport
    (hist,) = [
        p
        for p in receiver.metric_points("serve_drift.test.pvalue")
        if p.resource.get("process.pid") == pid
    ][-1:]
    assert hist.kind == "histogram" and hist.count == 1 and hist.sum == pytest.approx(0.04)
    assert len(hist.bucket_counts) == len(hist.bucket_bounds) + 1 and sum(hist.bucket_counts) == 1
    return span


def test_otlp_grpc_to_live_receiver(receiver: OtlpReceiver) -> None:
    result = run_script(
        """
        dest = configure_telemetry()
        emit()
        force_flush()
        report(dest)
        """,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "svc-grpc",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=unit",
            "RAY_JOB_ID": "02000000",
        },
    )
    assert result["traces"] == f"otlp grpc {receiver.endpoint}"
    assert result["metrics"] == f"otlp grpc {receiver.endpoint}"
    assert result["logs"] is None
    span = _check_received(receiver, result["pid"], "grpc")
    assert span.resource["service.name"] == "svc-grpc"
    assert span.resource["deployment.environment"] == "unit"
    assert span.resource["ray.job_id"] == "02000000"


def test_otlp_http_protobuf_to_live_receiver(receiver: OtlpReceiver) -> None:
    result = run_script(
        """
        dest = configure_telemetry(service_name="svc-arg")
        emit()
        force_flush()
        report(dest)
        """,
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
            "OTEL_SERVICE_NAME": "svc-env",  # the argument wins
        },
    )
    assert result["traces"] == f"otlp http/protobuf {receiver.http_endpoint}/v1/traces"
    assert result["metrics"] == f"otlp http/protobuf {receiver.http_endpoint}/v1/metrics"
    span = _check_received(receiver, result["pid"], "http")
    assert span.resource["service.name"] == "svc-arg"
    assert receiver.export_counts().get("traces/http", 0) >= 1


def test_signal_specific_protocol_and_endpoint(receiver: OtlpReceiver) -> None:
    result = run_script(
        """
        dest = configure_telemetry()
        emit()
        force_flush()
        report(dest)
        """,
        {
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.http_endpoint}/v1/traces",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": receiver.endpoint,
        },
    )
    assert result["traces"] == f"otlp http/protobuf {receiver.http_endpoint}/v1/traces"
    assert result["metrics"] == f"otlp grpc {receiver.endpoint}"
    spans = receiver.wait_for(lambda r: _spans_of(r, result["pid"]), timeout_s=_RECEIVE_TIMEOUT_S)
    assert {s.transport for s in spans} == {"http"}
    assert spans[0].resource["service.name"] == "serve-drift"  # the default name
    points = receiver.wait_for(
        lambda r: [
            p
            for p in r.metric_points("serve_drift.test.requests")
            if p.resource.get("process.pid") == result["pid"]
        ],
        timeout_s=_RECEIVE_TIMEOUT_S,
    )
    assert {p.transport for p in points} == {"grpc"}


def test_file_fallback_without_endpoint(tmp_path: Path) -> None:
    # No force_flush: the periodic reader (100 ms) writes a line while the process runs, and
    # the providers' shutdown at exit writes the spans.
    result = run_script(
        f"""
        dest = configure_telemetry(fallback_dir={str(tmp_path)!r})
        emit(span_name="unit.file.span")
        metrics_path = dest.metrics.removeprefix("file ")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "serve_drift.test.requests" not in (
            open(metrics_path).read() if os.path.exists(metrics_path) else ""
        ):
            time.sleep(0.05)
        report(dest, seen_before_exit=time.monotonic() < deadline)
        """,
        {"OTEL_METRIC_EXPORT_INTERVAL": "100"},
    )
    pid = result["pid"]
    spans_path, metrics_path = tmp_path / f"spans-{pid}.jsonl", tmp_path / f"metrics-{pid}.jsonl"
    assert result["traces"] == f"file {spans_path}"
    assert result["metrics"] == f"file {metrics_path}"
    assert result["seen_before_exit"], "metrics were not written promptly"

    spans = [json.loads(line) for line in spans_path.read_text().splitlines()]
    assert {"unit.request", "unit.file.span", "unit.child"} <= {s["name"] for s in spans}
    span = next(s for s in spans if s["name"] == "unit.file.span")
    assert span["attributes"]["serve_drift.ids"] == ["a", "b"]
    assert span["resource"]["attributes"]["service.name"] == "serve-drift"
    assert span["resource"]["attributes"]["process.pid"] == pid
    assert span["context"]["trace_id"].startswith("0x") and len(span["links"]) == 1

    exports = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    last = exports[-1]["resource_metrics"][0]
    names = {m["name"] for scope in last["scope_metrics"] for m in scope["metrics"]}
    assert {"serve_drift.test.requests", "serve_drift.test.pvalue"} <= names
    counter = next(
        m
        for scope in last["scope_metrics"]
        for m in scope["metrics"]
        if m["name"] == "serve_drift.test.requests"
    )
    assert counter["data"]["data_points"][0]["value"] == 7


def test_fallback_dir_defaults_to_env_knob(tmp_path: Path) -> None:
    result = run_script(
        """
        dest = configure_telemetry()
        report(dest)
        """,
        {"SERVE_DRIFT_TELEMETRY_DIR": str(tmp_path / "nested" / "dir")},
    )
    assert result["traces"] == f"file {tmp_path / 'nested' / 'dir'}/spans-{result['pid']}.jsonl"


def test_existing_sdk_provider_left_unchanged(tmp_path: Path) -> None:
    # As under Ray Serve tracing: an SDK tracer provider is already installed, none for metrics.
    result = run_script(
        f"""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        memory = InMemorySpanExporter()
        theirs = TracerProvider()
        theirs.add_span_processor(SimpleSpanProcessor(memory))
        trace.set_tracer_provider(theirs)
        dest = configure_telemetry(fallback_dir={str(tmp_path)!r})
        emit()
        force_flush()
        report(
            dest,
            same=trace.get_tracer_provider() is theirs,
            in_memory=sorted(s.name for s in memory.get_finished_spans()),
        )
        """
    )
    assert result["traces"] == "existing provider (left unchanged)"
    assert result["metrics"] == f"file {tmp_path}/metrics-{result['pid']}.jsonl"
    assert result["same"]
    assert result["in_memory"] == ["unit.child", "unit.request", "unit.span"]
    assert not (tmp_path / f"spans-{result['pid']}.jsonl").exists()
    assert "Overriding" not in result["stderr"]  # we never even tried to set one


def test_existing_non_sdk_providers_left_unchanged(tmp_path: Path) -> None:
    result = run_script(
        f"""
        trace.set_tracer_provider(trace.NoOpTracerProvider())
        metrics.set_meter_provider(metrics.NoOpMeterProvider())
        dest = configure_telemetry(fallback_dir={str(tmp_path)!r})
        emit()
        force_flush()
        report(dest)
        """
    )
    assert result["traces"] == "existing provider NoOpTracerProvider (left unchanged)"
    assert result["metrics"] == "existing provider NoOpMeterProvider (left unchanged)"
    assert list(tmp_path.iterdir()) == []


def test_idempotent_none_and_console() -> None:
    result = run_script(
        """
        first = configure_telemetry(service_name="one")
        second = configure_telemetry(service_name="two", metric_export_interval_ms=5)
        emit()
        force_flush()
        report(
            first,
            same=first is second,
            trace_proxy=isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider),
        )
        """,
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "console"},
    )
    assert result == {**result, "traces": "none", "metrics": "console", "same": True}
    assert result["trace_proxy"], "exporter 'none' must not install a tracer provider"


_BAD_ENV_CASES = {
    "unknown exporters": (
        {"OTEL_TRACES_EXPORTER": "zipkin", "OTEL_METRICS_EXPORTER": "prometheus,nope"},
        "file ",
        "OTEL_TRACES_EXPORTER='zipkin' is not supported",
        "OTEL_METRICS_EXPORTER='prometheus,nope' is not supported",
    ),
    "unknown protocol": (
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon", "OTEL_EXPORTER_OTLP_ENDPOINT": "{grpc}"},
        "otlp grpc {grpc}",
        "OTEL_EXPORTER_OTLP_PROTOCOL='carrier-pigeon' is not supported, using grpc",
        "using grpc",
    ),
    "bad timeout": (
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon", "OTEL_EXPORTER_OTLP_ENDPOINT": "{grpc}"},
        "file ",
        "OTLP exporter failed: ValueError",
        "OTLP exporter failed: ValueError",
    ),
    "bad compression": (
        {"OTEL_EXPORTER_OTLP_COMPRESSION": "zip-it", "OTEL_EXPORTER_OTLP_ENDPOINT": "{grpc}"},
        "file ",
        "OTLP exporter failed",
        "OTLP exporter failed",
    ),
    "bad intervals": (
        {"OTEL_METRIC_EXPORT_INTERVAL": "often", "OTEL_BSP_SCHEDULE_DELAY": "-5"},
        "file ",
        "invalid OTEL_BSP_*",
        "OTEL_METRIC_EXPORT_INTERVAL='often' is invalid, using 10000 ms",
    ),
    "sdk disabled": (
        {"OTEL_SDK_DISABLED": "TRUE"},
        "none",
        "OTEL_SDK_DISABLED",
        "OTEL_SDK_DISABLED",
    ),
}


@pytest.mark.parametrize("case", list(_BAD_ENV_CASES))
def test_bad_env_value_never_raises(case: str, receiver: OtlpReceiver, tmp_path: Path) -> None:
    env, prefix, traces_note, metrics_note = _BAD_ENV_CASES[case]
    env = {key: value.format(grpc=receiver.endpoint) for key, value in env.items()}
    result = run_script(
        f"""
        dest = configure_telemetry(fallback_dir={str(tmp_path)!r})
        emit()
        force_flush()
        report(dest)
        """,
        env,
    )
    prefix = prefix.format(grpc=receiver.endpoint)
    assert result["traces"].startswith(prefix) and traces_note in result["traces"], result
    assert result["metrics"].startswith(prefix) and metrics_note in result["metrics"], result
    assert "Traceback" not in result["stderr"], result["stderr"]


def test_bad_argument_and_unwritable_dir_never_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_script(
        f"""
        dest = configure_telemetry(fallback_dir={str(blocker)!r}, metric_export_interval_ms=-1)
        emit()
        force_flush()
        report(dest, trace_proxy=isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider))
        """
    )
    assert result["traces"].startswith(f"none (cannot write {blocker}/spans-"), result
    assert result["metrics"].startswith(f"none (cannot write {blocker}/metrics-"), result
    assert result["trace_proxy"]


def test_package_import_installs_no_provider() -> None:
    result = run_script(
        """
        import serve_drift
        force_flush()  # nothing installed yet: a no-op
        tp, mp = trace.get_tracer_provider(), metrics.get_meter_provider()
        report(None, tracer=type(tp).__name__, meter=type(mp).__name__)
        """,
        bare_package=False,
    )
    assert result["tracer"] == "ProxyTracerProvider"
    assert result["meter"] == "_ProxyMeterProvider"


def test_receiver_wait_for_reports_what_arrived() -> None:
    with OtlpReceiver(http=False) as receiver:
        with pytest.raises(AssertionError, match=r"export requests: none"):
            receiver.wait_for(lambda r: r.spans(), timeout_s=0.2, interval_s=0.05)
        assert receiver.endpoint.startswith("http://127.0.0.1:")


def test_shutdown_delivers_everything_to_a_live_receiver(receiver: OtlpReceiver) -> None:
    result = run_script(
        """
        dest = configure_telemetry(shutdown_timeout_s=10)
        emit_many(1500)
        done = shutdown_telemetry()
        report(dest, completed=done.completed, exported=done.spans_exported,
               dropped=done.spans_dropped, points=done.metric_points_exported,
               points_dropped=done.metric_points_dropped)
        """,
        {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
    )
    assert result["completed"] and (result["exported"], result["dropped"]) == (1500, 0)
    assert result["points_dropped"] == 0
    spans = receiver.wait_for(
        lambda r: len(_spans_of(r, result["pid"])) >= 1500 and _spans_of(r, result["pid"]),
        timeout_s=_RECEIVE_TIMEOUT_S,
    )
    assert len(spans) == 1500  # what the result counts as exported did arrive, once each


def test_file_fallback_rotates_at_the_configured_size(tmp_path: Path) -> None:
    result = run_script(
        f"""
        dest = configure_telemetry(fallback_dir={str(tmp_path)!r})
        emit_many(400)
        done = shutdown_telemetry()
        report(dest, exported=done.spans_exported)
        """,
        {
            "SERVE_DRIFT_TELEMETRY_FILE_MAX_BYTES": "20000",
            "SERVE_DRIFT_TELEMETRY_FILE_BACKUPS": "2",
        },
    )
    name = f"spans-{result['pid']}.jsonl"
    spans_files = sorted(p.name for p in tmp_path.glob(f"{name}*"))
    assert spans_files == [name, f"{name}.1", f"{name}.2"]  # more were written: capped at 2
    assert all((tmp_path / f).stat().st_size <= 20000 for f in spans_files)
    newest = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    assert newest[-1]["attributes"]["i"] == 399 and result["exported"] == 400


def test_invalid_bounds_fall_back_to_the_defaults_with_a_note(tmp_path: Path) -> None:
    result = run_script(
        f"""
        dest = configure_telemetry(
            fallback_dir={str(tmp_path)!r}, shutdown_timeout_s=-1, file_max_bytes=0
        )
        report(dest, flush=force_flush().timeout_s)
        """,
        {"SERVE_DRIFT_TELEMETRY_FLUSH_TIMEOUT_S": "soon"},  # a bad knob: the documented default
    )
    for text in (result["traces"], result["metrics"]):
        assert "shutdown_timeout_s=-1 is invalid, using 5 s" in text, text
        assert "file_max_bytes=0 is invalid, using 16777216" in text, text
    assert result["flush"] == 5.0


def test_providers_skip_the_sdks_unbounded_exit_hook(tmp_path: Path) -> None:
    # The SDK would register TracerProvider.shutdown and MeterProvider.shutdown here.
    result = run_script(
        f"""
        import atexit
        registered = []
        real_register = atexit.register

        def spy(fn, *args, **kwargs):
            registered.append(getattr(fn, "__qualname__", repr(fn)))
            return real_register(fn, *args, **kwargs)

        atexit.register = spy
        dest = configure_telemetry(fallback_dir={str(tmp_path)!r})
        report(dest, registered=registered)
        """
    )
    assert result["registered"] == ["_shutdown_at_exit"]
