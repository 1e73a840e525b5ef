"""Black-holed OTLP endpoints on 127.0.0.1: one that accepts and never answers, one that refuses.

``hang`` accepts every TCP connection and holds it open without reading or writing a byte: an
OTLP exporter (gRPC or HTTP) waits for an answer until its own timeout, then retries. ``refuse``
binds a port without listening, so every connection attempt is refused at once (the port stays
reserved while the context is open, so no other test can take it).

>>> with BlackHole("refuse") as hole:
...     hole.endpoint.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import socket
import threading
from typing import Literal

Mode = Literal["hang", "refuse"]
MODES: tuple[Mode, ...] = ("hang", "refuse")


class BlackHole:
    """A TCP endpoint that never answers (``hang``) or refuses connections (``refuse``)."""

    def __init__(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        self.mode = mode
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._port = 0
        self._accepted = 0

    def __enter__(self) -> BlackHole:
        self._socket.bind(("127.0.0.1", 0))
        self._port = int(self._socket.getsockname()[1])
        if self.mode == "hang":
            self._socket.listen(128)
            self._socket.settimeout(0.1)  # so the accept loop notices close()
            self._thread = threading.Thread(target=self._accept, name="blackhole", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(2)
        with self._lock:
            for conn in self._held:
                conn.close()
            self._held.clear()
        self._socket.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (either protocol)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """How many connections a ``hang`` endpoint has accepted (held until it closes)."""
        with self._lock:
            return self._accepted

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._socket.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self._held.append(conn)
                self._accepted += 1
