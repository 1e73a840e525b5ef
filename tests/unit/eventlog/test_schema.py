"""Event schema v1: round trips, the JSON Schema file, context limits, input statistics."""

from __future__ import annotations

import dataclasses

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_drift.eventlog.labels import compute_metrics, metrics_record
from serve_drift.eventlog.schema import (
    DriftTestRecord,
    InferenceRecord,
    LabelRecord,
    Outputs,
    _example_drift_dict,
    clean_context,
    load_json_schema,
    record_from_dict,
    record_from_json,
)
from serve_drift.eventlog.schema import (
    InputStats as Stats,
)
from serve_drift.ingress.stats import compute_input_stats
from serve_drift.request_context import MAX_CONTEXT_KEYS, context_from_headers
from tests.support.eventlog_helpers import make_record, rng_images


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = load_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _records() -> list:
    metrics = compute_metrics(
        y_true=[0, 1, 2, 2], y_pred=[0, 1, 1, 2], confidence=[0.9, 0.8, 0.5, 0.7]
    )
    return [
        make_record(1),
        make_record(
            2, validation_flags=("quarantined",), keep_reason="quarantined", drift_window=3
        ),
        make_record(3, input_stats=None, trace_id=None, span_id=None, context={}, latency_s=None),
        InferenceRecord(
            timestamp=5.0,
            correlation_id="c",
            internal_id="i",
            model_name="m",
            model_version="1",
            outputs=Outputs(predicted_class=None, confidence=None),
        ),
        DriftTestRecord.from_result(_example_drift_dict()),
        DriftTestRecord.from_result(
            {
                **_example_drift_dict(),
                "p_value": float("nan"),
                "trace_id": "a" * 32,
                "span_id": "b" * 16,
            }
        ),
        LabelRecord(correlation_id="req-1", label=4, received_at=12.0, source="sentinel"),
        metrics_record(
            metrics, tag="feedback", model_name="m", model_version="1", window_index=2, now=3.0
        ),
        metrics_record(
            dataclasses.replace(metrics, ece=None),
            tag="sentinel",
            model_name="m",
            model_version="1",
        ),
    ]


@pytest.mark.parametrize("index", range(len(_records())))
def test_every_record_type_round_trips_and_validates(index: int, validator) -> None:
    record = _records()[index]
    data = record.to_dict()
    validator.validate(data)
    assert record_from_dict(data) == record
    assert record_from_json(record.to_json()) == record


def test_schema_properties_match_the_dataclasses(validator) -> None:
    """The JSON Schema and the code cannot drift apart silently."""
    defs = load_json_schema()["$defs"]
    for record in _records():
        assert set(defs[record.record_type]["properties"]) == set(record.to_dict()), (
            record.record_type
        )
        assert set(defs[record.record_type]["required"]) == set(record.to_dict())


def test_invalid_documents_are_rejected_by_the_schema(validator) -> None:
    good = make_record(1).to_dict()
    bad_cases = [
        {**good, "sampling_weight": 0.5},
        {**good, "trace_id": "XYZ"},
        {**good, "context": {f"k{i}": "v" for i in range(MAX_CONTEXT_KEYS + 1)}},
        {**good, "context": {"k": "v" * 257}},
        {**good, "unexpected": 1},
        {**good, "record_type": "other"},
        {k: v for k, v in good.items() if k != "outputs"},
    ]
    for case in bad_cases:
        assert not validator.is_valid(case), case


def test_drift_result_from_the_monitor_converts() -> None:
    from serve_drift.messages import DriftResult

    result = DriftResult(
        **{k: v for k, v in _example_drift_dict().items() if k != "correlation_ids_sample"}
    )
    record = DriftTestRecord.from_result(result)
    assert record.window_index == 4 and record.trace_id is None and record.is_drift


def test_records_reject_values_json_cannot_hold() -> None:
    with pytest.raises(ValueError, match="confidence"):
        Outputs(predicted_class=1, confidence=float("nan"))
    with pytest.raises(ValueError, match="sampling_weight"):
        make_record(1, sampling_weight=0.1)
    with pytest.raises(ValueError, match="trace_id"):
        make_record(1, trace_id="0x12")
    with pytest.raises(ValueError, match="size limits"):
        make_record(1, context={"k": "v" * 300})
    with pytest.raises(ValueError, match="schema_version"):
        record_from_dict({**make_record(1).to_dict(), "schema_version": 3})


@settings(max_examples=60, deadline=None)
@given(
    raw=st.dictionaries(
        st.text(max_size=100),
        st.one_of(st.none(), st.text(max_size=400), st.integers(), st.floats(allow_nan=True)),
        max_size=40,
    )
)
def test_clean_context_always_yields_a_valid_record(raw: dict, validator) -> None:
    context = clean_context(raw)
    record = make_record(1, context=context)  # would raise if a limit were broken
    validator.validate(record.to_dict())
    assert len(context) <= MAX_CONTEXT_KEYS


def test_clean_context_sanitises_and_limits() -> None:
    raw = {"camera id": "cam\x1b[31m-7\n", "site": None, "x" * 100: "y" * 500}
    raw.update({f"k{i}": i for i in range(30)})
    context = clean_context(raw)
    assert context["camera_id"] == "cam[31m-7"
    assert "site" not in context
    assert context["x" * 64] == "y" * 256
    assert len(context) == MAX_CONTEXT_KEYS
    assert context_from_headers({"X-Serve-Drift-Context-Scene": "night", "Host": "h"}) == {
        "scene": "night"
    }


def test_input_stats_type_round_trips() -> None:
    stats = compute_input_stats(rng_images())
    assert Stats.from_dict(stats.to_dict()) == stats


def test_drift_records_store_fields_the_drift_result_has() -> None:
    from dataclasses import fields

    from serve_drift.messages import DriftResult

    result_fields = {f.name for f in fields(DriftResult)}
    record_fields = {f.name for f in fields(DriftTestRecord)} - {"schema_version"}
    assert record_fields <= result_fields, record_fields - result_fields
