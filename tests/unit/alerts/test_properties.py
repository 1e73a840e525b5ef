"""Property tests of the incident state machine (hypothesis, stateful).

Random interleavings of windows (two detectors, random p-values and estimated accuracy), timer
ticks, maintenance started and cleared, against a suppression schedule and an inhibiting rule.
After every step:

- each (rule, scope) follows opened -> [released] -> renotified* -> resolved, one open at a time
  (dedup), and the engine's open incidents are exactly those;
- nothing is notified while maintenance is active, inside the schedule, or while the inhibiting
  rule is open for the same scope: maintenance never lets an alert through;
- an open incident that was never notified is held back by one of those, at every moment:
  once nothing holds it, it has been released;
- the ticket rule opens and resolves exactly when an independent k-of-n-with-hysteresis model
  says it should.
"""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.engine import AlertEngine
from serve_drift.alerts.incidents import Transition
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.alerts.signals import Tick
from serve_drift.alerts.suppression import schedule_active
from tests.support.alert_signals import MODEL, window

ALPHA, K, N, RESOLVE_AFTER = 0.01, 2, 3, 2
DETECTORS = ("combined", "mmd")
CONFIG = AlertsConfig.model_validate(
    {
        "sinks": [],
        "rules": [
            {
                "name": "page",
                "severity": "critical",
                "all": [
                    {"kind": "drift", "k": K, "n": N, "alpha": ALPHA},
                    {"kind": "threshold", "signal": "estimated_accuracy", "drop": 0.1},
                ],
                "resolve_after": RESOLVE_AFTER,
                "renotify_interval_s": 1800,
                "inhibits": ["ticket"],
            },
            {
                "name": "ticket",
                "all": [{"kind": "drift", "k": K, "n": N, "alpha": ALPHA}],
                "resolve_after": RESOLVE_AFTER,
                "renotify_interval_s": 3600,
            },
            {"name": "silent", "all": [{"kind": "silence", "max_gap_s": 900}]},
        ],
        "suppress": [{"name": "nightly", "start": "00:00", "end": "00:20", "rules": ["ticket"]}],
    }
)
SCHEDULE = CONFIG.suppress[0]
Key = tuple[str, tuple[tuple[str, str], ...]]


class _ReferenceKOfN:
    """An independent model of one detector's ticket incident: k of n, then hysteresis."""

    def __init__(self) -> None:
        self.p_values: list[float] = []
        self.open = False
        self.clears = 0

    def step(self, p_value: float) -> str | None:
        self.p_values.append(p_value)
        recent = self.p_values[-N:]
        active = len(recent) >= K and sum(p <= ALPHA for p in recent) >= K
        if not self.open:
            self.open = active
            return "opened" if active else None
        self.clears = 0 if active else self.clears + 1
        if self.clears >= RESOLVE_AFTER:
            self.open, self.clears = False, 0
            return "resolved"
        return None


class IncidentMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = AlertEngine(CONFIG, started_at=0.0, model_names=(MODEL,))
        self.now = 0.0
        self.index = 0
        self.maintenance: MaintenanceWindow | None = None
        self.open: dict[Key, bool] = {}  # key -> notified yet
        self.reference = {d: _ReferenceKOfN() for d in DETECTORS}

    # --- steps --------------------------------------------------------------------------------

    @rule(
        dt=st.floats(1, 600),
        p_values=st.tuples(*(st.sampled_from([0.001, 0.005, 0.03, 0.5]) for _ in DETECTORS)),
        accuracy=st.sampled_from([0.95, 0.7, None]),
    )
    def a_window(self, dt: float, p_values: tuple[float, ...], accuracy: float | None) -> None:
        self.now += dt
        signal = window(
            self.index,
            dict(zip(DETECTORS, p_values, strict=True)),
            at=self.now,
            estimated_accuracy=accuracy,
            estimated_accuracy_baseline=0.96,
        )
        self.index += 1
        transitions = self.engine.observe(signal)
        self._check(transitions)
        expected = {
            d: event for d, p in zip(DETECTORS, p_values, strict=True)
            if (event := self.reference[d].step(p))
        }  # fmt: skip
        ticket = {
            dict(t.incident.scope)["detector"]: t.kind
            for t in transitions
            if t.incident.rule == "ticket" and t.kind in ("opened", "resolved")
        }
        assert ticket == expected

    @rule(dt=st.floats(1, 7200))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self._check(self.engine.observe(Tick(at=self.now)))

    @rule(duration_s=st.floats(60, 7200))
    def maintenance_starts(self, duration_s: float) -> None:
        self.maintenance = MaintenanceWindow.starting(
            at=self.now, duration_s=duration_s, who="prop", why="test"
        )
        self._check(self.engine.set_maintenance(self.maintenance, at=self.now))

    @rule()
    def maintenance_is_cleared(self) -> None:
        self.maintenance = None
        self._check(self.engine.clear_maintenance(at=self.now, by="prop")[1])

    # --- checks -------------------------------------------------------------------------------

    def _in_maintenance(self, at: float) -> bool:
        return self.maintenance is not None and self.maintenance.active(at=at)

    def _held(self, key: Key, at: float) -> bool:
        rule_name, scope = key
        if self._in_maintenance(at):
            return True
        if rule_name == "ticket" and schedule_active(SCHEDULE, at=at):
            return True
        return rule_name == "ticket" and ("page", scope) in self.open

    def _check(self, transitions: Iterable[Transition]) -> None:
        for transition in transitions:
            assert transition.at == self.now
            key = (transition.incident.rule, transition.incident.scope)
            if transition.notify:
                assert not self._held(key, transition.at), transition
            self._follow(key, transition)

    def _follow(self, key: Key, transition: Transition) -> None:
        notified = self.open.get(key)
        if transition.kind == "opened":
            assert notified is None, f"a second open incident for {key}"
            self.open[key] = transition.notify
        elif transition.kind == "released":
            assert notified is False and transition.notify
            self.open[key] = True
        elif transition.kind == "renotified":
            assert notified is True and transition.notify
        else:
            assert notified is not None, f"resolved {key} that was not open"
            assert not transition.notify or notified
            del self.open[key]

    @invariant()
    def the_engine_holds_exactly_the_open_incidents(self) -> None:
        found = {(i.rule, i.scope) for i in self.engine.open_incidents()}
        assert found == set(self.open)

    @invariant()
    def what_was_never_notified_is_held_back_by_something(self) -> None:
        """...or is clearing: a hold that ends while the condition no longer holds releases
        nothing; the incident is notified if the condition returns, else it resolves unsent."""
        for key, notified in self.open.items():
            clearing = self.engine._live[key].clears > 0
            assert notified or self._held(key, self.now) or clearing, key


IncidentMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestIncidentStateMachine = IncidentMachine.TestCase
