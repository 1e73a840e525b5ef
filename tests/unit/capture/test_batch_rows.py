"""One forward pass for several requests (Ray Serve's ``@serve.batch``), and forward passes in
threads that did not copy the request's context (``run_in_executor``)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest
import torch
from torch import nn

from serve_drift.capture import EmbeddingCapture
from serve_drift.replica.executor import ContextCopyingExecutor, in_current_context, install_on

_BATCH: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("batch", default=None)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def _hidden(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model[1](model[0](x))


async def _batched_requests(hooks: EmbeddingCapture, model: nn.Module, n: int) -> list:
    """``n`` requests each await one shared forward pass run by a separate batch task."""
    inputs = torch.randn(n, 3)
    ready = asyncio.Event()
    captures: dict[str, object] = {}

    async def request(i: int) -> None:
        with hooks.capture(owner=f"req-{i}") as captured:
            captures[f"req-{i}"] = captured
            await ready.wait()
            await asyncio.sleep(0.05)  # the batch runs while every request waits

    async def batch() -> None:
        await asyncio.sleep(0.01)
        ready.set()
        token = _BATCH.set([f"req-{i}" for i in reversed(range(n))])  # rows in this order
        with torch.no_grad():
            model(inputs.flip(0))  # row j belongs to request n-1-j
        _BATCH.reset(token)

    await asyncio.gather(batch(), *(request(i) for i in range(n)))
    return [(captures[f"req-{i}"], inputs[i]) for i in range(n)]


def test_each_row_of_a_batched_pass_goes_to_its_request() -> None:
    model = _model()
    hooks = EmbeddingCapture(model, row_owners=_BATCH.get)
    results = asyncio.run(_batched_requests(hooks, model, 5))
    for captured, x in results:
        assert captured.error is None and captured.embeddings.shape == (1, 4)
        torch.testing.assert_close(captured.embeddings[0], _hidden(model, x).detach())
        torch.testing.assert_close(captured.logits[0], model(x).detach())


def test_a_batch_with_fewer_rows_than_requests_is_an_error_not_a_mixup() -> None:
    model = _model()
    hooks = EmbeddingCapture(model, row_owners=_BATCH.get)
    with hooks.capture(owner="a") as first, hooks.capture(owner="b") as second:
        token = _BATCH.set(["a", "b"])
        with torch.no_grad():
            model(torch.randn(1, 3))  # one row for two requests
        _BATCH.reset(token)
    assert first.embeddings is not None  # row 0 is a's
    assert second.embeddings is None and "exactly one row" in str(second.error)


def test_run_in_executor_forward_passes_are_captured_per_request() -> None:
    model = _model()
    hooks = EmbeddingCapture(model)

    async def request(x: torch.Tensor) -> tuple[object, torch.Tensor]:
        with hooks.capture() as captured:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: model(x).detach())
        return captured, x

    async def main() -> list:
        install_on(asyncio.get_running_loop())
        return await asyncio.gather(*(request(torch.randn(1, 3) * (i + 1)) for i in range(4)))

    for captured, x in asyncio.run(main()):  # each request got its own pass, none another's
        torch.testing.assert_close(captured.embeddings, _hidden(model, x).detach())


def test_without_the_executor_run_in_executor_passes_belong_to_nobody() -> None:
    """The control: the default executor does not carry the request's context."""
    model = _model()
    hooks = EmbeddingCapture(model)

    async def main() -> object:
        with hooks.capture() as captured:
            await asyncio.get_running_loop().run_in_executor(None, lambda: model(torch.ones(1, 3)))
        return captured

    assert asyncio.run(main()).embeddings is None


def test_own_executors_can_carry_the_context_with_a_wrapper() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("request")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(var.get).result() == "unset"
        assert pool.submit(in_current_context(var.get)).result() == "request"
    with ContextCopyingExecutor(max_workers=1) as pool:
        assert pool.submit(var.get).result() == "request"


@pytest.mark.parametrize("scores", ["model", "classifier"])
def test_scores_follow_the_choice(scores: str) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.body(x)) * 3.0  # e.g. a temperature: not the classifier's

    model = Scaled().eval()
    hooks = EmbeddingCapture(model, scores=scores)  # type: ignore[arg-type]
    x = torch.randn(2, 3)
    with torch.no_grad(), hooks.capture() as captured:
        output = model(x)
    expected = output if scores == "model" else model.fc(model.body(x))
    torch.testing.assert_close(captured.logits, expected)
