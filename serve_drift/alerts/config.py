"""The ``alerts`` section of the configuration: pydantic models, validated when built.

An ``alerts`` section (in the app's args, or a file of its own) holds rules
(:mod:`serve_drift.alerts.rules`), suppression schedules, sinks, and the options of the
Prometheus/Alertmanager compilers. Left out, ``rules`` is the default rule set
(:mod:`serve_drift.alerts.defaults`).

>>> config = AlertsConfig.model_validate({"rules": [{
...     "name": "input-drift", "severity": "warning", "owner": "vision-team",
...     "runbook_url": "https://runbooks.example.com/drift",
...     "all": [{"kind": "drift", "k": 2, "n": 3, "alpha": 0.01}]}]})
>>> rule = config.rules[0]
>>> (rule.name, rule.conditions[0].kind, round(rule.false_alert_rate_per_1000, 3))
('input-drift', 'drift', 0.196)
"""

from __future__ import annotations

from datetime import time as clock_time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_drift.alerts.defaults import default_rules
from serve_drift.alerts.rules import AlertRule, Severity

__all__ = [
    "WEEKDAYS",
    "AlertmanagerOptions",
    "AlertsConfig",
    "OtelLogsSinkConfig",
    "PrometheusOptions",
    "SinkConfig",
    "StdoutSinkConfig",
    "SuppressionSchedule",
    "WebhookSinkConfig",
    "config_from_mapping",
    "inhibition_order",
    "minutes_of_day",
]

Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEKDAYS: tuple[str, ...] = Weekday.__args__  # type: ignore[attr-defined]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- suppression schedules --------------------------------------------------------------------


class SuppressionSchedule(_Frozen):
    """A weekly time range in which notifications of ``rules`` (empty: all) are held back.

    ``start``/``end`` are ``HH:MM`` on each of ``weekdays`` in ``timezone``; ``end`` may be
    ``24:00``. Incidents still open and are recorded; they are notified when the range ends.
    """

    name: str
    weekdays: tuple[Weekday, ...] = WEEKDAYS  # type: ignore[assignment]
    start: str = "00:00"
    end: str = "24:00"
    timezone: str = "UTC"
    rules: tuple[str, ...] = ()

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        minutes_of_day(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {value!r} (an IANA name like Europe/Paris)"
            ) from None
        return value

    @model_validator(mode="after")
    def _ordered(self) -> SuppressionSchedule:
        if minutes_of_day(self.start) >= minutes_of_day(self.end):
            raise ValueError(f"schedule {self.name}: start must be before end (same day)")
        return self


def minutes_of_day(text: str) -> int:
    """``"HH:MM"`` (``24:00`` allowed) as minutes since midnight."""
    if text == "24:00":
        return 24 * 60
    try:
        parsed = clock_time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day HH:MM") from None
    if len(text) != 5 or parsed.second:
        raise ValueError(f"{text!r} is not a time of day HH:MM")
    return parsed.hour * 60 + parsed.minute


# --- sinks ------------------------------------------------------------------------------------


class _SinkBase(_Frozen):
    severities: tuple[Severity, ...] = ()  # empty: every severity


class StdoutSinkConfig(_SinkBase):
    """One JSON line per notification on standard output (the process's log)."""

    kind: Literal["stdout"] = "stdout"


class WebhookSinkConfig(_SinkBase):
    """JSON (Alertmanager's webhook format plus our evidence), HMAC-SHA256 signed.

    The secret is read from the environment variable ``secret_env`` (never from the config
    file). Failed deliveries (network errors, timeouts, 429 and 5xx) are retried
    ``max_attempts - 1`` times with exponential backoff from ``backoff_s``, capped at
    ``max_backoff_s``.
    """

    kind: Literal["webhook"] = "webhook"
    url: str
    secret_env: str | None = None
    timeout_s: float = Field(5.0, gt=0, le=120)
    max_attempts: int = Field(4, ge=1, le=20)
    backoff_s: float = Field(0.5, ge=0, le=60)
    max_backoff_s: float = Field(30.0, ge=0, le=3600)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s)://..., got {value!r}")
        return value


