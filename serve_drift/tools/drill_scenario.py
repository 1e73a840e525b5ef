"""Drill scenarios: phases of clean and corrupted traffic, and what the monitoring must do.

A scenario is YAML (validated when loaded; unknown keys are refused):

.. code-block:: yaml

    name: digits-lighting
    images: {source: embedded}          # or {source: folder, path: /data/cam7}
    seed: 0
    phases:
      - name: clean
        windows: 3                      # 3 x the endpoint's window size; or duration_s: 60
        rate_per_s: 50
      - name: dusk
        windows: 3
        rate_per_s: 50
        corruption: {name: darkness, severity: 3}
        expect:
          detect_within_windows: 2      # a drifted window among the phase's first 2
          alert: {severity: warning, within_windows: 3}

A phase without a corruption is **clean**: unless its ``expect`` says otherwise, it must raise
no false alarm (a drifted window made only of clean traffic) and open no alert. Built-in
scenarios ship with the package (:func:`builtin_scenarios`).

>>> scenario = load_scenario("digits-lighting")
>>> [(p.name, p.clean) for p in scenario.phases]
[('clean', True), ('dusk', False), ('recovery', True)]
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_drift.corruptions import CORRUPTIONS, get_corruption
from serve_drift.errors import ServeDriftError

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
Severity = Literal["info", "warning", "critical"]
_BUILTIN_PACKAGE = "serve_drift.tools"
_BUILTIN_DIR = "scenarios"


class ScenarioError(ServeDriftError, ValueError):
    """A scenario file that is missing, not YAML, or not a valid scenario."""

    code = "invalid_scenario"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorruptionSpec(_Frozen):
    """Which corruption a phase applies, how strongly, and to what share of its images."""

    name: str
    severity: int = Field(ge=1, le=5)
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        get_corruption(name)  # the error lists the valid names
        return name

    @model_validator(mode="after")
    def _options(self) -> CorruptionSpec:
        unknown = set(self.options) - set(CORRUPTIONS[self.name].options)
        if unknown:
            raise ValueError(f"{self.name} has no options {sorted(unknown)}")
        return self

    def describe(self) -> str:
        share = "" if self.fraction == 1.0 else f", {self.fraction:.0%} of images"
        return f"{self.name} s{self.severity}{share}"


class AlertExpectation(_Frozen):
    """An alert the phase must raise: at least ``severity``, of ``rule`` when named, opened by
    the phase's ``within_windows``-th window when given."""

    severity: Severity = "warning"
    rule: str | None = None
    within_windows: int | None = Field(None, ge=1)


class Expectations(_Frozen):
    """What must hold for a phase; ``None`` fields are not checked (clean phases default to
    ``no_false_alarms`` and ``no_alerts``)."""

    detect_within_windows: int | None = Field(None, ge=1)
    detect_within_s: float | None = Field(None, gt=0)
    no_false_alarms: bool | None = None
    no_alerts: bool | None = None
    alert: AlertExpectation | None = None
    max_rejected: int | None = Field(None, ge=0)
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    max_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    min_sentinel_accuracy: float | None = Field(None, ge=0.0, le=1.0)


class Phase(_Frozen):
    """Traffic at ``rate_per_s`` for ``duration_s`` seconds, or for ``windows`` of the
    endpoint's window size (read from it when the drill starts)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.]{1,32}$")
    rate_per_s: float = Field(gt=0, le=10_000)
    duration_s: float | None = Field(None, gt=0, le=86_400)
    windows: float | None = Field(None, gt=0, le=10_000)
    corruption: CorruptionSpec | None = None
    expect: Expectations = Field(default_factory=Expectations)

    @model_validator(mode="after")
    def _one_length(self) -> Phase:
        if (self.duration_s is None) == (self.windows is None):
            raise ValueError(f"phase {self.name!r}: give exactly one of duration_s and windows")
        return self

    @property
    def clean(self) -> bool:
        return self.corruption is None

    def requests(self, *, window_size: int) -> int:
        if self.windows is not None:
            return max(1, round(self.windows * window_size))
        assert self.duration_s is not None
        return max(1, round(self.duration_s * self.rate_per_s))

    def checks(self) -> Expectations:
        """The expectations with the clean-phase defaults filled in."""
        expect = self.expect
        defaults = {"no_false_alarms": self.clean, "no_alerts": self.clean}
        return expect.model_copy(
            update={k: v for k, v in defaults.items() if getattr(expect, k) is None}
        )


class ImageSource(_Frozen):
    """``embedded`` (the digits traffic pool, with labels) or a ``folder``/manifest ``path``
    (labels optional: without them no accuracy is measured and no labels are sent)."""

    source: Literal["embedded", "folder"] = "embedded"
    path: str | None = None
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _path(self) -> ImageSource:
        if (self.source == "folder") != (self.path is not None):
            raise ValueError("images: a folder source needs a path, and only it")
        return self


class SentinelSpec(_Frozen):
    """A sentinel set run after every phase (its requests stay out of drift windows)."""

    set: str = "embedded"
    count: int | None = Field(None, ge=1)


class Scenario(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    images: ImageSource = Field(default_factory=ImageSource)
    phases: tuple[Phase, ...] = Field(min_length=1)
    seed: int = Field(0, ge=0)
    concurrency: int = Field(8, ge=1, le=256)
    detector: str | None = None
    labels: bool = True
    sentinel: SentinelSpec | None = None
    settle_timeout_s: float = Field(90.0, gt=0)

    @model_validator(mode="after")
    def _unique_phases(self) -> Scenario:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        return self


def builtin_scenarios() -> dict[str, Path]:
    """The scenarios shipped with the package, by name."""
    folder = resources.files(_BUILTIN_PACKAGE) / _BUILTIN_DIR
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml")
    }


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name, or a scenario file."""
    builtin = builtin_scenarios()
    path = builtin.get(str(name_or_path)) or Path(name_or_path)
    if not path.is_file():
        raise ScenarioError(
            f"no scenario file {str(name_or_path)!r}; built-in: {', '.join(builtin)}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not YAML ({exc})") from exc
    return parse_scenario(data, where=str(path))


def parse_scenario(data: Any, *, where: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{where}: {exc}") from exc
    except ServeDriftError as exc:  # an unknown corruption name, with the valid ones
        raise ScenarioError(f"{where}: {exc}") from exc
