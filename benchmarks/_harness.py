"""What the serving benchmarks share: a lean HTTP load generator, per-process CPU and memory
from ``/proc``, an OTLP receiver in a process of its own, and Ray started on loopback.

The load generator speaks HTTP/1.1 over asyncio streams with pre-built request heads: on a
two-core machine the client competes with the server for CPU, and a full HTTP client library
costs several times more per request than the server work being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]


# --- HTTP load -------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """Answers of one load round: latencies by status; throughput counts 200s only."""

    seconds: float
    latencies_s: dict[int, list[float]] = field(default_factory=dict)
    client_errors: int = 0  # connections that failed or closed mid-answer
    retry_after: int = 0  # answers with a Retry-After header: Serve's backpressure refusals
    queued_s: list[float] = field(default_factory=list)  # open loop: waits for a connection

    def add(self, status: int, latency_s: float) -> None:
        self.latencies_s.setdefault(status, []).append(latency_s)

    @property
    def ok(self) -> int:
        return len(self.latencies_s.get(200, []))

    @property
    def statuses(self) -> dict[int, int]:
        return {status: len(v) for status, v in sorted(self.latencies_s.items())}

    @property
    def not_ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200) + self.client_errors

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds

    def percentile_ms(self, q: float, *, status: int = 200) -> float:
        values = self.latencies_s.get(status, [])
        return float(np.percentile(values, q) * 1000) if values else float("nan")

    def merged(self, other: LoadResult) -> LoadResult:
        out = LoadResult(self.seconds + other.seconds, client_errors=self.client_errors)
        out.client_errors += other.client_errors
        out.retry_after = self.retry_after + other.retry_after
        for part in (self, other):
            for status, values in part.latencies_s.items():
                out.latencies_s.setdefault(status, []).extend(values)
        return out


class Endpoint:
    """POST bodies to one URL path on 127.0.0.1, one keep-alive connection per caller."""

    def __init__(self, *, port: int, path: str, bodies: Sequence[bytes], content_type: str):
        self.port = port
        self._requests = [_request_bytes(port, path, body, content_type) for body in bodies]

    def request(self, i: int) -> bytes:
        return self._requests[i % len(self._requests)]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


def _request_bytes(port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


@dataclass
class _Answer:
    status: int = 0
    length: int = 0
    chunked: bool = False
    close: bool = False
    retry_after: bool = False


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> _Answer:
    """Send one request and read its whole answer."""
    writer.write(request)
    answer = _Answer(status=int((await reader.readline()).split(b" ", 2)[1]))
    while (line := await reader.readline()) not in (b"\r\n", b""):
        _header(answer, line)
    if answer.chunked:
        await _read_chunks(reader)
    else:
        await reader.readexactly(answer.length)
    return answer


def _header(answer: _Answer, line: bytes) -> None:
    name, _, value = line.partition(b":")
    name = name.strip().lower()
    if name == b"content-length":
        answer.length = int(value)
    elif name == b"transfer-encoding":
        answer.chunked = b"chunked" in value.lower()
    elif name == b"connection":
        answer.close = b"close" in value.lower()
    elif name == b"retry-after":
        answer.retry_after = True


async def _read_chunks(reader: asyncio.StreamReader) -> None:
    while size := int((await reader.readline()).strip() or b"0", 16):
        await reader.readexactly(size + 2)
    await reader.readline()


class _Client:
    """One keep-alive connection, reopened when the server closes it or it fails."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, i: int, result: LoadResult) -> None:
        started = time.perf_counter()
        try:
            if self._conn is None:
                self._conn = await self._endpoint.connect()
            answer = await _exchange(*self._conn, self._endpoint.request(i))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            result.client_errors += 1
            self.close()
            return
        result.add(answer.status, time.perf_counter() - started)
        result.retry_after += answer.retry_after
        if answer.close:
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


async def closed_loop(endpoint: Endpoint, *, seconds: float, concurrency: int) -> LoadResult:
    """``concurrency`` clients, each sending as soon as its answer arrives."""
    result = LoadResult(seconds)
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        client, i = _Client(endpoint), offset
        while time.perf_counter() < deadline:
            await client.send(i, result)
            i += concurrency
        client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


async def open_loop(
    endpoint: Endpoint, *, rate: float, seconds: float, connections: int
) -> LoadResult:
    """Requests due at ``rate`` per second whatever the answers do (as real clients arrive),
    sent over at most ``connections`` keep-alive connections, as a load balancer or a fixed
    client fleet would. A request due while every connection is busy waits on the client side:
    that wait is recorded apart (``queued_s``), the answer's own latency as usual."""
    result = LoadResult(seconds)
    due: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()

    async def connection() -> None:
        client = _Client(endpoint)
        while (item := await due.get()) is not None:
            i, when = item
            result.queued_s.append(max(0.0, time.perf_counter() - when))
            await client.send(i, result)
        client.close()

    workers = [asyncio.get_running_loop().create_task(connection()) for _ in range(connections)]
    started = time.perf_counter()
    for i in range(int(rate * seconds)):
        when = started + i / rate
        await _sleep_until(when)
        due.put_nowait((i, when))
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    result.seconds = time.perf_counter() - started
    return result


