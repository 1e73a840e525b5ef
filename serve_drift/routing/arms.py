"""Handles to the arms: the Serve applications behind the router, by arm name."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from serve_drift.routing.config import ARM_NAMES, RouterConfig
from serve_drift.routing.forward import ReplayedRequest
from serve_drift.routing.http import RoutingError

APP_RETRY_S = 1.0


def arm_apps(config: RouterConfig) -> dict[str, str]:
    """Every configured arm's Serve application name."""
    return {name: arm.app for name in ARM_NAMES if (arm := config.arm(name)) is not None}


class ArmHandles:
    """DeploymentHandles to the arms' applications (arm name -> Serve app name), looked up on
    first use and kept; an app that is not deployed is looked up again at most every second."""

    def __init__(self, apps: Mapping[str, str]) -> None:
        self._apps = dict(apps)
        self._handles: dict[str, Any] = {}
        self._failed_at: dict[str, float] = {}

    def names(self) -> list[str]:
        return list(self._apps)

    def handle(self, arm: str) -> Any:
        found = self._handles.get(arm)
        if found is not None:
            return found
        app = self._apps.get(arm)
        if app is None:
            raise RoutingError("arm_unavailable", f"no {arm} arm is configured")
        if time.monotonic() - self._failed_at.get(arm, -APP_RETRY_S) < APP_RETRY_S:
            raise RoutingError("arm_unavailable", f"the {arm} app {app!r} is not deployed")
        try:
            found = _app_handle(app)
        except Exception:
            self._failed_at[arm] = time.monotonic()
            raise RoutingError(
                "arm_unavailable", f"the {arm} app {app!r} is not deployed"
            ) from None
        self._handles[arm] = found
        return found

    async def call(self, arm: str, request: ReplayedRequest) -> Any:
        return await self.handle(arm).remote(request)


def _app_handle(app: str) -> Any:
    from ray import serve

    return serve.get_app_handle(app)
