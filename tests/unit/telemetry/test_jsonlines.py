"""The JSON-lines fallback rotates at its size bound, keeps a bounded number of files, and never
loses or tears a line, also with several exporters writing one file from several threads."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from serve_drift.telemetry.jsonlines import (
    JsonLinesMetricExporter,
    JsonLinesSpanExporter,
    open_lines,
    release,
)


def _files_oldest_first(path: Path) -> list[Path]:
    rotated = sorted(
        path.parent.glob(f"{path.name}.*"), key=lambda p: int(p.suffix[1:]), reverse=True
    )
    return [*rotated, path] if path.exists() else rotated


def _lines_oldest_first(path: Path) -> list[str]:
    return [line for p in _files_oldest_first(path) for line in p.read_text().splitlines()]


def _write(path: Path, lines: list[str], *, max_bytes: int, backup_count: int) -> None:
    writer = open_lines(path, max_bytes=max_bytes, backup_count=backup_count)
    try:
        for line in lines:
            assert writer.write_lines([line + "\n"])
    finally:
        release(writer)


def test_rotates_at_the_size_bound_and_keeps_backup_count_files(tmp_path: Path) -> None:
    path = tmp_path / "spans-1.jsonl"
    lines = [json.dumps({"seq": i, "pad": "x" * 80}) for i in range(200)]  # ~100 bytes each
    _write(path, lines, max_bytes=1000, backup_count=3)

    files = _files_oldest_first(path)
    assert [p.name for p in files] == [f"{path.name}.{i}" for i in (3, 2, 1)] + [path.name]
    assert all(p.stat().st_size <= 1000 for p in files)
    assert all(p.stat().st_size > 1000 - 110 for p in files[:-1])  # full before rotating
    kept = [json.loads(line)["seq"] for line in _lines_oldest_first(path)]
    assert kept == list(range(200 - len(kept), 200))  # the newest lines, in order, none torn
    assert sum(p.stat().st_size for p in files) <= 4 * 1000


def test_no_backups_keeps_one_file_under_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "metrics-1.jsonl"
    _write(path, [f'{{"seq": {i}}}' for i in range(100)], max_bytes=64, backup_count=0)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert path.stat().st_size <= 64
    assert path.read_text().splitlines()[-1] == '{"seq": 99}'


def test_a_line_larger_than_the_bound_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "spans-1.jsonl"
    big = json.dumps({"big": "y" * 500})
    _write(path, ['{"a": 1}', big, '{"b": 2}'], max_bytes=100, backup_count=5)
    contents = [p.read_text() for p in _files_oldest_first(path)]
    assert contents == ['{"a": 1}\n', big + "\n", '{"b": 2}\n']


def test_an_existing_file_counts_towards_the_bound(tmp_path: Path) -> None:
    # A restarted process with a reused pid appends; the earlier lines are kept and counted.
    path = tmp_path / "spans-1.jsonl"
    path.write_text('{"earlier": true}\n' * 5)  # 90 bytes
    _write(path, ['{"later": 1}'], max_bytes=100, backup_count=1)
    assert path.read_text() == '{"later": 1}\n'
    assert path.with_name(f"{path.name}.1").read_text() == '{"earlier": true}\n' * 5


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=80),
    max_bytes=st.integers(min_value=16, max_value=600),
    backup_count=st.integers(min_value=0, max_value=4),
)
def test_rotation_invariants(
    tmp_path_factory, sizes: list[int], max_bytes: int, backup_count: int
) -> None:
    path = tmp_path_factory.mktemp("rot") / "t.jsonl"
    lines = [f"{i:05d}" + "z" * size for i, size in enumerate(sizes)]
    _write(path, lines, max_bytes=max_bytes, backup_count=backup_count)

    files = _files_oldest_first(path)
    assert 1 <= len(files) <= backup_count + 1
    for p in files:  # within the bound, unless one line alone is larger
        text = p.read_text()
        assert len(text.encode()) <= max_bytes or text.count("\n") == 1
    kept = _lines_oldest_first(path)
    assert kept and kept == lines[len(lines) - len(kept) :]  # a whole, ordered suffix


def test_concurrent_exporters_of_one_file_lose_and_tear_no_line(tmp_path: Path) -> None:
    path = tmp_path / "spans-1.jsonl"
    exporters = [JsonLinesSpanExporter(path, max_bytes=4096, backup_count=1000) for _ in range(2)]
    providers = []
    for exporter in exporters:
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        providers.append(provider)

    def spans(worker: int) -> None:
        tracer = providers[worker % 2].get_tracer("t")
        for i in range(150):
            with tracer.start_as_current_span("s", attributes={"worker": worker, "i": i}):
                pass

    threads = [threading.Thread(target=spans, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for provider in providers:
        provider.shutdown()

    files = _files_oldest_first(path)
    assert len(files) > 5 and all(p.stat().st_size <= 4096 for p in files)
    seen = [json.loads(line)["attributes"] for line in _lines_oldest_first(path)]
    assert sorted((a["worker"], a["i"]) for a in seen) == [
        (w, i) for w in range(4) for i in range(150)
    ]
    for worker in range(4):  # each thread's spans stay in its order across rotations
        order = [a["i"] for a in seen if a["worker"] == worker]
        assert order == list(range(150))


def test_shared_file_stays_open_until_its_last_exporter_shuts_down(tmp_path: Path) -> None:
    path = tmp_path / "metrics-1.jsonl"
    first = JsonLinesMetricExporter(path, max_bytes=1 << 20, backup_count=1)
    second = JsonLinesMetricExporter(path, max_bytes=1 << 20, backup_count=1)
    provider = MeterProvider(
        metric_readers=[PeriodicExportingMetricReader(second, export_interval_millis=60_000)],
        shutdown_on_exit=False,
    )
    provider.get_meter("t").create_counter("serve_drift.test.c").add(3)
    first.shutdown()
    first.shutdown()  # twice: still only one release
    provider.force_flush()
    provider.shutdown()
    lines = path.read_text().splitlines()  # the flush's collection, then the shutdown's
    assert len(lines) == 2 and all("serve_drift.test.c" in line for line in lines)
    # Both released: a new exporter of the same path starts a fresh writer, not a closed one.
    third = JsonLinesSpanExporter(path, max_bytes=10, backup_count=1)
    assert third.export([]).name == "SUCCESS"
    third.shutdown()


def test_an_unwritable_rotation_fails_the_export_and_recovers(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    path = folder / "spans-1.jsonl"
    writer = open_lines(path, max_bytes=10, backup_count=1)
    try:
        assert writer.write_lines(['{"a": 1234}\n'])
        path.with_name(f"{path.name}.1").mkdir()  # a folder where the backup must go
        assert not writer.write_lines(['{"b": 1234}\n'])
        path.with_name(f"{path.name}.1").rmdir()
        assert writer.write_lines(['{"c": 1234}\n'])
    finally:
        release(writer)
    assert path.read_text() == '{"c": 1234}\n'
    assert path.with_name(f"{path.name}.1").read_text() == '{"a": 1234}\n'
