"""A monitored app whose telemetry goes to a black hole: requests unaffected, deletion bounded.

Two copies of one decorated deployment run side by side. ``ok`` exports to the session's OTLP
receiver; ``bh`` (replicas and monitor) gets, through ``runtime_env.env_vars``, an endpoint on
127.0.0.1 that accepts connections and never answers: traces over gRPC, metrics over
HTTP/protobuf, both with the exporters' default 10 s timeout per batch. Requests alternate
between the two apps, so load and noise are shared. The replicas stop their telemetry in
``__del__``, which Serve calls before it kills a replica (a killed process runs no exit hooks);
``graceful_shutdown_timeout_s`` is set far above the telemetry bound so that Serve's own kill
deadline cannot hide a hang.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from serve_drift import monitored_app
from tests.support.blackhole import BlackHole
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.scorer import scorer_class
from tests.support.serve import ServeInstance

pytestmark = pytest.mark.integration

SHUTDOWN_BOUND_S = 2.0
GRACEFUL_SHUTDOWN_S = 60.0
REQUESTS = 60


def _user_deployment(config: dict, env_vars: dict[str, str]):
    """A user's deployment that stops its telemetry when Serve stops the replica."""
    from ray import serve

    return serve.deployment(
        scorer_class(config, stop_telemetry_on_delete=True),
        graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
        ray_actor_options={"runtime_env": {"env_vars": env_vars}},
    )


def _app(name: str, env_vars: dict[str, str]):
    config = {"model_name": name, "shipping": {"flush_interval_s": 0.1}}
    monitor_options = {
        "ray_actor_options": {"num_cpus": 0.5, "runtime_env": {"env_vars": env_vars}}
    }
    return monitored_app(
        _user_deployment(config, env_vars).options(name=f"{name}-scorer"),
        monitor_options={"name": f"{name}-monitor", **monitor_options},
    )


@pytest.fixture
def blackhole() -> Iterator[BlackHole]:
    with BlackHole("hang") as hole:
        yield hole


def _timed_post(client: httpx.Client, url: str, x: list[float]) -> tuple[int, float]:
    started = time.perf_counter()
    response = client.post(url, json={"x": x})
    return response.status_code, time.perf_counter() - started


def _services(receiver: OtlpReceiver) -> set[str]:
    return {str(span.resource.get("service.name")) for span in receiver.spans()}


def test_blackholed_exporter_leaves_requests_and_deletion_unaffected(
    serve_instance: ServeInstance, otlp_receiver: OtlpReceiver, blackhole: BlackHole
) -> None:
    from ray import serve

    bh_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": blackhole.endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "SERVE_DRIFT_TELEMETRY_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_BOUND_S),
    }
    ok_env = {"SERVE_DRIFT_TELEMETRY_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_BOUND_S)}
    serve.run(_app("ok", ok_env), name="ok", route_prefix="/ok")
    serve.run(_app("bh", bh_env), name="bh", route_prefix="/bh")
    deleted: set[str] = set()
    try:
        latencies: dict[str, list[float]] = {"ok": [], "bh": []}
        rng = np.random.default_rng(0)
        with httpx.Client(timeout=30) as client:
            for app in ("ok", "bh"):  # warm both: first requests pay for connections and JIT
                assert _timed_post(client, serve_instance.url(f"/{app}"), [0.0] * 4)[0] == 200
            for _ in range(REQUESTS):
                x = rng.normal(size=4).tolist()
                for app in ("ok", "bh"):
                    status, took = _timed_post(client, serve_instance.url(f"/{app}"), x)
                    assert status == 200, app
                    latencies[app].append(took)

        # The black hole really was in the path: its exporters connected and are waiting.
        assert blackhole.connections >= 1
        # Only that app is affected: the other one's spans arrive, none of the black-holed one's.
        otlp_receiver.wait_for(lambda r: "ok" in _services(r))
        assert "bh" not in _services(otlp_receiver)

        ok_p50, bh_p50 = (statistics.median(latencies[a]) for a in ("ok", "bh"))
        # Within noise on a shared machine; an export on the request path would add seconds.
        assert bh_p50 < 2 * ok_p50 + 0.025, (ok_p50, bh_p50)
        assert max(latencies["bh"]) < 1.0, max(latencies["bh"])

        delete_s = {}
        for app in ("ok", "bh"):
            started = time.monotonic()
            serve.delete(app)
            delete_s[app] = time.monotonic() - started
            deleted.add(app)
        # Serve's own drain and stop take a few seconds; telemetry adds at most its bound.
        assert delete_s["bh"] < delete_s["ok"] + SHUTDOWN_BOUND_S + 5, delete_s
        assert delete_s["bh"] < GRACEFUL_SHUTDOWN_S / 3, delete_s
        print(
            f"p50 ok {ok_p50 * 1000:.1f} ms, bh {bh_p50 * 1000:.1f} ms; "
            f"delete ok {delete_s['ok']:.1f} s, bh {delete_s['bh']:.1f} s"
        )
    finally:
        for app in {"ok", "bh"} - deleted:
            serve.delete(app)
