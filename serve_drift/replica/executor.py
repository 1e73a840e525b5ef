"""A default executor that carries the caller's context into its worker threads.

``loop.run_in_executor(None, fn)`` runs ``fn`` in a thread without the caller's context
variables (``asyncio.to_thread`` copies them; ``run_in_executor`` does not), so a forward pass
there would belong to no request and go uncaptured. A monitored replica makes this executor its
event loop's default: every ``run_in_executor(None, ...)`` then runs in a copy of the context it
was called from, as ``to_thread`` does. Nothing else about the executor changes. Code that
passes its own executor can wrap the callable with :func:`in_current_context`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ContextCopyingExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run in a copy of the submitter's context.

    >>> import contextvars
    >>> var = contextvars.ContextVar("var", default="unset")
    >>> _ = var.set("the caller's")
    >>> with ContextCopyingExecutor(max_workers=1) as pool:
    ...     pool.submit(var.get).result()
    "the caller's"
    """

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def in_current_context(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` bound to a copy of the current context, for executors you create yourself."""
    return functools.partial(contextvars.copy_context().run, fn)


_INSTALLED: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


_last: list[asyncio.AbstractEventLoop | None] = [None]  # the loop of the latest call


def install_on(loop: asyncio.AbstractEventLoop) -> None:
    """Make a context-copying executor ``loop``'s default, once per loop."""
    if loop is _last[0]:  # every request asks: the common answer without a weak reference
        return
    if loop not in _INSTALLED:
        loop.set_default_executor(ContextCopyingExecutor(thread_name_prefix="serve-drift-user"))
        _INSTALLED.add(loop)
    _last[0] = loop
