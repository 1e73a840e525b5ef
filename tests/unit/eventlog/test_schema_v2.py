"""Event schema v2: the calibration and accuracy-estimate fields; v1 documents and stores."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import jsonschema

from serve_drift.eventlog.labels import compute_metrics, metrics_record
from serve_drift.eventlog.schema import (
    SCHEMA_VERSION,
    ConceptMetricsRecord,
    DriftTestRecord,
    _example_drift_dict,
    load_json_schema,
    record_from_dict,
    record_from_json,
)
from serve_drift.eventlog.store import EventStore

# What version 2 added to drift records (issue 10, then the reference's model version).
V2_DRIFT_FIELDS = (
    "uncalibrated_p_value",
    "estimated_accuracy",
    "reference_model_version",
    "version_mismatch",
)


def _validator(version: int) -> jsonschema.Draft202012Validator:
    schema = load_json_schema(version)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_drift_records_carry_the_raw_p_value_and_the_accuracy_estimate() -> None:
    record = DriftTestRecord.from_result(
        {**_example_drift_dict(), "uncalibrated_p_value": 0.004, "estimated_accuracy": 0.71}
    )
    data = record.to_dict()
    assert SCHEMA_VERSION == 2 and data["schema_version"] == 2
    assert (data["uncalibrated_p_value"], data["estimated_accuracy"]) == (0.004, 0.71)
    _validator(2).validate(data)
    assert record_from_json(record.to_json()) == record


def test_concept_metrics_carry_the_window_estimate() -> None:
    metrics = compute_metrics(y_true=[0, 1, 1], y_pred=[0, 1, 0], confidence=[0.9, 0.8, 0.6])
    record = metrics_record(
        metrics,
        tag="feedback",
        model_name="m",
        model_version="1",
        window_index=3,
        estimated_accuracy=0.7,
    )
    _validator(2).validate(record.to_dict())
    assert ConceptMetricsRecord.from_dict(record.to_dict()).estimated_accuracy == 0.7


def test_v1_documents_stay_readable_and_write_back_as_v1() -> None:
    v1 = {**DriftTestRecord.from_result(_example_drift_dict()).to_dict(), "schema_version": 1}
    for field in V2_DRIFT_FIELDS:
        v1.pop(field)
    _validator(1).validate(v1)
    record = record_from_dict(v1)
    assert isinstance(record, DriftTestRecord) and record.estimated_accuracy is None
    assert record.to_dict() == v1  # unchanged: still a valid v1 document
    _validator(1).validate(record.to_dict())


def test_a_store_written_by_v1_code_opens_and_takes_v2_records(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    with EventStore(path) as store:
        store.write_drift_results([DriftTestRecord.from_result(_example_drift_dict())])
    v1 = DriftTestRecord.from_result(_example_drift_dict()).to_dict()
    v1 = {k: v for k, v in v1.items() if k not in V2_DRIFT_FIELDS}
    with sqlite3.connect(path) as db:  # as v1 code left it: a v1 document, a v1 store
        db.execute(
            "UPDATE drift_results SET record = ?", (json.dumps({**v1, "schema_version": 1}),)
        )
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    newer = {**_example_drift_dict(), "test_id": "t-2", "estimated_accuracy": 0.5}
    with EventStore(path) as store:
        store.write_drift_results([DriftTestRecord.from_result(newer)])
        by_id = {r.test_id: r for r in store.drift_results()}
    assert by_id["t-1"].schema_version == 1 and by_id["t-1"].estimated_accuracy is None
    assert by_id["t-2"].schema_version == 2 and by_id["t-2"].estimated_accuracy == 0.5
