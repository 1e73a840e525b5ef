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
    """An arm's app handle: ``remote(request)`` runs ``behaviour(request)``.

    With ``batches=True`` it also takes many copies in one call, as a ``@monitored``
    deployment does (``options(method_name="serve_drift_batch")``, answered by the real
    :func:`~serve_drift.replica.batched.answer_batch` over ``behaviour``); without, that call
    fails as Ray Serve fails a call of a method the deployment does not have.
    """

    def __init__(self, behaviour: Behaviour, *, batches: bool = False) -> None:
        self.call = FakeMethod(behaviour)
        self.batch = FakeMethod(self._batch if batches else _no_such_method)

    def remote(self, request: Any) -> FakeResponse:
        return self.call.remote(request)

    def options(self, *, method_name: str) -> FakeMethod:
        assert method_name == "serve_drift_batch"
        return self.batch

    async def _batch(self, items: list[Any], timeout_s: float) -> list[Any]:
        from serve_drift.replica.batched import answer_batch

        self.call.calls.extend((item.request,) for item in items)
        return await answer_batch(self.call.behaviour, items, timeout_s=timeout_s)

    @property
    def batched_ids(self) -> list[tuple[str, str]]:
        """(correlation ID, internal ID) of every copy that came in a batch call."""
        return [(i.ids.correlation_id, i.ids.internal_id) for c in self.batch.calls for i in c[0]]

    @property
    def requests(self) -> list[Any]:
        return [args[0] for args in self.call.calls]


async def _no_such_method(*args: Any) -> Any:
    raise RuntimeError(
        "Tried to call a method 'serve_drift_batch' that does not exist. Available methods: []."
    )


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
