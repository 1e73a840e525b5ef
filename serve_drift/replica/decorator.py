"""The ``@monitored`` decorator: one line that adds drift monitoring to a Serve deployment."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from serve_drift.config import DriftConfig
from serve_drift.replica.batched import Outcome, answer_batch
from serve_drift.replica.runtime import ReplicaMonitor
from serve_drift.request_context import BATCH_METHOD, BatchedRequest
from serve_drift.telemetry.setup import shutdown_telemetry

T = TypeVar("T")
_RUNTIME_ATTR = "_serve_drift"
MONITOR_KWARG = "drift_monitor"


def _as_config(config: DriftConfig | Mapping[str, Any] | None) -> DriftConfig:
    if isinstance(config, DriftConfig):
        return config
    return DriftConfig.model_validate(dict(config or {}))


def monitored(
    config: DriftConfig | Mapping[str, Any] | None = None, *, methods: Sequence[str] = ("__call__",)
) -> Callable[[T], T]:
    """Add drift monitoring to a deployment class (or to a ``serve.deployment`` object).

    The class keeps its own handlers; each named method gets a request span, embedding capture
    in the model's own forward pass, and off-path shipping to the app's drift monitor. The
    class also gets ``serve_drift_batch(items, timeout_s)``, through which a shadow router's
    comparator sends many copies in one handle call; each goes through ``__call__`` as if it
    had come alone (:mod:`serve_drift.replica.batched`). A class that defines its own keeps it.

    >>> import torch
    >>> from serve_drift import monitored
    >>> @monitored({"model_name": "tiny"})
    ... class Tiny:
    ...     def __init__(self):
    ...         self.model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    ...     async def __call__(self, x):
    ...         return self.model(x).argmax(-1).tolist()
    >>> Tiny.serve_drift_config.model_name
    'tiny'
    """
    resolved = _as_config(config)

    def decorate(target: Any) -> Any:
        if _is_deployment(target):
            wrapped = _wrap_class(target.func_or_class, resolved, methods)
            return target.options(func_or_class=wrapped)
        if not isinstance(target, type):
            raise TypeError("@monitored decorates a deployment class or a serve.deployment")
        return _wrap_class(target, resolved, methods)

    return decorate


def _is_deployment(target: object) -> bool:
    try:
        from ray.serve import Deployment
    except ImportError:
        return False
    return isinstance(target, Deployment)


def _wrap_class(cls: type, config: DriftConfig, methods: Sequence[str]) -> type:
    missing = [name for name in methods if not callable(getattr(cls, name, None))]
    if missing:
        raise TypeError(f"@monitored: {cls.__name__} has no method(s) {', '.join(missing)}")
    namespace: dict[str, Any] = {
        "__init__": _wrap_init(cls),
        "serve_drift_config": config,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    namespace["__del__"] = _wrap_del(cls)
    if not hasattr(cls, BATCH_METHOD):
        namespace[BATCH_METHOD] = _batch_method
    namespace.update({name: _wrap_method(getattr(cls, name)) for name in methods})
    return type(cls.__name__, (cls,), namespace)


def _wrap_del(cls: Any) -> Callable[[Any], None]:
    user_del = getattr(cls, "__del__", None)

    def __del__(self: Any) -> None:
        # Serve calls __del__ before it kills a stopped replica, and no exit hook runs after:
        # export the telemetry still buffered, within its bound. Sync on purpose: an async
        # __del__ called by the garbage collector would leave a coroutine never awaited.
        try:
            if user_del is not None:
                user_del(self)
        finally:
            with contextlib.suppress(Exception):
                shutdown_telemetry()

    return __del__


def _wrap_init(cls: Any) -> Callable[..., None]:
    @functools.wraps(cls.__init__)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        monitor_handle = kwargs.pop(MONITOR_KWARG, None)
        cls.__init__(self, *args, **kwargs)
        setattr(
            self,
            _RUNTIME_ATTR,
            ReplicaMonitor(
                instance=self, config=type(self).serve_drift_config, monitor_handle=monitor_handle
            ),
        )

    return __init__


def _wrap_method(method: Callable[..., Any]) -> Callable[..., Any]:
    is_async = inspect.iscoroutinefunction(method)  # once, not per request

    @functools.wraps(method)
    async def monitored_method(self: Any, *args: Any, **kwargs: Any) -> Any:
        runtime: ReplicaMonitor = getattr(self, _RUNTIME_ATTR)
        return await runtime.handle(
            functools.partial(method, self), args, kwargs, is_async=is_async
        )

    return monitored_method


async def _batch_method(
    self: Any, items: Sequence[BatchedRequest], timeout_s: float
) -> list[Outcome]:
    """Answer many requests (shadow copies) in one handle call, each through ``__call__``
    under its own IDs, within ``timeout_s``; one outcome per item, in order."""
    return await answer_batch(self.__call__, items, timeout_s=timeout_s)


def replica_monitor(instance: object) -> ReplicaMonitor:
    """The serve-drift state of a monitored deployment instance (for tests and health checks)."""
    runtime: ReplicaMonitor = getattr(instance, _RUNTIME_ATTR)
    return runtime
