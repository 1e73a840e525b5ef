"""Print how long flush and process exit take against black-holed OTLP endpoints.

``python -m tests.support.measure_blackhole`` (from the repository root) runs, for gRPC and
HTTP/protobuf, each against an endpoint that hangs and one that refuses, a fresh process that
records 2,000 spans and a counter, flushes, and exits: with ``configure_telemetry`` (bound 1 s)
and, with ``--baseline``, with the plain SDK set up the usual way (about a minute per case).
The exporters' own timeout is left at its default, 10 s per batch.
"""

from __future__ import annotations

import argparse

from tests.support.blackhole import MODES, BlackHole
from tests.support.telemetry_subprocess import run_script_timing_exit

SPANS = 2000

_BOUNDED = f"""
dest = configure_telemetry(flush_timeout_s=1.0, shutdown_timeout_s=1.0)
emit_many({SPANS})
metrics.get_meter("m").create_counter("serve_drift.test.c").add(1)
started = time.monotonic()
force_flush()
report(dest, flush_s=time.monotonic() - started)
"""

_PLAIN_SDK = f"""
import importlib
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
http = os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
base = "opentelemetry.exporter.otlp.proto." + ("http" if http else "grpc")
spans = importlib.import_module(base + ".trace_exporter").OTLPSpanExporter()
points = importlib.import_module(base + ".metric_exporter").OTLPMetricExporter()
tp = TracerProvider()
tp.add_span_processor(BatchSpanProcessor(spans))
trace.set_tracer_provider(tp)
mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(points)])
metrics.set_meter_provider(mp)
emit_many({SPANS})
metrics.get_meter("m").create_counter("serve_drift.test.c").add(1)
started = time.monotonic()
tp.force_flush()
mp.force_flush()
report(None, flush_s=time.monotonic() - started)
"""


def _measure(script: str, protocol: str, mode: str) -> str:
    with BlackHole(mode) as hole:  # type: ignore[arg-type]
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": hole.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        }
        timed = run_script_timing_exit(script, env, limit_s=300)
    return f"flush {timed.result['flush_s']:5.1f} s   exit {timed.exit_s:5.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="store_true", help="also time the plain SDK")
    args = parser.parse_args()
    for protocol in ("grpc", "http/protobuf"):
        for mode in MODES:
            line = f"{protocol:14} {mode:7} bounded (1 s): {_measure(_BOUNDED, protocol, mode)}"
            if args.baseline:
                line += f"   plain SDK: {_measure(_PLAIN_SDK, protocol, mode)}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
