"""What counts as an answer, and what counts as garbage."""

from __future__ import annotations

import json

import pytest
from starlette.responses import JSONResponse, Response

from serve_drift.routing.answers import read_answer
from serve_drift.routing.comparison import reconcile
from tests.unit.routing.support import ok


def test_the_ready_made_apps_answer_is_read_from_its_json_response() -> None:
    body = {"class_index": 4, "confidence": 0.75, "model_version": "digits-1", "top_k": []}
    answer = read_answer(JSONResponse(body), latency_s=0.002)
    assert answer.ok and answer.http_status == 200
    assert [(r.predicted, r.confidence) for r in answer.rows] == [(4, 0.75)]
    assert answer.model_version == "digits-1" and answer.latency_s == 0.002


def test_a_batch_answer_gives_one_row_per_input() -> None:
    body = {"predictions": [{"class_index": 1, "confidence": 0.5}, {"class": 2, "confidence": 1}]}
    answer = read_answer(body, latency_s=0.0)
    assert [r.predicted for r in answer.rows] == [1, 2]


@pytest.mark.parametrize(
    ("result", "detail"),
    [
        (b"\x89PNG not json", "not JSON"),
        ("[1, 2]", "a list, not an object"),
        ({"confidence": 0.9}, "class_index is not a non-negative integer"),
        ({"class_index": -1, "confidence": 0.9}, "class_index is not a non-negative integer"),
        ({"class_index": True, "confidence": 0.9}, "class_index is not a non-negative integer"),
        ({"class_index": 3, "confidence": float("nan")}, "confidence is not a finite"),
        ({"class_index": 3, "confidence": float("inf")}, "confidence is not a finite"),
        ({"class_index": 3, "confidence": 1.5}, "confidence is not a finite"),
        ({"class_index": 3, "confidence": "high"}, "confidence is not a finite"),
        ({"predictions": []}, "predictions must be a list"),
        ({"predictions": [[1]]}, "a prediction is not an object"),
        (
            Response(b'{"class_index": 1, "confidence": NaN}', media_type="application/json"),
            "confidence is not a finite",
        ),
    ],
)
def test_garbage_is_an_invalid_answer_that_says_why(result: object, detail: str) -> None:
    answer = read_answer(result, latency_s=0.01)
    assert answer.status == "invalid" and not answer.rows
    assert detail in answer.detail


def test_an_error_status_is_an_error_answer() -> None:
    answer = read_answer(JSONResponse({"error": {"code": "internal_error"}}, 500), latency_s=0.1)
    assert (answer.status, answer.http_status) == ("error", 500)


def test_a_candidate_answering_another_number_of_rows_is_garbage() -> None:
    two_rows = read_answer(
        {"predictions": [{"class_index": 1, "confidence": 0.5}] * 2}, latency_s=0.0
    )
    fixed = reconcile(ok(1), two_rows)
    assert fixed.status == "invalid" and "2 rows" in fixed.detail
    assert reconcile(ok(1), ok(2)) == ok(2)


def test_json_with_nan_written_by_a_lenient_encoder_is_refused() -> None:
    text = json.dumps({"class_index": 1, "confidence": float("nan")})  # 'NaN' in the text
    assert read_answer(text.encode(), latency_s=0.0).status == "invalid"
