"""The demo's alerts: a webhook receiver on 127.0.0.1, and what reached it, per traffic phase.

The demo's monitor runs the default rules with two sinks: stdout (the monitor process's log)
and a webhook to :class:`DemoReceiver`, which the demo starts on a free loopback port. The
incidents are in the demo's event store as well (``serve-drift alerts list --db ...``).

>>> with DemoReceiver() as receiver:
...     receiver.url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rich.table import Table

__all__ = ["DemoAlert", "DemoReceiver", "alerts_table", "firing_alerts"]


class DemoReceiver:
    """Records the JSON body of every POST; answers 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> DemoReceiver:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self._record))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/serve-drift"

    def _record(self, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError:
            return
        with self._lock:
            self.bodies.append(document)

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.bodies)


def _handler(record: Callable[[bytes], None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the stdlib names it so
            record(self.rfile.read(int(self.headers.get("content-length", 0))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    return Handler


@dataclass(frozen=True)
class DemoAlert:
    """One firing notification: which rule, how severe, for which detector, opened by which
    window (the latest window of its evidence; ``None`` for rules without windows)."""

    rule: str
    severity: str
    detector: str
    window: int | None
    summary: str


def firing_alerts(bodies: list[dict[str, Any]]) -> list[DemoAlert]:
    """The notifications that raised an alert (not the resolutions), in arrival order.

    >>> firing_alerts([{"status": "resolved"}])
    []
    """
    alerts = []
    for body in bodies:
        if body.get("status") != "firing":
            continue
        incident = body["serve_drift"]["incident"]
        windows = [w["window_index"] for w in incident["evidence"]["windows"]]
        scope = dict(incident["scope"])
        alerts.append(
            DemoAlert(
                rule=incident["rule"],
                severity=incident["severity"],
                detector=scope.get("detector", "-"),
                window=max(windows) if windows else None,
                summary=incident["summary"],
            )
        )
    return alerts


def alerts_table(alerts: list[DemoAlert], phase_of: Callable[[int | None], str]) -> Table:
    """One row per alert notified on the webhook, with the traffic phase that raised it."""
    table = Table(title="Alerts notified (webhook receiver; also the monitor's stdout and store)")
    for column in ("traffic", "severity", "rule", "detector", "window"):
        table.add_column(column)
    colour = {"critical": "red", "warning": "yellow"}
    for alert in alerts:
        style = colour.get(alert.severity, "")
        severity = f"[{style}]{alert.severity}[/]" if style else alert.severity
        window = "-" if alert.window is None else str(alert.window)
        table.add_row(phase_of(alert.window), severity, alert.rule, alert.detector, window)
    return table