async def _sleep_until(when: float) -> None:
    delay = when - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


# --- processes -------------------------------------------------------------------------------


def find_pids(title: str) -> list[int]:
    """This process's Ray workers titled ``ray::<title>`` (Ray retitles each actor's
    process); other users' Ray instances on the machine are not descendants of ours."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                words = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().split()
            except (OSError, UnicodeDecodeError):
                continue
            if words and words[0] == f"ray::{title}" and _descends_from_us(int(entry.name)):
                pids.append(int(entry.name))
    return sorted(pids)


def one_pid(title: str, *, timeout_s: float = 15.0) -> int:
    """The one process of ours titled ``ray::<title>``, waiting for Ray to retitle it."""
    deadline = time.monotonic() + timeout_s
    while len(pids := find_pids(title)) != 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected one process titled ray::{title} of ours, found {pids}")
        time.sleep(0.5)
    return pids[0]


def _descends_from_us(pid: int) -> bool:
    ours = os.getpid()
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ours:
            return True
    return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu_seconds(pid: int) -> Counter[str]:
    """User + system CPU of a process's threads, summed by thread name (Linux keeps 15
    characters of it; Ray names several threads alike)."""
    by_name: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended between the listing and the read
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        by_name[name] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return by_name


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine_cpu_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle or waiting), since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds spent by named processes (and the whole machine) between two readings."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        readings = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        readings["machine"] = machine_cpu_seconds()
        return readings

    def spent(self) -> dict[str, float]:
        now = self._read()
        return {name: now[name] - self._start[name] for name in now}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- OTLP receiver in its own process ----------------------------------------------------------


class OtlpSink:
    """A real OTLP gRPC receiver (``tests.support.otlp_receiver``) in a child process that
    counts what it receives and keeps nothing, so its CPU is its own and not the driver's."""

    def __init__(self, *, stats_path: Path) -> None:
        self._stats_path = stats_path
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_otlp_sink.py")), str(stats_path)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": _pythonpath()},
        )
        assert self._proc.stdout is not None
        self.endpoint = self._proc.stdout.readline().strip()
        self.pid = self._proc.pid

    def counts(self) -> dict[str, int]:
        """Spans by name and metric export requests received so far."""
        try:
            return dict(json.loads(self._stats_path.read_text()))
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(5)


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def telemetry_env(endpoint: str) -> dict[str, str]:
    """What every Ray worker inherits: the SDK on, exporting to ``endpoint`` over gRPC."""
    return {
        "SERVE_DRIFT_CONFIGURE_OTEL": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "RAY_SERVE_LOG_TO_STDERR": "0",
        "PYTHONPATH": _pythonpath(),
    }


def start_ray(env: dict[str, str]) -> None:
    """Ray on 127.0.0.1 with ``env`` in every worker, as a deployment's runtime would have."""
    os.environ.update(env)
    from serve_drift.tools.local_ray import start_local_ray

    start_local_ray(
        num_cpus=8,
        log_to_driver=False,
        configure_logging=False,
        logging_level=logging.ERROR,
    )


def stop_ray() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


@contextlib.contextmanager
def otlp_sink() -> Iterator[OtlpSink]:
    sink = OtlpSink(stats_path=Path(tempfile.mkdtemp()) / "otlp-counts.json")
    try:
        yield sink
    finally:
        sink.stop()


@contextlib.contextmanager
def ray_exporting_to(sink: OtlpSink, extra_env: dict[str, str] | None = None) -> Iterator[None]:
    """Ray whose workers have the SDK on and export to ``sink``."""
    try:
        start_ray({**telemetry_env(sink.endpoint), **(extra_env or {})})
        yield
    finally:
        stop_ray()


@contextlib.contextmanager
def serving(extra_env: dict[str, str] | None = None) -> Iterator[OtlpSink]:
    """An OTLP receiver, and Ray whose workers have the SDK on and export to it."""
    with otlp_sink() as sink, ray_exporting_to(sink, extra_env):
        yield sink


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def digits_pngs(n: int) -> list[bytes]:
    """Held-out digits as PNG bodies, what a client of the ready-made app sends."""
    from serve_drift.models.digits import split_digits
    from serve_drift.tools.imageio import encode_png

    return [encode_png(image) for image in split_digits(seed=0).test_images[:n]]


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def status_summary(statuses: dict[int, int]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(Counter(statuses).items())) or "-"
