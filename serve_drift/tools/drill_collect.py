"""What a drill reads from the endpoint while it runs: its health, drift results and alerts.

Everything goes over HTTP with the admin token: ``GET /admin/health`` (window size, pending
windows), ``GET /drift?limit=500`` (the monitor keeps its latest 500 results, so they are
polled during the run and merged by test ID) and ``GET /admin/alerts`` (the open incidents,
merged by incident ID). An endpoint that serves alerts evaluates its rules; then, where its
event store is readable on this machine (``--db``), the store's incidents are used (every
state, not only the open ones). An endpoint that serves none does not evaluate rules: the
default rules (or ``--rules``) are replayed over the drill's own drift results instead, a
**backtest**, and the output says so.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import httpx

from serve_drift.alerts import AlertEngine, AlertsConfig, SentinelRun, Signal, Tick, WindowTested
from serve_drift.errors import ServeDriftError
from serve_drift.eventlog.store import BaseEventStore
from serve_drift.messages import DriftResult

AlertSource = Literal["auto", "endpoint", "store", "backtest"]
RESULTS_LIMIT = 500
ALERTS_PATH = "/admin/alerts"
_RESULT_FIELDS = {f.name for f in fields(DriftResult)}


class DrillError(ServeDriftError, RuntimeError):
    """The drill could not run: the endpoint is unreachable, or refuses the admin token."""

    code = "drill_failed"


@dataclass(frozen=True)
class EndpointInfo:
    window_size: int
    model_version: str | None
    status: str


def endpoint_info(client: httpx.Client) -> EndpointInfo:
    """The monitor's window size and status, from ``GET /admin/health``."""
    body = _admin_get(client, "/admin/health")
    monitor = body.get("monitor") or {}
    size = monitor.get("window_size")
    if not isinstance(size, int) or size < 1:
        raise DrillError("the endpoint's health does not say its drift window size")
    return EndpointInfo(
        window_size=size, model_version=body.get("model_version"), status=str(body.get("status"))
    )


def losses(client: httpx.Client) -> dict[str, int]:
    """What the endpoint says it lost or could not test since it started, by what (the
    answering replica's shipping, the monitor's rows and tests, the event log's events)."""
    body = _admin_get(client, "/admin/health")
    monitor = body.get("monitor") or {}
    found = {
        f"embeddings dropped ({reason})": int(n)
        for reason, n in ((body.get("replica") or {}).get("dropped") or {}).items()
    }
    for key, what in (
        ("rejected", "rows rejected by the monitor"),
        ("windows_skipped", "windows skipped"),
        ("test_errors", "drift tests failed"),
        ("unrecorded", "rows not recorded"),
    ):
        found[what] = int(monitor.get(key) or 0)
    events = ((monitor.get("event_log") or {}).get("events") or {}).get("dropped") or {}
    found.update({f"events dropped ({reason})": int(n) for reason, n in events.items()})
    return found


def pending_windows(client: httpx.Client) -> int:
    monitor = _admin_get(client, "/admin/health").get("monitor") or {}
    return int(monitor.get("pending_windows") or 0)


