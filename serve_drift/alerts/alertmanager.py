"""Rules compiled to an Alertmanager route tree, and maintenance as an Alertmanager silence.

The notification policy of every rule maps onto Alertmanager's own mechanisms, so the
Prometheus path behaves like the engine's sinks:

==========================  ==============================================================
rule config                 Alertmanager
==========================  ==============================================================
``owner``                   a receiver per owner (``alertmanager.receivers[owner]`` or
                            ``default_url``), a route per rule
``renotify_interval_s``     the route's ``repeat_interval``
``suppress`` schedules      ``time_intervals`` and the route's ``mute_time_intervals``
``inhibits``                ``inhibit_rules``, equal on the labels both rules' alerts have
maintenance                 a silence on the app's alerts (:class:`AlertmanagerSilences`)
==========================  ==============================================================

>>> from serve_drift.alerts.config import AlertsConfig
>>> config = compile_alertmanager(AlertsConfig(), model_name="digits")
>>> config["inhibit_rules"][0]["equal"]
['model_name', 'model_version', 'detector']
>>> maintenance_matchers(AlertsConfig(), model_name="digits")[0]
{'name': 'model_name', 'value': 'digits', 'isRegex': False, 'isEqual': True}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import httpx

from serve_drift.alerts.config import AlertsConfig, SuppressionSchedule
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.alerts.payload import iso_time
from serve_drift.alerts.prometheus import duration, quote, rule_names
from serve_drift.alerts.rules import AlertRule
from serve_drift.errors import ServeDriftError

__all__ = [
    "AlertmanagerError",
    "AlertmanagerSilences",
    "compile_alertmanager",
    "maintenance_matchers",
]

_NEVER_S = 365 * 24 * 3600.0  # "never re-notify": Alertmanager needs some interval


class AlertmanagerError(ServeDriftError, OSError):
    """Alertmanager did not do what was asked (unreachable, or refused the request)."""

    code = "alertmanager_failed"


def receiver_name(owner: str) -> str:
    return "serve-drift-" + re.sub(r"[^a-zA-Z0-9_-]", "-", owner)


def compile_alertmanager(config: AlertsConfig, *, model_name: str) -> dict[str, Any]:
    """An Alertmanager configuration (as a dict) routing this app's alerts."""
    options = config.alertmanager
    owners = list(dict.fromkeys(r.owner for r in config.rules)) or ["ml-platform"]
    document: dict[str, Any] = {
        "route": {
            "receiver": receiver_name(owners[0]),
            "group_by": ["alertname", "model_name", "model_version", "detector"],
            "group_wait": duration(options.group_wait_s) if options.group_wait_s else "0s",
            "group_interval": duration(options.group_interval_s),
            "repeat_interval": duration(4 * 3600.0),
            "routes": [_route(rule, config, model_name) for rule in config.rules],
        },
        "receivers": [_receiver(owner, config) for owner in owners],
        "inhibit_rules": _inhibitions(config, model_name),
    }
    if config.suppress:
        document["time_intervals"] = [_time_interval(s) for s in config.suppress]
    return document


def _route(rule: AlertRule, config: AlertsConfig, model_name: str) -> dict[str, Any]:
    route: dict[str, Any] = {
        "receiver": receiver_name(rule.owner),
        "matchers": [f"alertname={quote(rule.name)}", f"model_name={quote(model_name)}"],
        "repeat_interval": duration(rule.renotify_interval_s or _NEVER_S),
    }
    mutes = [s.name for s in config.suppress if not s.rules or rule.name in s.rules]
    if mutes:
        route["mute_time_intervals"] = mutes
    return route


def _receiver(owner: str, config: AlertsConfig) -> dict[str, Any]:
    url = config.alertmanager.receivers.get(owner, config.alertmanager.default_url)
    return {"name": receiver_name(owner), "webhook_configs": [{"url": url, "send_resolved": True}]}


def _scope_labels(rule: AlertRule) -> list[str]:
    if rule.conditions[0].kind == "silence":
        return ["model_name"]
    return ["model_name", "model_version", *(["detector"] if rule.per_detector else [])]


def _inhibitions(config: AlertsConfig, model_name: str) -> list[dict[str, Any]]:
    found = []
    for source in config.rules:
        for target_name in source.inhibits:
            target = config.rule(target_name)
            common = [k for k in _scope_labels(source) if k in _scope_labels(target)]
            found.append(
                {
                    "source_matchers": [f"alertname={quote(source.name)}"],
                    "target_matchers": [
                        f"alertname={quote(target.name)}",
                        f"model_name={quote(model_name)}",
                    ],
                    "equal": common,
                }
            )
    return found


def _time_interval(schedule: SuppressionSchedule) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "time_intervals": [
            {
                "weekdays": list(schedule.weekdays),
                "times": [{"start_time": schedule.start, "end_time": schedule.end}],
                "location": schedule.timezone,
            }
        ],
    }


def maintenance_matchers(config: AlertsConfig, *, model_name: str) -> list[dict[str, Any]]:
    """Silence matchers for every alert the app's compiled rules can raise."""
    names = "|".join(re.escape(name) for name in rule_names(config))
    return [
        {"name": "model_name", "value": model_name, "isRegex": False, "isEqual": True},
        {"name": "alertname", "value": f"({names})", "isRegex": True, "isEqual": True},
    ]


class AlertmanagerSilences:
    """Create and expire silences through Alertmanager's v2 API.

    ``url`` is Alertmanager's base address (``http://alertmanager:9093``).
    """

    def __init__(
        self,
        url: str,
        *,
        matchers: Sequence[dict[str, Any]],
        timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.matchers = list(matchers)
        self._client = httpx.Client(timeout=timeout_s, transport=transport)

    def create(self, window: MaintenanceWindow) -> str:
        """A silence covering ``window``; returns its id."""
        body = {
            "matchers": self.matchers,
            "startsAt": iso_time(window.started_at),
            "endsAt": iso_time(window.until),
            "createdBy": window.who,
            "comment": f"serve-drift maintenance {window.maintenance_id}: {window.why}",
        }
        answer = self._call("POST", "/api/v2/silences", json=body)
        return str(answer.json()["silenceID"])

    def expire(self, silence_id: str) -> None:
        self._call("DELETE", f"/api/v2/silence/{silence_id}")

    def get(self, silence_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self._call("GET", f"/api/v2/silence/{silence_id}").json()
        return data

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, self.url + path, **kwargs)
        except httpx.HTTPError as exc:
            raise AlertmanagerError(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise AlertmanagerError(
                f"{self.url}{path} answered {response.status_code}: {response.text[:200]}"
            )
        return response

    def close(self) -> None:
        self._client.close()
