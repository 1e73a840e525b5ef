"""The shadow report, routing changes and change answers as text tables (``serve-drift shadow``
and the shadow demo print them)."""

from __future__ import annotations

import time
from typing import Any

_PERCENT = "{:.1%}"


def _num(value: float | None, spec: str = "{:.3f}") -> str:
    return "-" if value is None else spec.format(value)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:+.1f}"


def _flips(flips: list[list[int]], top: int = 2) -> str:
    return ", ".join(f"{a}->{b} x{n}" for a, b, n in flips[:top]) or "-"


def _drift(drift: dict[str, Any]) -> str:
    def one(arm: str) -> str:
        d = drift.get(arm)
        if not d or not d.get("available", True):
            return "?"
        return "ALARM" if d["alarm"] else f"{d['drifting']}/{d['windows']}"

    return f"{one('incumbent')} {one('candidate')}"


WINDOW_HEADER = (
    f"{'win':>4} {'ep':>3} {'pairs':>5} {'agree':>6} {'conf d':>7} {'acc inc':>7} "
    f"{'acc cand':>8} {'p50 d ms':>8} {'p99 d ms':>8} {'c.fail':>6} {'drift i c':>9}  flips (most)"
)


def format_window(w: dict[str, Any]) -> str:
    """One window as a table row; drift is each arm's drifting/tested windows of its own
    monitor, or ALARM."""
    arms, deltas = w["arms"], w["deltas"]
    candidate = arms["candidate"]
    return (
        f"{w['index']:>4} {w['epoch']:>3} {w['pairs']:>5} {_num(w['agreement']):>6} "
        f"{_num(deltas['mean_confidence'], '{:+.3f}'):>7} "
        f"{_num(arms['incumbent']['accuracy'], _PERCENT):>7} "
        f"{_num(candidate['accuracy'], _PERCENT):>8} {_ms(deltas['latency_p50_s']):>8} "
        f"{_ms(deltas['latency_p99_s']):>8} {sum(candidate['failures'].values()):>6} "
        f"{_drift(w.get('drift', {})):>9}  {_flips(w['flips'])}"
    )


def shown_windows(windows: list[dict[str, Any]], *, epoch: int | None) -> list[dict[str, Any]]:
    """The current epoch's windows, or the latest epoch's that has any."""
    if not windows:
        return []
    wanted = epoch if any(w["epoch"] == epoch for w in windows) else windows[-1]["epoch"]
    return [w for w in windows if w["epoch"] == wanted]


def format_report(body: dict[str, Any]) -> str:
    lines = []
    epoch = body["state"]["epoch"] if "state" in body else None
    if "state" in body:
        lines.append(_routing_line(body))
    windows = body.get("windows", [])
    shown = shown_windows(windows, epoch=epoch)
    lines += [WINDOW_HEADER, *(format_window(w) for w in shown)]
    if len(shown) < len(windows):
        lines.append(f"({len(windows) - len(shown)} windows of other epochs: --format json)")
    decision = body.get("decision")
    if decision is not None:
        lines += ["", f"decision: {decision['verdict'].upper()}"]
        lines += [f"  {c['status']:<7} {c['name']:<17} {c['detail']}" for c in decision["checks"]]
    if body.get("changes"):
        lines += ["", format_history({"changes": body["changes"][-3:]})]
    return "\n".join(lines)


def _routing_line(body: dict[str, Any]) -> str:
    state, routing = body["state"], body.get("routing", {})
    where = f"all to the {state['route_all_to']}" if state["route_all_to"] else "as configured"
    mode = routing.get("mode", "?")
    split = (
        f"mirror {routing.get('mirror_fraction', 0):.0%}"
        if mode == "shadow"
        else f"canary share {routing.get('canary_share', 0):.0%}"
    )
    name = body.get("name", "?")
    return f"router {name}: traffic {where} (mode {mode}, {split}), epoch {state['epoch']}"


def format_history(body: dict[str, Any]) -> str:
    lines = [f"{'when':<20} {'action':<9} {'actor':<6} {'verdict':<9} {'epoch':>5}  reason"]
    for change in body.get("changes", []):
        lines.append(
            f"{_time(change['at']):<20} {change['action']:<9} {change['actor']:<6} "
            f"{change.get('verdict') or '-':<9} {change['after']['epoch']:>5}  {change['reason']}"
        )
        lines += [f"{'':<22}{_arm_line(arm)}" for arm in change.get("arms", [])]
    return "\n".join(lines)


def _arm_line(arm: dict[str, Any]) -> str:
    reference = arm.get("reference_hash") or "?"
    return (
        f"{arm['arm']:<9} {arm['app']}: model {arm.get('model_version') or '?'}, "
        f"reference {arm.get('reference_version') or '?'} ({reference})"
    )


def format_change(body: dict[str, Any]) -> str:
    if body.get("applied"):
        return f"applied: {body['detail']} (epoch {body['state']['epoch']})"
    reasons = "".join(f"\n  - {r}" for r in body.get("reasons", []))
    return f"not applied: {body.get('detail', '')}{reasons}"


def _time(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
