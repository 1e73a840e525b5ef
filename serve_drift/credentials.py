"""The admin credential: who may change what the monitor believes, or read its details.

Labels, sentinel runs, maintenance, reference swaps, drift details and health details are
admin operations. They need ``Authorization: Bearer <token>``, where the token comes from a
mounted secret file (``admin.token_file``, e.g. a Kubernetes secret) or an environment variable
(``admin.token_env``, default ``SERVE_DRIFT_ADMIN_TOKEN``) of the replica process: never from
the Serve config itself, which anyone who can read the cluster's config would see. Comparison
is constant-time. Without a token configured, admin operations are refused (``admin_disabled``).

>>> credential = AdminCredential("s3cret-token-of-32-characters-xx")
>>> credential.verify("Bearer s3cret-token-of-32-characters-xx"), credential.verify("Bearer no")
(True, False)
>>> credential.verify(None)
False
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16  # shorter secrets are guessable: refuse them rather than run weakly
AUTHORIZATION = "authorization"


class AdminCredential:
    """A bearer token, compared in constant time."""

    def __init__(self, token: str) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"the admin token must have at least {MIN_TOKEN_CHARS} characters")
        self._token = token.encode("utf-8")

    @classmethod
    def load(cls, *, token_env: str, token_file: str | None) -> AdminCredential | None:
        """The configured credential (the file wins over the variable), or None if there is
        none or it is too short to be safe (logged: admin operations are then refused)."""
        token = _read_file(token_file) if token_file else os.environ.get(token_env, "")
        token = token.strip()
        if not token:
            return None
        try:
            return cls(token)
        except ValueError as exc:
            logger.warning("serve-drift: admin operations disabled: %s", exc)
            return None

    def verify(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries this token."""
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return False
        return hmac.compare_digest(presented.strip().encode("utf-8"), self._token)

    def verify_headers(self, headers: Mapping[str, str] | None) -> bool:
        if headers is None:
            return False
        return self.verify(headers.get(AUTHORIZATION))


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        logger.warning("serve-drift: cannot read the admin token file %s: %s", path, exc)
        return ""
