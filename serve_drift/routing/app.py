"""The shadow / canary application: the router (its HTTP ingress) and its comparator.

``serve_drift.routing.app:build_app`` is a Serve application builder. The two arms are
ordinary monitored applications of their own (the ready-made app, or your ``monitored_app``),
deployed beside it with ``route_prefix: null``, so that clients reach them only through the
router; each keeps its own drift monitor. See ``deployments/shadow.yaml``.

>>> args = {"router": {"incumbent": {"app": "digits"}, "candidate": {"app": "digits-v2"}}}
>>> ShadowAppArgs.model_validate(args).router.mode
'shadow'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serve_drift.routing.config import RouterConfig

ROUTER_DEPLOYMENT = "ShadowRouter"
COMPARATOR_DEPLOYMENT = "ShadowComparator"
# The router holds a request while an arm answers it: allow as many as the arms take.
DEFAULT_ROUTER_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 64,
    "max_queued_requests": 128,
    "ray_actor_options": {"num_cpus": 0.5},
}
DEFAULT_COMPARATOR_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,  # it owns the windows
    "max_ongoing_requests": 256,
    "ray_actor_options": {"num_cpus": 0.25},
}


class ShadowAppArgs(BaseModel):
    """The ``args`` of the shadow app in a Serve YAML config."""

    model_config = ConfigDict(extra="forbid")

    router: RouterConfig
    deployment: dict[str, Any] = Field(default_factory=dict)  # the router's Serve options
    comparator: dict[str, Any] = Field(default_factory=dict)  # the comparator's


def build_app(args: Mapping[str, Any]) -> Any:
    """Serve application builder (``import_path: serve_drift.routing.app:build_app``).

    >>> app = build_app({"router": {"incumbent": {"app": "a"}, "candidate": {"app": "b"}}})
    >>> type(app).__name__  # deploy it with serve.run(app, name="shadow")
    'Application'
    """
    from ray import serve

    from serve_drift.routing.comparator import ShadowComparator
    from serve_drift.routing.router import ShadowRouter

    parsed = ShadowAppArgs.model_validate(dict(args))
    config = parsed.router.model_dump(mode="json")
    comparator: Any = serve.deployment(ShadowComparator)
    comparator = comparator.options(
        **{"name": COMPARATOR_DEPLOYMENT, **DEFAULT_COMPARATOR_OPTIONS, **parsed.comparator}
    )
    router: Any = serve.deployment(ShadowRouter)
    router = router.options(
        **{"name": ROUTER_DEPLOYMENT, **DEFAULT_ROUTER_OPTIONS, **parsed.deployment}
    )
    return router.bind(config, comparator.bind(config))
