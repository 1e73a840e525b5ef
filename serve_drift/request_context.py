"""What serve-drift knows about the request being handled, in context variables.

- **IDs**: the client's ``X-Request-ID`` as Ray Serve saw it (sanitised), or one of ours, beside
  an internal ID that never repeats;
- **marks**: what the handler said about each input row (flags, exclusion, input statistics);
- **caller context**: ``X-Serve-Drift-Context-*`` headers, cleaned for storage and export.

Ingress and the replica both use it; nothing here does I/O.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from serve_drift.messages import InputStats

T = TypeVar("T")
logger = logging.getLogger(__name__)

MAX_CORRELATION_ID_LENGTH = 128
_UNSAFE = re.compile(r"[^\x21-\x7e]")  # anything but printable, non-space ASCII

MAX_CONTEXT_KEYS = 16
MAX_CONTEXT_KEY_CHARS = 64
MAX_CONTEXT_VALUE_CHARS = 256
# Context keys become log attributes and CLI columns: keep them to a conservative alphabet.
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/-]")


@dataclass(frozen=True, slots=True)
class RequestIds:
    """``correlation_id`` may repeat (clients reuse IDs); ``internal_id`` never does."""

    correlation_id: str
    internal_id: str


def sanitize_correlation_id(raw: str) -> str:
    """Make a client-supplied ID safe for logs, span attributes and headers.

    >>> sanitize_correlation_id("abc\\r\\nSet-Cookie: x")
    'abc__Set-Cookie:_x'
    """
    return _UNSAFE.sub("_", raw[:MAX_CORRELATION_ID_LENGTH])


def _new_id() -> str:
    return os.urandom(16).hex()  # as random as uuid4, at a third of the cost


def _serve_request_context() -> tuple[str, str]:
    # The getter is private and empty in local testing mode or outside a request: read it
    # defensively so a Ray upgrade can only cost us the client's ID, never a request.
    getter = _request_context_getter()
    if getter is None:
        return "", ""
    try:
        ctx = getter()
        return str(ctx.request_id or ""), str(getattr(ctx, "_internal_request_id", "") or "")
    except Exception:
        return "", ""


def _ray_serve_context_getter(name: str) -> Callable[[], Any] | None:
    """A getter of ``ray.serve.context``, looked up once (it runs on every request)."""
    try:
        from ray.serve import context
    except Exception:
        return None
    getter = getattr(context, name, None)
    return getter if callable(getter) else None


@functools.cache
def _request_context_getter() -> Callable[[], Any] | None:
    return _ray_serve_context_getter("_get_serve_request_context")


@functools.cache
def _batch_context_getter() -> Callable[[], Any] | None:
    return _ray_serve_context_getter("_get_serve_batch_request_context")


def serve_batch_request_ids() -> list[str] | None:
    """Inside a ``@serve.batch`` call, the internal IDs of its requests in row order, else None.

    Ray Serve sets the batch's request contexts just before running the batched function; the
    getter is private, so it is read defensively like the single-request one (and looked up
    once: this runs in every forward pass of a monitored model)."""
    getter = _batch_context_getter()
    try:
        contexts = getter() if getter is not None else None
    except Exception:
        return None
    ids = [str(getattr(ctx, "_internal_request_id", "") or "") for ctx in contexts or ()]
    return ids if ids and all(ids) else None


# The IDs the monitoring wrapper settled on for the request being handled, so the handler sees
# the same ones even where they were generated here (Ray's context is empty in local testing).
_BOUND: ContextVar[RequestIds | None] = ContextVar("serve_drift_request_ids", default=None)


class _Scoped(Generic[T]):
    """Sets a context variable for a ``with`` block: a class, not ``@contextmanager``, because
    it runs on every monitored request and a generator costs several times more."""

    __slots__ = ("_token", "_value", "_var")

    def __init__(self, var: ContextVar[T | None], value: T) -> None:
        self._var, self._value = var, value
        self._token: Token[T | None] | None = None

    def __enter__(self) -> T:
        self._token = self._var.set(self._value)
        return self._value

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        self._var.reset(self._token)


def bind_request_ids(ids: RequestIds) -> AbstractContextManager[RequestIds]:
    """Make ``ids`` what :func:`current_request_ids` returns inside the ``with`` block."""
    return _Scoped(_BOUND, ids)


def current_request_ids() -> RequestIds:
    """IDs for the request being handled, generating whatever Ray Serve did not provide."""
    bound = _BOUND.get()
    if bound is not None:
        return bound
    request_id, internal_id = _serve_request_context()
    correlation_id = sanitize_correlation_id(request_id) if request_id else _new_id()
    return RequestIds(correlation_id=correlation_id, internal_id=internal_id or _new_id())


# --- marks -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingStats:
    """Input statistics to compute later, off the request path, and only for the rows the
    replica ships: ``summarise`` turns a list of ``item`` values (e.g. thumbnails) into one
    :class:`~serve_drift.messages.InputStats` each, in one vectorised call per batch.

    >>> stats = PendingStats(item=3, summarise=lambda items: [None for _ in items])
    >>> list(stats.summarise([stats.item]))
    [None]
    """

    item: Any
    summarise: Callable[[Sequence[Any]], Sequence[InputStats]]


@dataclass(frozen=True, slots=True)
class RowMark:
    """What the handler said about one input row of the current request."""

    flags: tuple[str, ...] = ()
    exclude_from_drift: bool = False
    input_stats: InputStats | PendingStats | None = None


@dataclass(slots=True)
class RequestMarks:
    rows: dict[int | None, RowMark] = field(default_factory=dict)
    outcome: str | None = None
    context: dict[str, str] = field(default_factory=dict)
    # A sentinel run (verified: the request carried the admin credential).
    sentinel: bool = False

    def row(self, index: int) -> RowMark:
        return self.rows.get(index) or self.rows.get(None) or _NO_MARK


_NO_MARK = RowMark()  # immutable: one for every row nothing was said about

# One mutable record per monitored request, set before the handler runs. The handler (or a
# thread started with ``asyncio.to_thread``, which copies the context) updates it in place.
_REQUEST_MARKS: ContextVar[RequestMarks | None] = ContextVar(
    "serve_drift_request_marks", default=None
)


def request_marks(
    *, context: Mapping[str, str] | None = None, sentinel: bool = False
) -> AbstractContextManager[RequestMarks]:
    """A fresh :class:`RequestMarks` that :func:`mark_request` updates inside the block."""
    return _Scoped(_REQUEST_MARKS, RequestMarks(context=dict(context or {}), sentinel=sentinel))


def mark_request(
    *,
    flags: Sequence[str] = (),
    exclude_from_drift: bool = False,
    row: int | None = None,
    outcome: str | None = None,
    input_stats: InputStats | PendingStats | None = None,
) -> bool:
    """Mark the monitored request being handled; returns False outside one (then a no-op).

    ``flags``, ``exclude_from_drift`` and ``input_stats`` go on the event of input ``row``
    (every row when ``None``); the monitor keeps excluded rows out of drift windows and counts
    them; ``input_stats`` may be a :class:`PendingStats`, computed in the replica's next batch.
    ``outcome`` replaces ``"ok"`` in the ``serve_drift.requests`` counter (e.g.
    ``"rejected"`` when the handler answers a 4xx itself).

    >>> mark_request(flags=["constant"], exclude_from_drift=True)
    False
    """
    marks = _REQUEST_MARKS.get()
    if marks is None:
        return False
    if flags or exclude_from_drift or input_stats is not None:
        previous = marks.rows.get(row, _NO_MARK)
        marks.rows[row] = RowMark(
            flags=tuple(flags) or previous.flags,
            exclude_from_drift=exclude_from_drift or previous.exclude_from_drift,
            input_stats=input_stats or previous.input_stats,
        )
    if outcome is not None:
        marks.outcome = outcome
    return True


# --- caller context ----------------------------------------------------------------------------


def clean_context(raw: Mapping[str, object] | None) -> dict[str, str]:
    """Make caller-supplied context (camera id, site, scene, ...) safe to store and export.

    Keys: characters outside ``A-Za-z0-9_.:/-`` become ``_``, cut to 64 characters; empty keys
    are dropped. Values: ``str()`` of the value, control characters removed, cut to 256
    characters; ``None`` values are dropped. At most 16 keys are kept, in the caller's order
    (later ones are dropped, never an error: context must not fail a request).

    >>> clean_context({"camera id": "cam-7\\n", "site": None, "n": 3})
    {'camera_id': 'cam-7', 'n': '3'}
    """
    cleaned: dict[str, str] = {}
    for key, value in (raw or {}).items():
        if len(cleaned) >= MAX_CONTEXT_KEYS:
            break
        if value is None:
            continue
        safe_key = _KEY_UNSAFE.sub("_", str(key).strip())[:MAX_CONTEXT_KEY_CHARS]
        if safe_key and safe_key not in cleaned:
            cleaned[safe_key] = _clean_value(value)
    return cleaned


CONTEXT_PREFIX = "x-serve-drift-context-"
SOURCE_HEADER = f"{CONTEXT_PREFIX}source"


def context_from_headers(
    headers: Mapping[str, str],
    *,
    allow: Sequence[str] | None = None,
    max_value_chars: int = MAX_CONTEXT_VALUE_CHARS,
) -> dict[str, str]:
    """Caller context passed as request headers, e.g. ``X-Serve-Drift-Context-Camera: cam-7``.

    Only the keys in ``allow`` are kept (``None``: any key, for trusted callers), each value
    cut to ``max_value_chars``; ``source`` is never caller context (see ``request_source``).

    >>> headers = {"X-Serve-Drift-Context-Camera": "cam-7", "X-Serve-Drift-Context-Email": "a@b"}
    >>> context_from_headers(headers, allow=["camera"])
    {'camera': 'cam-7'}
    """
    allowed = None if allow is None else {key.lower() for key in allow}
    found = {
        key: value[:max_value_chars]
        for name, value in headers.items()
        if (key := _context_key(name)) and key != "source" and (allowed is None or key in allowed)
    }
    return clean_context(found)


def request_source(headers: Mapping[str, str]) -> str | None:
    """What the caller says the request is (``sentinel``), before anyone checked who it is."""
    value = next((v for k, v in headers.items() if k.lower() == SOURCE_HEADER), None)
    return None if value is None else value.strip().lower()


def _context_key(header: str) -> str | None:
    name = header.lower()
    if not name.startswith(CONTEXT_PREFIX) or len(name) == len(CONTEXT_PREFIX):
        return None
    return name[len(CONTEXT_PREFIX) :]


def _clean_value(value: object) -> str:
    text = str(value)
    # Drop control/format characters (newlines, escapes, bidi overrides): they break table
    # output and log parsers, and are never meaningful in an identifier like a camera id.
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    return text.strip()[:MAX_CONTEXT_VALUE_CHARS]


# --- several requests in one handle call ---------------------------------------------------

# The method a monitored deployment answers many requests through in one handle call (the
# comparator's shadow copies): ``@monitored`` adds it to every class it wraps.
BATCH_METHOD = "serve_drift_batch"


@dataclass(frozen=True)
class BatchedRequest:
    """One of several requests sent to a deployment in one handle call: what its handler
    takes (a Starlette request, for an HTTP app) and the IDs it is handled under.

    >>> item = BatchedRequest(request="x", ids=RequestIds("client-1", "internal-1"))
    >>> item.ids.correlation_id
    'client-1'
    """

    request: Any
    ids: RequestIds


@dataclass(frozen=True)
class BatchedAnswer:
    """What the handler returned for one batched request, and how long it took to answer
    it (its own time in the replica, not the batch's)."""

    result: Any
    latency_s: float


@dataclass(frozen=True)
class BatchedFailure:
    """What stands in a batch's answers for a request whose handler raised (``error``) or
    did not answer within the batch's ``timeout_s`` (``timeout``): the others still answer."""

    kind: Literal["error", "timeout"]
    latency_s: float
    error_type: str = ""


def serve_context_for(ids: RequestIds) -> contextvars.Context:
    """A copy of the current context in which Ray Serve's request context carries ``ids``,
    as it would inside that request: a handle call made in it carries them along, and code
    run in it that reads Ray's request ID reads this request's.

    Ray Serve keeps that context in a private variable; if it ever moves, the copy keeps the
    caller's IDs (logged once), and serve-drift's own code, which reads the IDs it binds
    (:func:`bind_request_ids`), is unaffected.
    """
    context = contextvars.copy_context()
    try:
        from ray.serve import context as serve_context

        current = context.run(serve_context._get_serve_request_context)
        replaced = dataclasses.replace(
            current, request_id=ids.correlation_id, _internal_request_id=ids.internal_id
        )
        variable: ContextVar[Any] = serve_context._serve_request_context
        context.run(variable.set, replaced)
    except Exception as exc:
        _warn_once(exc)
    return context


_WARNED: set[str] = set()


def _warn_once(exc: BaseException) -> None:
    if type(exc).__name__ not in _WARNED:
        _WARNED.add(type(exc).__name__)
        logger.warning("serve-drift: Ray Serve's request context could not be set: %r", exc)
