"""Windows close by size or when what they compare changes; labels join by correlation ID."""

from __future__ import annotations

from serve_drift.routing.messages import Observation
from serve_drift.routing.windows import ComparisonWindows, WindowRecord
from tests.unit.routing.support import ok, shadow


def _windows(size: int = 3, kept: int = 5) -> ComparisonWindows:
    return ComparisonWindows(window_size=size, windows_kept=kept)


def test_a_window_closes_when_full_and_numbering_continues() -> None:
    windows = ComparisonWindows(window_size=2, windows_kept=5, next_index=7)
    closed = [r for i in range(5) for r in windows.add(shadow(f"r{i}", ok(1), ok(1)), epoch=0)]
    assert [r.index for r in closed] == [7, 8]
    assert all(r.comparison.observations == 2 and r.closed_at is not None for r in closed)
    open_record = windows.open_record()
    assert open_record is not None and open_record.index == 9 and open_record.closed_at is None


def test_a_new_candidate_version_or_epoch_closes_the_window_early() -> None:
    windows = _windows(size=100)
    windows.add(shadow("a", ok(1, version="inc"), ok(1, version="c1")), epoch=0)
    closed = windows.add(shadow("b", ok(1, version="inc"), ok(1, version="c2")), epoch=0)
    assert [(r.candidate_version, r.comparison.observations) for r in closed] == [("c1", 1)]
    closed = windows.add(shadow("c", ok(1, version="inc"), ok(1, version="c2")), epoch=1)
    assert [(r.epoch, r.candidate_version) for r in closed] == [(0, "c2")]
    canary = Observation("d", 1.0, "canary", "incumbent", ok(1, version="inc"), None)
    assert [r.mode for r in windows.add(canary, epoch=1)] == ["shadow"]


def test_a_label_updates_the_window_its_request_sits_in() -> None:
    windows = _windows(size=2)
    windows.add(shadow("a", ok(1), ok(2)), epoch=0)
    windows.add(shadow("b", ok(3), ok(3)), epoch=0)  # closes window 0
    record = windows.label("a", 2)
    assert isinstance(record, WindowRecord) and record.index == 0
    pairs = record.comparison.pairs
    assert (pairs.labelled, pairs.incumbent_only_correct, pairs.candidate_only_correct) == (1, 0, 1)
    assert windows.label("a", 2) is None  # the first label stands


def test_a_repeated_correlation_id_takes_no_label() -> None:
    windows = _windows(size=10)
    windows.add(shadow("dup", ok(1), ok(1)), epoch=0)
    windows.add(shadow("dup", ok(2), ok(2)), epoch=0)
    assert windows.label("dup", 1) is None
    record = windows.open_record()
    assert record is not None and record.comparison.incumbent.labelled == 0


def test_a_label_that_arrives_before_its_answers_waits_for_them() -> None:
    windows = _windows(size=10)
    assert windows.label("early", 4) is None
    windows.add(shadow("early", ok(4), ok(5)), epoch=0)
    record = windows.open_record()
    assert record is not None and record.comparison.pairs.incumbent_only_correct == 1


def test_failed_or_multi_row_answers_take_no_label() -> None:
    from serve_drift.routing.answers import Answer, RowAnswer, failed

    windows = _windows(size=10)
    two = Answer("ok", 0.01, rows=(RowAnswer(1, 0.9), RowAnswer(2, 0.9)))
    windows.add(shadow("batch", two, two), epoch=0)
    windows.add(shadow("half", ok(1), failed("timeout", latency_s=5.0)), epoch=0)
    assert windows.label("batch", 1) is None
    record = windows.label("half", 1)
    assert record is not None
    assert (record.comparison.incumbent.labelled, record.comparison.pairs.labelled) == (1, 0)


def test_windows_past_the_kept_ones_forget_their_requests() -> None:
    windows = _windows(size=1, kept=2)
    for i in range(4):
        windows.add(shadow(f"r{i}", ok(1), ok(1)), epoch=0)
    assert [r.index for r in windows.closed_records()] == [2, 3]
    assert windows.label("r0", 1) is None  # its window left memory: the label waits in vain
    assert windows.label("r3", 1) is not None


def test_a_window_record_survives_its_json_round_trip() -> None:
    windows = _windows(size=2)
    windows.add(shadow("a", ok(1), ok(2)), epoch=0)
    (record,) = windows.add(shadow("b", ok(3), ok(3)), epoch=0)
    assert WindowRecord.from_dict(record.to_dict()) == record
