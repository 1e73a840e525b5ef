"""One error family: every error serve-drift raises on purpose carries a stable ``code``.

The code names the failure for telemetry, HTTP answers and scripts; the message explains it to a
person and may change. Each concrete error also derives from the builtin a caller would expect
(``ValueError``, ``LookupError``, ``OSError``), so ``except ValueError`` keeps working.

>>> class TooSmall(ServeDriftError, ValueError):
...     code = "too_small"
>>> error = TooSmall("window has 3 rows")
>>> (error.code, isinstance(error, ValueError), str(error))
('too_small', True, 'window has 3 rows')
"""

from __future__ import annotations


class ServeDriftError(Exception):
    """Base of serve-drift's errors: ``code`` is set by each subclass (or by its instances)."""

    code: str = "serve_drift_error"


class CodedError(ServeDriftError):
    """A :class:`ServeDriftError` whose ``code`` is picked where it is raised, among the codes
    its subclass documents (one class for one kind of failure, several stable codes).

    >>> class Unreadable(CodedError, ValueError):
    ...     pass
    >>> Unreadable("cut off at byte 12", code="truncated").code
    'truncated'
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
