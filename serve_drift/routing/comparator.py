"""The comparator deployment: one replica per shadow app, off the request path.

Router replicas ship it what each arm answered (canary:
:class:`~serve_drift.routing.messages.Observation`) and copies of the requests the incumbent
answered (shadow), which it sends to the candidate itself
(:class:`~serve_drift.routing.shadowing.ShadowCaller`). It joins labels by correlation ID,
closes windows, reads both arms' drift monitors, stores the windows, exports the comparison as
metrics, decides, and owns the routing state that promotion and rollback change (persisted
first, then polled by every router replica).

Why here and not in the monitors: this process holds both answers of a request (it sent the
copy), so pairing costs no join across two event stores. Why not in the router: a router has
several replicas and a window needs all of them; and the per-copy calls to the candidate and
the comparison's CPU stay off the processes that answer clients (this deployment runs at a
lower CPU priority, like the drift monitor: under contention, shadowing waits, serving does not).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from serve_drift import _env
from serve_drift.monitor.deployment import _lower_priority as lower_priority
from serve_drift.routing.aio import within
from serve_drift.routing.changes import ChangeAnswer, ChangeRefused, ChangeRequest, next_state
from serve_drift.routing.comparison import Comparison
from serve_drift.routing.config import RouterConfig
from serve_drift.routing.decision import Decision, Evidence, decide
from serve_drift.routing.drift import UNAVAILABLE, ArmDrift, summarize_drift
from serve_drift.routing.evidence import ShadowReport, build_evidence, evidence_windows
from serve_drift.routing.instruments import ATTR_ROUTER, VERDICT_VALUES, comparator_instruments
from serve_drift.routing.messages import (
    ArmLineage,
    MirrorCopy,
    Observation,
    RoutingChange,
    RoutingState,
)
from serve_drift.routing.shadowing import ShadowCaller
from serve_drift.routing.store import ComparisonStore
from serve_drift.routing.windows import ComparisonWindows, WindowRecord

logger = logging.getLogger(__name__)

DRIFT_RESULTS = 500  # the monitors' latest results read per decision
REPORT_WINDOWS = 20


def default_store_path(name: str) -> Path:
    return _env.cache_dir() / "shadow" / f"{name}.sqlite"


class ShadowComparator:
    """Serve deployment body; see :func:`serve_drift.routing.app.build_app`."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = RouterConfig.model_validate(dict(config))
        lower_priority(self._config.comparison.niceness)
        if self._config.telemetry.configure_sdk:
            from serve_drift.telemetry.setup import configure_telemetry

            configure_telemetry(service_name=f"{self._config.name}-comparator")
        path = self._config.comparison.path
        self._store = ComparisonStore(Path(path) if path else default_store_path(self._config.name))
        name = self._config.name
        self._state = self._store.routing_state(name)
        self._restored = self._store.windows(name, limit=self._config.comparison.windows_kept)
        self._windows = ComparisonWindows(
            window_size=self._config.comparison.window_size,
            windows_kept=self._config.comparison.windows_kept,
            next_index=self._store.next_window_index(name),
        )
        self._monitors: dict[str, Any] = {}
        self._shadow = ShadowCaller(
            app=self._config.candidate.app,
            config=self._config.mirror,
            router=name,
            observe=self._observe,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._change_lock = asyncio.Lock()
        self._instruments = comparator_instruments()
        self._attributes = {ATTR_ROUTER: name}

    # --- from the routers -----------------------------------------------------------------

    async def ingest(self, observations: Sequence[Observation]) -> int:
        """Take a router replica's batch; closed windows are finished in the background."""
        for observation in observations:
            self._observe(observation)
        return len(observations)

    async def mirror(self, copies: Sequence[MirrorCopy]) -> int:
        """Take a router replica's shadow copies, to send to the candidate (bounded: a copy
        that meets a full queue is dropped and counted)."""
        for copy in copies:
            self._shadow.offer(copy)
        return len(copies)

    def _observe(self, observation: Observation) -> None:
        for record in self._windows.add(observation, epoch=self._state.epoch):
            self._spawn(self._finish(record))

    async def submit_labels(self, labels: Sequence[tuple[str, int]]) -> int:
        """Join labels the arms accepted; returns how many joined a request kept here."""
        updated: dict[int, WindowRecord] = {}
        joined = 0
        for correlation_id, label in labels:
            record = self._windows.label(correlation_id, label)
            if record is not None:
                joined += 1
                updated[record.index] = record
        closed = [r for r in updated.values() if r.closed_at is not None]
        if closed:  # the open window is stored when it closes
            await asyncio.to_thread(self._save, closed)
        return joined

    async def routing_state(self) -> RoutingState:
        return self._state

    # --- reports and changes ----------------------------------------------------------------

    async def report(self) -> ShadowReport:
        _, decision = await self._decide()
        changes = await asyncio.to_thread(self._store.changes, self._config.name, limit=10)
        return ShadowReport(
            name=self._config.name,
            generated_at=time.time(),
            state=self._state,
            decision=decision,
            windows=tuple(self._records()[-REPORT_WINDOWS:]),
            changes=tuple(changes),
            store_path=str(self._store.path),
            mirror={**self._shadow.outcomes, "pending": self._shadow.pending()},
        )

    async def history(self, limit: int = 50) -> list[RoutingChange]:
        return await asyncio.to_thread(self._store.changes, self._config.name, limit=limit)

    async def change(self, request: ChangeRequest) -> ChangeAnswer:
        """Apply a promotion, rollback or resumption: recorded in the store before it takes
        effect (a change that cannot be recorded is not made)."""
        async with self._change_lock:
            _, decision = await self._decide()
            try:
                state = next_state(
                    request,
                    state=self._state,
                    decision=decision,
                    has_fallback=self._config.fallback is not None,
                    now=time.time(),
                )
            except ChangeRefused as refused:
                return ChangeAnswer(False, self._state, str(refused), refused.code, None, decision)
            change = await self._record_change(request, state, decision)
            return ChangeAnswer(True, state, f"traffic: {_where(state)}", None, change, decision)

    async def _record_change(
        self, request: ChangeRequest, state: RoutingState, decision: Decision
    ) -> RoutingChange:
        change = RoutingChange(
            change_id=uuid.uuid4().hex,
            at=state.changed_at or time.time(),
            action=request.action,
            actor=request.actor,
            reason=request.reason[:500],
            before=self._state,
            after=state,
            verdict=decision.verdict,
            evidence={
                **decision.evidence.to_dict(),
                "checks": [c.to_dict() for c in decision.checks],
            },
            arms=await self._lineage(),
        )
        await asyncio.to_thread(self._store.add_change, self._config.name, change)
        self._state = state
        closed = self._windows.close_open(now=change.at)
        if closed is not None:
            self._spawn(self._finish(closed))
        self._instruments.changes.add(
            1, {**self._attributes, "action": request.action, "actor": request.actor}
        )
        logger.warning("serve-drift: %s by %s: %s", request.action, request.actor, _where(state))
        return change

    # --- windows ----------------------------------------------------------------------------

    async def _finish(self, record: WindowRecord) -> None:
        versions = {"incumbent": record.incumbent_version, "candidate": record.candidate_version}
        drift = await self._drift(since=record.opened_at, versions=versions)
        record = self._windows.set_drift(record.index, drift) or record
        try:
            await asyncio.to_thread(self._save, [record])
        except Exception as exc:
            logger.warning("serve-drift: comparison window %d not stored: %s", record.index, exc)
        self._export(record.comparison)
        _, decision = await self._decide()
        if decision.verdict == "rollback" and self._config.decision.auto_rollback:
            await self._auto_rollback(decision)

    async def _auto_rollback(self, decision: Decision) -> None:
        if self._state.route_all_to is not None:
            return  # already routed by hand or by an earlier rollback
        reason = "; ".join(decision.reasons)
        await self.change(ChangeRequest("rollback", actor="auto", reason=reason))

    def _save(self, records: Sequence[WindowRecord]) -> None:
        for record in records:
            self._store.save_window(self._config.name, record)

    def _records(self) -> list[WindowRecord]:
        """Every window known, oldest first: restored from the store, then this process's."""
        live = self._windows.closed_records()
        open_record = self._windows.open_record()
        if open_record is not None:
            live.append(open_record)
        first_live = live[0].index if live else None
        restored = [r for r in self._restored if first_live is None or r.index < first_live]
        return [*restored, *live]

    async def _decide(self) -> tuple[Evidence, Decision]:
        criteria = self._config.decision
        windows = evidence_windows(
            self._records(), epoch=self._state.epoch, lookback=criteria.lookback_windows
        )
        versions = {
            "incumbent": windows[-1].incumbent_version if windows else None,
            "candidate": windows[-1].candidate_version if windows else None,
        }
        since = windows[0].opened_at if windows else None
        drift = await self._drift(since=since, versions=versions) if windows else {}
        evidence = build_evidence(
            windows, epoch=self._state.epoch, mode=self._config.mode, drift=drift
        )
        decision = decide(evidence, criteria)
        self._instruments.verdict.set(VERDICT_VALUES[decision.verdict], self._attributes)
        return evidence, decision

    # --- the arms' monitors -----------------------------------------------------------------

    async def _drift(
        self, *, since: float | None, versions: Mapping[str, str | None]
    ) -> dict[str, ArmDrift]:
        names = ("incumbent", "candidate")
        found = await asyncio.gather(
            *(self._arm_drift(arm, since=since, version=versions.get(arm)) for arm in names)
        )
        return dict(zip(names, found, strict=True))

    async def _arm_drift(self, arm: str, *, since: float | None, version: str | None) -> ArmDrift:
        try:
            results = await self._monitor_call(arm, "results", DRIFT_RESULTS)
        except Exception as exc:
            logger.info("serve-drift: the %s's drift monitor did not answer: %s", arm, exc)
            return UNAVAILABLE
        return summarize_drift(
            results,
            since=since,
            model_version=version,
            alarm_windows=self._config.decision.drift_alarm_windows,
        )

    async def _lineage(self) -> tuple[ArmLineage, ...]:
        arms = [("incumbent", self._config.incumbent), ("candidate", self._config.candidate)]
        if self._config.fallback is not None:
            arms.append(("fallback", self._config.fallback))
        return tuple(await asyncio.gather(*(self._arm_lineage(name, a.app) for name, a in arms)))

    async def _arm_lineage(self, arm: str, app: str) -> ArmLineage:
        answered = self._answered_version(arm)
        try:
            health = await self._monitor_call(arm, "health")
        except Exception:
            return ArmLineage(arm=arm, app=app, answered_version=answered)
        reference = dict(getattr(health, "reference", None) or {})
        return ArmLineage(
            arm=arm,
            app=app,
            model_name=reference.get("model_name"),
            model_version=reference.get("model_version"),
            reference_version=reference.get("version"),
            reference_hash=reference.get("content_hash"),
            answered_version=answered,
        )

    def _answered_version(self, arm: str) -> str | None:
        attr = f"{arm}_version"
        return next(
            (v for r in reversed(self._records()) if (v := getattr(r, attr, None)) is not None),
            None,
        )

    async def _monitor_call(self, arm: str, method: str, *args: Any) -> Any:
        handle = self._monitors.get(arm)
        if handle is None:
            settings = self._config.arm(arm)
            if settings is None:
                raise LookupError(f"no {arm} arm is configured")
            handle = await asyncio.to_thread(_monitor_handle, settings.app, settings.monitor)
            self._monitors[arm] = handle
        timeout_s = self._config.comparison.drift_timeout_s
        return await within(getattr(handle, method).remote(*args), timeout_s)

    # --- telemetry ----------------------------------------------------------------------------

    def _export(self, comparison: Comparison) -> None:
        ins, attrs = self._instruments, self._attributes
        pairs = comparison.pairs
        ins.pairs.add(pairs.pairs, attrs)
        for incumbent_class, candidate_class, n in pairs.flips:
            flip = {"incumbent_class": incumbent_class, "candidate_class": candidate_class}
            ins.flips.add(n, {**attrs, **flip})
        _set(ins.agreement, pairs.agreement, attrs)
        _set(ins.confidence_delta, comparison.delta("mean_confidence"), attrs)
        _set(ins.ece_delta, comparison.delta("ece"), attrs)
        _set(ins.candidate_error_rate, comparison.candidate.error_rate, attrs)
        for arm, stats in (
            ("incumbent", comparison.incumbent),
            ("candidate", comparison.candidate),
        ):
            _set(ins.accuracy, stats.accuracy, {**attrs, "serve_drift.arm": arm})
        for q in ("p50", "p99"):
            _set(ins.latency_delta, comparison.delta(f"latency_{q}_s"), {**attrs, "quantile": q})

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _set(gauge: Any, value: float | None, attributes: Mapping[str, Any]) -> None:
    if value is not None:
        gauge.set(value, dict(attributes))


def _where(state: RoutingState) -> str:
    return f"all to the {state.route_all_to}" if state.route_all_to else "as configured"


def _monitor_handle(app: str, deployment: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name=app)
