"""Span contexts rebuilt from stored IDs: for records emitted later, in their original trace.

>>> from opentelemetry import trace
>>> context = remote_span_context("ab" * 16, "cd" * 8)
>>> format(trace.get_current_span(context).get_span_context().span_id, "016x")
'cdcdcdcdcdcdcdcd'
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import Context

__all__ = ["remote_span_context"]


def remote_span_context(trace_id: str, span_id: str) -> Context:
    """A fresh context whose current span is the (finished, remote) span with these hex IDs."""
    span = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    )
    return trace.set_span_in_context(span, Context())
