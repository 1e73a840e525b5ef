"""Which arm answers a request: sticky canary assignment and mirror sampling, by hash.

A key (a caller header, a caller-context value, or the correlation ID) hashes to a point in
[0, 1); the candidate takes the keys below the share. The same key always lands on the same
arm, and raising the share only moves callers from the incumbent to the candidate (never
back), so a caller who saw the candidate keeps seeing it while a canary widens.

>>> unit_interval("camera-7", salt="canary") == unit_interval("camera-7", salt="canary")
True
>>> takes_candidate("camera-7", share=0.0, salt=""), takes_candidate("camera-7", share=1.0, salt="")
(False, True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from serve_drift.request_context import CONTEXT_PREFIX
from serve_drift.routing.config import CanaryKey, RouterConfig
from serve_drift.routing.messages import RoutingState

_SCALE = float(1 << 64)


def unit_interval(key: str, *, salt: str) -> float:
    """A uniform point in [0, 1) for ``key``, different for each ``salt``."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=_person(salt)).digest()
    return int.from_bytes(digest, "big") / _SCALE


def _person(salt: str) -> bytes:
    # blake2b's personalisation is at most 16 bytes: longer salts are hashed down first.
    raw = salt.encode("utf-8")
    return raw if len(raw) <= 16 else hashlib.blake2b(raw, digest_size=16).digest()


def takes_candidate(key: str, *, share: float, salt: str) -> bool:
    """Whether the candidate answers the caller with ``key`` at this canary share."""
    return share > 0 and unit_interval(key, salt=f"canary{salt}") < share


def mirrored(correlation_id: str, *, fraction: float, salt: str = "") -> bool:
    """Whether a shadow-mode request is also sent to the candidate (by its correlation ID,
    so a retried request with the same ID is mirrored or not alike)."""
    if fraction >= 1:
        return True
    return fraction > 0 and unit_interval(correlation_id, salt=f"mirror{salt}") < fraction


def caller_key(key: CanaryKey, *, headers: Mapping[str, str], correlation_id: str) -> str:
    """The value canary assignment hashes for this request; the correlation ID when the
    configured header is absent, so a request is never refused for lacking it."""
    name = key.header or (f"{CONTEXT_PREFIX}{key.context}" if key.context else None)
    value = headers.get(name.lower()) if name else None
    return f"key:{value}" if value else f"id:{correlation_id}"


@dataclass(frozen=True)
class Route:
    """Where one request goes: the arm that answers it, and whether a copy is mirrored."""

    serve: str
    mirror: bool
    mode: str  # "shadow", "canary", or "routed" (all traffic to one arm)


def route_for(
    config: RouterConfig,
    state: RoutingState,
    *,
    correlation_id: str,
    headers: Mapping[str, str],
) -> Route:
    """The route of one request: a promotion or rollback overrides the configured mode.

    >>> from serve_drift.routing.messages import RoutingState
    >>> config = RouterConfig(incumbent={"app": "a"}, candidate={"app": "b"})
    >>> route_for(config, RoutingState(), correlation_id="r1", headers={})
    Route(serve='incumbent', mirror=True, mode='shadow')
    >>> route_for(config, RoutingState(route_all_to="candidate", epoch=1),
    ...           correlation_id="r1", headers={})
    Route(serve='candidate', mirror=False, mode='routed')
    """
    if state.route_all_to is not None:
        return Route(serve=state.route_all_to, mirror=False, mode="routed")
    if config.mode == "shadow":
        mirror = mirrored(correlation_id, fraction=config.mirror.fraction, salt=config.canary.salt)
        return Route(serve="incumbent", mirror=mirror, mode="shadow")
    key = caller_key(config.canary.key, headers=headers, correlation_id=correlation_id)
    candidate = takes_candidate(key, share=config.canary.share, salt=config.canary.salt)
    return Route(serve="candidate" if candidate else "incumbent", mirror=False, mode="canary")
