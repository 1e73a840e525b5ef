"""Shadow and canary: a router in front of two ordinary monitored apps, and their comparison.

- :mod:`~serve_drift.routing.router`: the router deployment (mirror, canary, labels, admin);
- :mod:`~serve_drift.routing.comparator`: windows of paired answers, decisions, routing state;
- :mod:`~serve_drift.routing.app`: ``build_app``, the Serve application builder.
"""

from serve_drift.routing.app import build_app
from serve_drift.routing.config import (
    ArmConfig,
    CanaryConfig,
    ComparisonConfig,
    DecisionConfig,
    MirrorConfig,
    RouterConfig,
    RouterUpdate,
)
from serve_drift.routing.decision import Decision, decide

__all__ = [
    "ArmConfig",
    "CanaryConfig",
    "ComparisonConfig",
    "Decision",
    "DecisionConfig",
    "MirrorConfig",
    "RouterConfig",
    "RouterUpdate",
    "build_app",
    "decide",
]
