"""Real processes against black-holed OTLP endpoints: flush, shutdown and exit stay bounded.

Each case is a fresh interpreter that configures the SDK from ``OTEL_*`` against a 127.0.0.1
endpoint that accepts and never answers (``hang``) or refuses (``refuse``), over gRPC or
HTTP/protobuf, with the exporters' own timeout left at its default (10 s per batch). Unbounded,
the same flush took 50 s and the exit another 20 s (2,000 spans). The margins are generous
because the bound, not speed, is under test.
"""

from __future__ import annotations

import re

import pytest

from tests.support.blackhole import MODES, BlackHole
from tests.support.telemetry_subprocess import run_script, run_script_timing_exit

BOUND_S = 1.0
MARGIN_S = 2.0  # interpreter start-up is not timed; exit includes the interpreter's own teardown
SPANS = 2000  # four export batches of 512
PROTOCOLS = ("grpc", "http/protobuf")


def _env(hole: BlackHole, protocol: str, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": hole.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        **extra,
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("mode", MODES)
def test_flush_and_exit_return_within_the_bound(mode: str, protocol: str) -> None:
    with BlackHole(mode) as hole:  # type: ignore[arg-type]
        timed = run_script_timing_exit(
            f"""
            dest = configure_telemetry(flush_timeout_s={BOUND_S}, shutdown_timeout_s={BOUND_S})
            emit_many({SPANS})
            emit()  # three more spans, a counter and a histogram
            started = time.monotonic()
            flushed = force_flush()
            report(dest, flush_s=time.monotonic() - started, completed=flushed.completed)
            # No shutdown call: the bounded hook at interpreter exit must do it.
            """,
            _env(hole, protocol),
        )
    result = timed.result
    assert result["traces"].startswith(f"otlp {protocol} {hole.endpoint}"), result
    assert result["completed"] is False  # nothing can complete against a black hole
    assert BOUND_S <= result["flush_s"] < BOUND_S + MARGIN_S, result
    assert timed.exit_s < BOUND_S + MARGIN_S, f"exit took {timed.exit_s:.1f} s\n{result['stderr']}"
    # Nothing was delivered, and the exit hook says so: every span is counted as dropped.
    dropped = re.search(r"dropped: (\d+) spans, (\d+) metric points", result["stderr"])
    assert dropped, result["stderr"]
    assert int(dropped[1]) == SPANS + 3 and int(dropped[2]) >= 2, dropped[0]
    if mode == "hang":
        assert hole.connections >= 1  # the exporters really were waiting on this endpoint


def test_explicit_shutdown_reports_what_it_dropped_once() -> None:
    with BlackHole("hang") as hole:
        timed = run_script_timing_exit(
            f"""
            dest = configure_telemetry(shutdown_timeout_s={BOUND_S})
            emit_many({SPANS})
            first = shutdown_telemetry()
            again = shutdown_telemetry(timeout_s=30)
            report(
                dest,
                elapsed_s=first.elapsed_s,
                timeout_s=first.timeout_s,
                dropped=first.spans_dropped,
                exported=first.spans_exported,
                same=again is first,
            )
            """,
            _env(hole, "grpc"),
        )
    result = timed.result
    assert result["timeout_s"] == BOUND_S and result["elapsed_s"] < BOUND_S + 0.5, result
    assert (result["dropped"], result["exported"]) == (SPANS, 0)
    assert result["same"]
    assert timed.exit_s < MARGIN_S  # already shut down: the exit hook has nothing left to wait for


def test_bound_from_the_environment_knob() -> None:
    with BlackHole("hang") as hole:
        result = run_script(
            f"""
            dest = configure_telemetry()
            emit_many({SPANS})
            done = shutdown_telemetry()
            report(dest, elapsed_s=done.elapsed_s, timeout_s=done.timeout_s)
            """,
            _env(hole, "http/protobuf", SERVE_DRIFT_TELEMETRY_SHUTDOWN_TIMEOUT_S="0.5"),
        )
    assert result["timeout_s"] == 0.5 and result["elapsed_s"] < 0.5 + 0.5, result


def test_the_users_exporter_timeout_still_governs_each_export() -> None:
    # The bound is ours; OTEL_EXPORTER_OTLP_TIMEOUT stays the user's. With 0.3 s per export, a
    # flush with a generous bound completes: each batch fails on its own timeout, counted.
    with BlackHole("hang") as hole:
        result = run_script(
            f"""
            dest = configure_telemetry(flush_timeout_s=30)
            emit_many({SPANS})
            done = force_flush()
            report(dest, completed=done.completed, failed=done.spans_failed, took=done.elapsed_s)
            """,
            _env(hole, "grpc", OTEL_EXPORTER_OTLP_TIMEOUT="0.3"),
        )
    assert result["completed"] and result["failed"] == SPANS, result
    assert result["took"] < 10, result  # 4 batches of 0.3 s, not 4 of the default 10 s
