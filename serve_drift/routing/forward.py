"""Passing a client's HTTP request on to an arm through a DeploymentHandle.

The router reads the body once (within its limits); :class:`ReplayedRequest` carries the
ASGI scope and that body, pickles as just those two, and arrives at the arm as a real
Starlette ``Request``: the arm's own handler (the ready-made app, or your decorated class)
reads headers, path, query and body as if the client had called it directly. The correlation
ID travels in Ray Serve's request context, which handle calls carry along.

>>> request = ReplayedRequest.build(method="POST", path="/predict", body=b"x",
...                                 headers={"content-type": "image/png"})
>>> import pickle; copy = pickle.loads(pickle.dumps(request))
>>> (copy.method, copy.url.path, copy.headers["content-type"])
('POST', '/predict', 'image/png')
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request

from serve_drift.request_context import RequestIds, serve_context_for

logger = logging.getLogger(__name__)

# What the arm needs from the scope; the rest (the proxy's state, app references) stays.
_SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "root_path",
    "headers",
    "server",
    "client",
)


def _receive_once(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:  # after the body, the client is gone (what an ASGI server says then)
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _rebuild(scope: dict[str, Any], body: bytes) -> ReplayedRequest:
    return ReplayedRequest(scope, body)


class ReplayedRequest(Request):
    """A Starlette request whose body is already in memory, so it can be sent again."""

    def __init__(self, scope: Mapping[str, Any], body: bytes) -> None:
        kept = {key: scope[key] for key in _SCOPE_KEYS if key in scope}
        kept.setdefault("type", "http")
        super().__init__(kept, _receive_once(body))
        self.replay_body = body

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (dict(self.scope), self.replay_body))

    @classmethod
    def of(cls, request: Request, body: bytes) -> ReplayedRequest:
        return cls(request.scope, body)

    @classmethod
    def build(
        cls, *, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> ReplayedRequest:
        """A request from parts (tests, and the router's own calls)."""
        raw = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": raw,
            "scheme": "http",
            "http_version": "1.1",
        }
        return cls(scope, body)

    def with_headers(self, updates: Mapping[str, str]) -> ReplayedRequest:
        """A copy whose headers named in ``updates`` are replaced (e.g. a new traceparent)."""
        names = {name.lower().encode("latin-1") for name in updates}
        headers = [(k, v) for k, v in self.scope["headers"] if k.lower() not in names]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in updates.items()]
        return ReplayedRequest({**self.scope, "headers": headers}, self.replay_body)


def request_context_for(*, correlation_id: str, internal_id: str) -> contextvars.Context:
    """A context in which a handle call carries these request IDs, as it would inside the
    request: the comparator sends shadow copies from its own process, and the candidate's
    replica reads the correlation ID from Ray Serve's request context, not from a header."""
    return serve_context_for(RequestIds(correlation_id=correlation_id, internal_id=internal_id))