class OtelLogsSinkConfig(_SinkBase):
    """An OpenTelemetry log record per notification, in the trace of the triggering test."""

    kind: Literal["otel_logs"] = "otel_logs"


SinkConfig = Annotated[
    StdoutSinkConfig | WebhookSinkConfig | OtelLogsSinkConfig, Field(discriminator="kind")
]


# --- compilers --------------------------------------------------------------------------------


class PrometheusOptions(_Frozen):
    """How rules compile to Prometheus alerting rules.

    ``metric_prefix``: ``ray_`` when the metrics reach Prometheus through Ray's metrics export
    (the default; see the README), empty for an OpenTelemetry Collector's Prometheus exporter.
    ``engine_absent_for_s``: alert when the monitor's rule engine stops reporting this long.
    """

    metric_prefix: str = "ray_"
    evaluation_interval_s: float = Field(30.0, gt=0)
    engine_absent_for_s: float | None = Field(600.0, gt=0)


class AlertmanagerOptions(_Frozen):
    """How rules compile to an Alertmanager route tree and receivers.

    One webhook receiver per owner: ``receivers[owner]`` is its URL, else ``default_url``.
    Maintenance silences go to ``url`` (Alertmanager's own address), when set.
    """

    url: str | None = None
    default_url: str = "http://127.0.0.1:9095/serve-drift"
    receivers: dict[str, str] = Field(default_factory=dict)
    group_wait_s: float = Field(30.0, ge=0)
    group_interval_s: float = Field(300.0, gt=0)


# --- the section ------------------------------------------------------------------------------


class AlertsConfig(_Frozen):
    """The ``alerts`` section. ``queue_size``: notifications each sink may have waiting;
    ``tick_interval_s``: how often the monitor tells the engine that time passed, so that
    silence rules fire and reminders go out when no window arrives."""

    rules: tuple[AlertRule, ...] = Field(default_factory=default_rules)
    suppress: tuple[SuppressionSchedule, ...] = ()
    sinks: tuple[SinkConfig, ...] = (StdoutSinkConfig(),)
    queue_size: int = Field(1000, ge=1, le=1_000_000)
    tick_interval_s: float = Field(30.0, gt=0, le=3600)
    prometheus: PrometheusOptions = PrometheusOptions()
    alertmanager: AlertmanagerOptions = AlertmanagerOptions()

    @model_validator(mode="after")
    def _references(self) -> AlertsConfig:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {names}")
        known = set(names)
        for rule in self.rules:
            _known(f"rule {rule.name} inhibits", rule.inhibits, known)
        for schedule in self.suppress:
            _known(f"schedule {schedule.name} suppresses", schedule.rules, known)
        inhibition_order(self.rules)  # refuses cycles
        return self

    def rule(self, name: str) -> AlertRule:
        return next(r for r in self.rules if r.name == name)


def _known(what: str, names: tuple[str, ...], known: set[str]) -> None:
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"{what} unknown rules {unknown}; rules: {sorted(known)}")


def inhibition_order(rules: tuple[AlertRule, ...]) -> tuple[AlertRule, ...]:
    """Rules with every inhibitor before the rules it inhibits; refuses a cycle."""
    by_name = {r.name: r for r in rules}
    inhibitors: dict[str, set[str]] = {r.name: set() for r in rules}
    for rule in rules:
        for target in rule.inhibits:
            inhibitors.setdefault(target, set()).add(rule.name)
    ordered: list[AlertRule] = []
    placed: set[str] = set()
    while len(ordered) < len(rules):
        ready = [n for n in by_name if n not in placed and inhibitors.get(n, set()) <= placed]
        if not ready:
            raise ValueError(
                f"rules inhibit each other in a cycle: {sorted(set(by_name) - placed)}"
            )
        for name in ready:
            ordered.append(by_name[name])
            placed.add(name)
    return tuple(ordered)


def config_from_mapping(data: Any) -> AlertsConfig:
    """An :class:`AlertsConfig` from a parsed YAML/JSON mapping (``None``: the defaults)."""
    return AlertsConfig.model_validate(data or {})