def _admin_get(client: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    try:
        response = client.get(path, params=params)
    except httpx.HTTPError as exc:
        raise DrillError(f"{client.base_url}{path}: {type(exc).__name__}: {exc}") from exc
    if response.status_code in (401, 403):
        code = _error_code(response)
        raise DrillError(f"{path}: refused ({response.status_code} {code}): check the admin token")
    if response.status_code != 200:
        raise DrillError(f"{path}: {response.status_code} {_error_code(response)}")
    data: dict[str, Any] = response.json()
    return data


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return response.text[:80]


class Collector:
    """Polls drift results and open alerts on a thread while the drill sends traffic."""

    def __init__(self, client: httpx.Client, *, interval_s: float = 2.0) -> None:
        self.client, self.interval_s = client, interval_s
        self.results: dict[str, dict[str, Any]] = {}
        self.incidents: dict[str, dict[str, Any]] = {}
        self.alerts_served: bool | None = None  # None until the endpoint was asked
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drill-collector", daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except DrillError:
                continue  # a missed poll is retried; the final poll raises

    def poll(self) -> int:
        """One round; returns how many new results it found."""
        found = _admin_get(self.client, "/drift", limit=RESULTS_LIMIT).get("results", [])
        with self._lock:
            before = len(self.results)
            self.results.update({r["test_id"]: r for r in found})
            new = len(self.results) - before
        self._poll_alerts()
        return new

    def _poll_alerts(self) -> None:
        try:
            response = self.client.get(ALERTS_PATH)
        except httpx.HTTPError:
            return
        body = _json(response) if response.status_code == 200 else {}
        with self._lock:
            self.alerts_served = "open" in body or bool(self.alerts_served)
            self.incidents.update({i["incident_id"]: i for i in body.get("open", ())})

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self._lock:
            results = sorted(
                self.results.values(), key=lambda r: (r["window_index"], r["detector"])
            )
            return results, list(self.incidents.values())


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def stored_incidents(store: BaseEventStore, *, since: float) -> list[dict[str, Any]]:
    """Incidents the monitor stored (every state) that opened at or after ``since``."""
    return [i.document for i in store.alert_incidents(since=since, limit=10_000)]


def drift_result(data: Mapping[str, Any]) -> DriftResult:
    """A ``DriftResult`` from its ``to_dict()`` form (keys it does not know are ignored)."""
    values = {k: v for k, v in data.items() if k in _RESULT_FIELDS}
    values["correlation_ids_sample"] = tuple(values.get("correlation_ids_sample", ()))
    values["component_p_values"] = tuple(dict(values.get("component_p_values") or {}).items())
    values["skipped_components"] = tuple(values.get("skipped_components", ()))
    values["distance"] = float("nan") if values.get("distance") is None else values["distance"]
    return DriftResult(**values)


def backtest(
    results: Sequence[Mapping[str, Any]],
    *,
    config: AlertsConfig,
    model_name: str,
    sentinel: Sequence[tuple[float, float, int, str]] = (),
) -> list[dict[str, Any]]:
    """The incidents ``config``'s rules open on these results (and sentinel runs, given as
    ``(at, accuracy, images, model_version)``), each in its latest state."""
    signals = signals_from_results(results, model_name=model_name, sentinel=sentinel)
    if not signals:
        return []
    engine = AlertEngine(config, started_at=signals[0].at, model_names=(model_name,))
    latest: dict[str, dict[str, Any]] = {}
    for signal in [*signals, Tick(at=signals[-1].at)]:
        for transition in engine.observe(signal):
            latest[transition.incident.incident_id] = transition.incident.to_dict()
    return list(latest.values())


def signals_from_results(
    results: Sequence[Mapping[str, Any]],
    *,
    model_name: str,
    sentinel: Sequence[tuple[float, float, int, str]] = (),
) -> list[Signal]:
    """One ``WindowTested`` per window of these results (and a ``SentinelRun`` per run),
    oldest first: what the monitor's rule engine would have observed."""
    windows: dict[tuple[str, int], list[DriftResult]] = {}
    for data in results:
        if data.get("p_value") is None:
            continue
        result = drift_result(data)
        windows.setdefault((result.model_version, result.window_index), []).append(result)
    signals: list[Signal] = [
        WindowTested(
            at=max(r.tested_at for r in found),
            model_name=model_name,
            model_version=version,
            window_index=index,
            results=tuple(sorted(found, key=lambda r: r.detector)),
            estimated_accuracy=getattr(found[0], "estimated_accuracy", None),
        )
        for (version, index), found in windows.items()
    ]
    signals += [
        SentinelRun(at=at, model_name=model_name, model_version=v, accuracy=acc, n_images=n)
        for at, acc, n, v in sentinel
    ]
    return sorted(signals, key=lambda s: s.at)
