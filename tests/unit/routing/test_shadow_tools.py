"""The shadow CLI's tables and offline reads, and the digits variants the example serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_drift.routing.comparison import Comparison
from serve_drift.routing.config import DecisionConfig
from serve_drift.routing.decision import Evidence, decide
from serve_drift.routing.evidence import ShadowReport
from serve_drift.routing.messages import ArmLineage, RoutingChange, RoutingState
from serve_drift.routing.store import ComparisonStore
from serve_drift.routing.windows import ComparisonWindows
from serve_drift.tools import shadow_cli, shadow_tables
from tests.unit.routing.support import ok, shadow


def _store(path: Path) -> None:
    windows = ComparisonWindows(window_size=3, windows_kept=5)
    records = [
        r
        for i in range(6)
        for r in windows.add(shadow(f"r{i}", ok(i % 3, version="a"), ok(1, version="b")), epoch=0)
    ]
    change = RoutingChange(
        change_id="c1",
        at=100.0,
        action="rollback",
        actor="alert",
        reason="alert firing: CandidateDrift",
        before=RoutingState(),
        after=RoutingState("incumbent", 1, 100.0),
        verdict="rollback",
        arms=(ArmLineage("candidate", "digits-v2", "digits", "m2", "pool@abc", "sha256:abc"),),
    )
    with ComparisonStore(path) as store:
        for record in records:
            store.save_window("shadow", record)
        store.add_change("shadow", change)


def test_the_offline_report_and_history_read_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.sqlite"
    _store(path)
    assert shadow_cli.main(["report", "--store", str(path)]) == 0
    table = capsys.readouterr().out
    assert "agree" in table and "0.333" in table and "0->1 x1" in table
    assert shadow_cli.main(["history", "--store", str(path), "--format", "json"]) == 0
    (change,) = json.loads(capsys.readouterr().out)["changes"]
    assert change["actor"] == "alert" and change["arms"][0]["reference_hash"] == "sha256:abc"


def test_the_live_report_table_shows_routing_windows_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    _store(path)
    with ComparisonStore(path) as store:
        windows = tuple(store.windows("shadow"))
        changes = tuple(store.changes("shadow"))
    decision = decide(Evidence("shadow", 1, 0, None, None, None, Comparison()), DecisionConfig())
    report = ShadowReport(
        "shadow", 1.0, RoutingState("incumbent", 1, 100.0), decision, windows, changes
    )
    body = {**report.to_dict(), "routing": {"mode": "shadow", "mirror_fraction": 1.0}}
    text = shadow_tables.format_report(body)
    assert "traffic all to the incumbent (mode shadow, mirror 100%), epoch 1" in text
    assert "decision: HOLD" in text and "evidence" in text
    # The current epoch has no window yet: the table shows the latest epoch that has.
    assert sum(line.startswith(("   0   0", "   1   0")) for line in text.splitlines()) == 2


def test_the_table_shows_the_current_epochs_windows() -> None:
    windows = [{"epoch": 0, "index": 0}, {"epoch": 1, "index": 1}, {"epoch": 2, "index": 2}]
    assert [w["index"] for w in shadow_tables.shown_windows(windows, epoch=1)] == [1]
    assert [w["index"] for w in shadow_tables.shown_windows(windows, epoch=5)] == [2]


def test_commands_that_talk_to_the_router_need_the_admin_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SERVE_DRIFT_ADMIN_TOKEN", raising=False)
    assert shadow_cli.main(["promote", "--url", "http://127.0.0.1:9"]) == 2
    assert "no admin token" in capsys.readouterr().out


def test_a_router_that_does_not_answer_is_exit_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SERVE_DRIFT_ADMIN_TOKEN", "x" * 32)
    from tests.support.serve import free_port

    assert shadow_cli.main(["report", "--url", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "did not answer" in capsys.readouterr().out


def test_a_digits_variant_is_served_with_its_own_reference() -> None:
    from serve_drift.models import digits
    from serve_drift.reference.embed import embed_outputs
    from serve_drift.reference.reference_set import ReferenceSet
    from serve_drift.tools.shadow_models import DigitsVariant, variant_reference

    variant = DigitsVariant(seed=0, epochs=2)
    path, version = variant_reference(variant)
    model, info = digits.load_or_train_digits_model(seed=0, epochs=2)
    reference = ReferenceSet.load(path)
    expected = embed_outputs(
        model.eval(),
        digits.split_digits(seed=0).reference_images,
        preprocess=digits.preprocess_digits,
    )
    assert version == info.version and reference.lineage.model_version == version
    assert np.allclose(reference.embeddings, expected.embeddings)
    _, default = digits.load_or_train_digits_model()
    assert version != default.version


def test_the_variant_classifier_answers_with_the_variant_model() -> None:
    from serve_drift.models import digits
    from serve_drift.tools.shadow_models import VariantClassifier

    classifier = VariantClassifier({"source": "digits"}, variant={"seed": 0, "epochs": 2})
    variant, info = digits.load_or_train_digits_model(seed=0, epochs=2)
    assert classifier.loaded.version == info.version
    x = digits.preprocess_digits(digits.split_digits(seed=0).test_images[:8])
    with torch.no_grad():
        assert torch.equal(classifier.model(x), variant(x))
    assert [name for name, v in vars(classifier).items() if isinstance(v, torch.nn.Module)] == [
        "model"
    ]
