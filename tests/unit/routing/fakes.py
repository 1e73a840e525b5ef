"""Stand-ins for Ray Serve handles, so the router and the comparator run without Ray."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from starlette.responses import JSONResponse

Behaviour = Callable[[Any], Awaitable[Any]]


class FakeResponse:
    """Like a DeploymentResponse: awaitable, cancellable."""

    def __init__(self, coroutine: Awaitable[Any]) -> None:
        self._task = asyncio.ensure_future(coroutine)
        self.cancelled = False

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    def cancel(self) -> None:
        self.cancelled = True
        self._task.cancel()


class FakeMethod:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[Any, ...]] = []
        self.responses: list[FakeResponse] = []

    def remote(self, *args: Any) -> FakeResponse:
        self.calls.append(args)
        response = FakeResponse(self.behaviour(*args))
        self.responses.append(response)
        return response


class FakeArm:
    """An arm's app handle: ``remote(request)`` runs ``behaviour(request)``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.call = FakeMethod(behaviour)

    def remote(self, request: Any) -> FakeResponse:
        return self.call.remote(request)

    @property
    def requests(self) -> list[Any]:
        return [args[0] for args in self.call.calls]


def answering(class_index: int, version: str) -> Behaviour:
    async def behaviour(request: Any) -> JSONResponse:
        if request.url.path.endswith("healthz"):
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {"class_index": class_index, "confidence": 0.9, "model_version": version}
        )

    return behaviour


class FakeComparator:
    """Records what the router sends; answers a configurable routing state."""

    def __init__(self) -> None:
        from serve_drift.routing.messages import RoutingState

        self.state = RoutingState()
        self.observations: list[Any] = []
        self.copies: list[Any] = []
        self.labels: list[Any] = []
        self.changes: list[Any] = []
        self.mirror_delay_s = 0.0

        async def ingest(batch: list[Any]) -> int:
            self.observations.extend(batch)
            return len(batch)

        async def mirror(batch: list[Any]) -> int:
            await asyncio.sleep(self.mirror_delay_s)
            self.copies.extend(batch)
            return len(batch)

        async def routing_state() -> Any:
            return self.state

        async def submit_labels(labels: list[Any]) -> int:
            self.labels.extend(labels)
            return len(labels)

        async def change(request: Any) -> Any:
            from serve_drift.routing.changes import ChangeAnswer
            from serve_drift.routing.messages import RoutingState

            self.changes.append(request)
            target = {"promote": "candidate", "rollback": request.target}.get(request.action)
            self.state = RoutingState(target, self.state.epoch + 1, 1.0)
            return ChangeAnswer(True, self.state, "applied")

        self.ingest = FakeMethod(ingest)
        self.mirror = FakeMethod(mirror)
        self.routing_state = FakeMethod(routing_state)
        self.submit_labels = FakeMethod(submit_labels)
        self.change = FakeMethod(change)
