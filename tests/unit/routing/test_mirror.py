"""The mirror never makes the request path wait: a slow, failing or hanging candidate only
fills its bounded queue, and every copy ends in a counted outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from serve_drift.routing.mirror import MirrorQueue, MirrorTimeout


def _one_by_one(call: Any) -> Any:
    """A per-job ``call`` as the queue's ``call(jobs)``, for queues of batch size 1."""

    async def calls(jobs: list[int]) -> list[Any]:
        return [await call(job) for job in jobs]

    return calls


def _queue(call: Any, outcomes: list[Any], **options: Any) -> MirrorQueue[int]:
    settings = {"queue_size": 4, "max_in_flight": 2, "timeout_s": 1.0, **options}
    return MirrorQueue(
        call=_one_by_one(call),
        done=lambda job, outcome: outcomes.append((job, outcome)),
        **settings,
    )


def test_offers_to_a_hanging_candidate_return_at_once_and_drop_beyond_the_bound() -> None:
    async def run() -> tuple[list[bool], float, Any, list[Any]]:
        release = asyncio.Event()

        async def hang(job: int) -> str:
            await release.wait()
            return "late"

        outcomes: list[Any] = []
        queue = _queue(hang, outcomes, timeout_s=30.0)
        started = time.perf_counter()
        accepted = []
        for i in range(20):
            accepted.append(queue.offer(i))
            await asyncio.sleep(0)  # let the workers take what they can
        offering_s = time.perf_counter() - started
        release.set()
        await queue.drain()
        await queue.stop()
        return accepted, offering_s, queue.counts, outcomes

    accepted, offering_s, counts, outcomes = asyncio.run(run())
    assert sum(accepted) == 6  # two at the candidate, four waiting
    assert counts["sent"] == 6 and counts["dropped_queue_full"] == 14
    assert len(outcomes) == 6 and {o for _, o in outcomes} == {"late"}
    assert offering_s < 1.0  # twenty offers, none waited for the hanging candidate


def test_a_call_that_outlives_the_timeout_is_cancelled_and_recorded() -> None:
    cancelled: list[int] = []

    async def run() -> list[Any]:
        async def hang(job: int) -> str:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(job)
                raise
            return "never"

        outcomes: list[Any] = []
        queue = _queue(hang, outcomes, timeout_s=0.05)
        queue.offer(1)
        await queue.drain()
        await queue.stop()
        return outcomes

    ((job, outcome),) = asyncio.run(run())
    assert job == 1 and isinstance(outcome, MirrorTimeout) and cancelled == [1]


def test_a_raising_candidate_and_a_failing_recorder_do_not_stop_the_workers() -> None:
    async def run() -> list[Any]:
        async def call(job: int) -> str:
            if job % 2:
                raise RuntimeError(f"candidate failed on {job}")
            return f"ok {job}"

        seen: list[Any] = []

        def done(job: int, outcome: Any) -> None:
            if job == 0:
                raise ValueError("recorder broke")
            seen.append(outcome)

        queue: MirrorQueue[int] = MirrorQueue(
            queue_size=10, max_in_flight=1, timeout_s=1.0, call=_one_by_one(call), done=done
        )
        for i in range(4):
            queue.offer(i)
        await queue.drain()
        await queue.stop()
        return seen

    seen = asyncio.run(run())
    assert [type(o).__name__ if isinstance(o, Exception) else o for o in seen] == [
        "RuntimeError",
        "ok 2",
        "RuntimeError",
    ]


async def _batched(call: Any, jobs: int, **options: Any) -> list[Any]:
    """Offer ``jobs`` jobs to a one-worker batching queue; (job, outcome) once all are done."""
    outcomes: list[Any] = []
    queue = MirrorQueue(
        max_in_flight=1,
        call=call,
        done=lambda job, outcome: outcomes.append((job, outcome)),
        **{"queue_size": 20, "timeout_s": 1.0, **options},
    )
    for i in range(jobs):
        queue.offer(i)
    await queue.drain()
    await queue.stop()
    return outcomes


def test_a_worker_takes_what_is_waiting_up_to_the_batch_size_in_one_call() -> None:
    calls: list[list[int]] = []

    async def call(jobs: list[int]) -> list[str]:
        calls.append(list(jobs))
        return [f"ok {job}" for job in jobs]

    outcomes = asyncio.run(_batched(call, 19, batch_size=8))
    assert calls == [list(range(8)), list(range(8, 16)), [16, 17, 18]]
    assert outcomes == [(i, f"ok {i}") for i in range(19)]


def test_a_batch_call_that_fails_or_miscounts_is_every_jobs_outcome() -> None:
    async def raises(jobs: list[int]) -> list[str]:
        raise RuntimeError("candidate down")

    async def hangs(jobs: list[int]) -> list[str]:
        await asyncio.sleep(60)
        return []

    async def miscounts(jobs: list[int]) -> list[str]:
        return ["one"]

    def outcomes(call: Any) -> list[Any]:
        return [o for _, o in asyncio.run(_batched(call, 3, batch_size=4, timeout_s=0.05))]

    assert [type(o).__name__ for o in outcomes(raises)] == ["RuntimeError"] * 3
    assert [type(o).__name__ for o in outcomes(hangs)] == ["MirrorTimeout"] * 3
    assert [str(o) for o in outcomes(miscounts)] == ["1 outcomes for 3 copies"] * 3
