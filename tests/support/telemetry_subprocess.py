"""Telemetry setup scripts in fresh interpreters: global OTel providers are set once a process.

Every script runs as ``sys.executable -c <prelude + script>`` with an explicit environment. The
prelude registers a bare ``serve_drift`` package object first so that ``serve_drift/__init__``
(torch, Ray) is not imported: each subprocess then starts in well under a second, and the
telemetry modules are shown not to depend on the rest of the package. It defines ``report()``
(one ``RESULT {json}`` line on stdout) and ``emit()`` (spans with links and events, a counter
and a histogram).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "serve_drift"

_BARE_PACKAGE = f"""
import sys, types
_pkg = types.ModuleType("serve_drift")
_pkg.__path__ = [{str(PACKAGE_DIR)!r}]
sys.modules["serve_drift"] = _pkg
"""

_PRELUDE = """
import json, os, sys, time
from opentelemetry import metrics, trace
from serve_drift.telemetry.setup import configure_telemetry, force_flush, shutdown_telemetry

def report(dest, **extra):
    out = {"pid": os.getpid()}
    if dest is not None:
        out |= {"traces": dest.traces, "metrics": dest.metrics, "logs": dest.logs}
    print("RESULT " + json.dumps({**out, **extra}), flush=True)

def emit(span_name="unit.span", counter="serve_drift.test.requests"):
    tracer = trace.get_tracer("serve_drift.tests")
    with tracer.start_as_current_span("unit.request", attributes={"k": "v"}) as request:
        pass
    with tracer.start_as_current_span(
        span_name,
        attributes={"serve_drift.n": 3, "serve_drift.ids": ["a", "b"], "serve_drift.ok": True},
        links=[trace.Link(request.get_span_context(), {"serve_drift.why": "batch"})],
    ) as span:
        span.add_event("unit.event", {"serve_drift.p": 0.5})
        with tracer.start_as_current_span("unit.child"):
            pass
    meter = metrics.get_meter("serve_drift.tests")
    meter.create_counter(counter).add(2, {"route": "/predict"})
    meter.create_counter(counter).add(5, {"route": "/predict"})
    meter.create_histogram("serve_drift.test.pvalue").record(0.04, {"detector": "mmd"})

def emit_many(n):
    tracer = trace.get_tracer("serve_drift.tests")
    for i in range(n):
        with tracer.start_as_current_span("unit.many", attributes={"i": i}):
            pass
"""


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment minus anything that would steer telemetry or proxies."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "SERVE_DRIFT_", "RAY_")) and "proxy" not in key.lower()
    }
    env.update(extra)
    return env


def _argv(script: str, *, bare_package: bool) -> list[str]:
    prologue = _BARE_PACKAGE if bare_package else ""
    return [sys.executable, "-c", prologue + _PRELUDE + textwrap.dedent(script)]


def _result_of(stdout: str, stderr: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line\n{stdout}\n{stderr}"
    return {**json.loads(lines[-1].removeprefix("RESULT ")), "stderr": stderr}


def run_script(
    script: str, env: dict[str, str] | None = None, *, bare_package: bool = True
) -> dict[str, Any]:
    """Run a script after the prelude in a fresh interpreter; return its ``report`` dict."""
    proc = subprocess.run(
        _argv(script, bare_package=bare_package),
        env=clean_env(env or {}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return _result_of(proc.stdout, proc.stderr)


@dataclass(frozen=True)
class TimedExit:
    """A script's ``report`` dict, and how long the process took to end after it reported."""

    result: dict[str, Any]
    exit_s: float


def run_script_timing_exit(script: str, env: dict[str, str], *, limit_s: float = 60) -> TimedExit:
    """Like :func:`run_script`; also times from the ``RESULT`` line (the script's last act) to
    the process's end, which is the interpreter's exit: ``atexit`` handlers included."""
    # stderr to a file: a chatty exporter cannot fill a pipe and stall the script.
    with tempfile.TemporaryFile(mode="w+") as stderr_file:
        proc = subprocess.Popen(
            _argv(script, bare_package=True),
            env=clean_env(env),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
        )
        assert proc.stdout is not None
        stdout = []
        for line in proc.stdout:  # the RESULT line is flushed at once; the pipe closes at exit
            stdout.append(line)
            if line.startswith("RESULT "):
                break
        reported = time.monotonic()
        try:
            rest, _ = proc.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
        exit_s = time.monotonic() - reported
        stderr_file.seek(0)
        stderr = stderr_file.read()
    out = "".join(stdout) + rest
    assert proc.returncode == 0, f"exit {proc.returncode} after {exit_s:.1f} s\n{out}\n{stderr}"
    return TimedExit(result=_result_of(out, stderr), exit_s=exit_s)
