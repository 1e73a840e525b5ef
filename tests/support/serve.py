"""What integration tests get from the shared Ray Serve instance, and free loopback ports."""

from __future__ import annotations

import socket
from dataclasses import dataclass

# The admin credential every replica of the test run has (see tests/integration/conftest.py).
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServeInstance:
    http_port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"
