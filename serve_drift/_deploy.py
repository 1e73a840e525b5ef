"""Binding a monitored deployment and its drift monitor into one Serve application."""

from __future__ import annotations

from typing import Any

from serve_drift._config import DriftConfig
from serve_drift._monitor import DriftMonitor
from serve_drift._wrap import MONITOR_KWARG


def monitor_deployment(config: DriftConfig, **options: Any) -> Any:
    """The drift monitor as a Serve deployment; ``options`` go to ``Deployment.options``.

    One replica: it owns the windows. Give it a GPU with ``ray_actor_options={"num_gpus": 1}``.
    """
    from ray import serve

    defaults: dict[str, Any] = {
        "name": config.monitor_deployment,
        "num_replicas": 1,
        "max_ongoing_requests": 256,
        "ray_actor_options": {"num_cpus": 0.5},
    }
    deployment: Any = serve.deployment(DriftMonitor)
    return deployment.options(**{**defaults, **options})


def monitored_app(
    deployment: Any, *args: Any, monitor_options: dict[str, Any] | None = None, **kwargs: Any
) -> Any:
    """``deployment.bind(*args, **kwargs)`` plus the drift monitor it ships embeddings to.

    >>> # app = monitored_app(Classifier, weights="w.pt"); serve.run(app)
    """
    config: DriftConfig | None = getattr(deployment.func_or_class, "serve_drift_config", None)
    if config is None:
        raise TypeError("monitored_app needs a deployment whose class is decorated with @monitored")
    monitor = monitor_deployment(config, **(monitor_options or {})).bind(
        config.model_dump(mode="json")
    )
    return deployment.bind(*args, **{MONITOR_KWARG: monitor}, **kwargs)
