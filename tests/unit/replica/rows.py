"""Pending rows as the request path leaves them, for tests of the batch and the shipper."""

from __future__ import annotations

import os

import torch
from opentelemetry.trace import SpanContext, TraceFlags

from serve_drift.replica.batch import PendingRows
from serve_drift.request_context import RequestIds, RequestMarks


def pending_rows(
    *,
    rows: int = 1,
    dim: int = 4,
    classes: int | None = 3,
    marks: RequestMarks | None = None,
    embeddings: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    seed: int = 0,
) -> PendingRows:
    """A request's ``rows`` captured rows: the given tensors, else random ones."""
    generator = torch.Generator().manual_seed(seed)
    if embeddings is None:
        embeddings = torch.randn(rows, dim, generator=generator)
    if logits is None and classes is not None:
        logits = torch.randn(rows, classes, generator=generator)
    return PendingRows(
        rows=rows,
        embeddings=embeddings,
        logits=logits,
        ids=RequestIds(correlation_id=os.urandom(4).hex(), internal_id=os.urandom(8).hex()),
        marks=marks or RequestMarks(),
        latency_s=0.001,
        timestamp=1.0,
        span=SpanContext(
            trace_id=1 + seed, span_id=2 + seed, is_remote=False, trace_flags=TraceFlags(1)
        ),
    )
