"""JSON-lines file exporters for spans and metrics, with size-bounded rotation.

The fallback when no OTLP endpoint is configured. Each file rotates like ``logrotate`` or
:class:`logging.handlers.RotatingFileHandler`: when the next line would take ``spans-7.jsonl``
past ``max_bytes``, it becomes ``spans-7.jsonl.1`` (``.1`` becomes ``.2`` and so on), the oldest
beyond ``backup_count`` is deleted, and a fresh file starts. So one file never holds more than
``(backup_count + 1) * max_bytes`` bytes on disk (a single line larger than ``max_bytes`` gets a
file of its own). Lines are whole: rotation only happens between lines.

All exporters of one process that write the same path share one writer and its lock, so
concurrent exports never interleave partial lines or race a rotation.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "spans-1.jsonl"
>>> writer = open_lines(path, max_bytes=8, backup_count=1)
>>> writer.write_lines(["aaaa\\n", "bbbb\\n", "cccc\\n"])
True
>>> release(writer)
>>> sorted(p.name for p in path.parent.iterdir())
['spans-1.jsonl', 'spans-1.jsonl.1']
>>> path.read_text(), path.with_name("spans-1.jsonl.1").read_text()
('cccc\\n', 'bbbb\\n')
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = [
    "JsonLinesMetricExporter",
    "JsonLinesSpanExporter",
    "RotatingLines",
    "open_lines",
    "release",
]


class RotatingLines:
    """Appends whole lines to one file and rotates it at a size bound; use :func:`open_lines`."""

    def __init__(self, path: Path, *, max_bytes: int, backup_count: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.lock = threading.Lock()
        self.users = 0
        self._file: IO[bytes] | None = None
        self._size = 0
        self._closed = False
        self._current()  # fail now (unwritable folder) rather than on the first export

    def write_lines(self, lines: Sequence[str]) -> bool:
        """Write every line (each ending in a newline); ``False`` if that failed or is closed."""
        with self.lock:
            if self._closed:
                return False
            try:
                for line in lines:
                    self._write_one(line.encode("utf-8"))
                self._current().flush()  # readers (and a crash) see whole exports promptly
            except OSError:
                self._forget_file()  # reopened on the next write: a full disk may recover
                return False
            return True

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self._forget_file()

    def _current(self) -> IO[bytes]:
        if self._file is None:
            # Append: a restarted process that reuses a pid keeps the earlier lines.
            self._file = open(self.path, "ab")  # noqa: SIM115 - closed by _forget_file
            self._size = self._file.tell()
        return self._file

    def _forget_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def _write_one(self, data: bytes) -> None:
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._current().write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        self._forget_file()
        if self.backup_count:
            for index in range(self.backup_count - 1, 0, -1):
                older = self._rotated(index)
                if older.exists():
                    os.replace(older, self._rotated(index + 1))
            os.replace(self.path, self._rotated(1))
        else:  # no backups: the one file starts afresh
            self.path.unlink(missing_ok=True)

    def _rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")


_REGISTRY_LOCK = threading.Lock()
_WRITERS: dict[Path, RotatingLines] = {}


def open_lines(path: Path, *, max_bytes: int, backup_count: int) -> RotatingLines:
    """The process's writer for ``path``, shared by every exporter of that file.

    The first opener's limits hold for the file. Each opener calls :func:`release` once.
    """
    key = Path(os.path.abspath(path))
    with _REGISTRY_LOCK:
        writer = _WRITERS.get(key)
        if writer is None:
            writer = RotatingLines(key, max_bytes=max_bytes, backup_count=backup_count)
            _WRITERS[key] = writer
        writer.users += 1
        return writer


def release(writer: RotatingLines) -> None:
    """One opener is done with ``writer``; the last one closes the file."""
    with _REGISTRY_LOCK:
        writer.users -= 1
        if writer.users > 0:
            return
        _WRITERS.pop(writer.path, None)
    writer.close()


class _Released:
    """Releases a shared writer exactly once, however many times shutdown is called."""

    def __init__(self, writer: RotatingLines) -> None:
        self.writer = writer
        self._done = False
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        release(self.writer)

    @property
    def done(self) -> bool:
        return self._done


class JsonLinesSpanExporter(SpanExporter):
    """One ``ReadableSpan.to_json()`` object per line, in a rotating file."""

    def __init__(self, path: Path, *, max_bytes: int, backup_count: int) -> None:
        self._release = _Released(open_lines(path, max_bytes=max_bytes, backup_count=backup_count))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._release.done:
            return SpanExportResult.FAILURE
        lines = [span.to_json(indent=None) + "\n" for span in spans]
        ok = self._release.writer.write_lines(lines)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._release()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # every export is flushed to the file before it returns


class JsonLinesMetricExporter(MetricExporter):
    """One ``MetricsData.to_json()`` object per collection per line, in a rotating file."""

    def __init__(self, path: Path, *, max_bytes: int, backup_count: int) -> None:
        super().__init__()  # cumulative temporality, default aggregation: like the console
        self._release = _Released(open_lines(path, max_bytes=max_bytes, backup_count=backup_count))

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._release.done:
            return MetricExportResult.FAILURE
        ok = self._release.writer.write_lines([metrics_data.to_json(indent=None) + "\n"])
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._release()
