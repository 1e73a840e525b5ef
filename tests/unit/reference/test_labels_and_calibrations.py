"""Labels and calibration draws in reference files: hashed arrays plus JSON, never pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_drift import ReferenceSet
from serve_drift.reference import StoredCalibration
from serve_drift.reference.reference_set import ReferenceIntegrityError


def labelled(rows: int = 20) -> ReferenceSet:
    rng = np.random.default_rng(0)
    return ReferenceSet.from_embeddings(
        rng.normal(size=(rows, 3)),
        probabilities=rng.dirichlet(np.ones(4), size=rows),
        labels=rng.integers(4, size=rows),
        model_name="m",
        model_version="1",
        data_version="d",
    )


def draws(key: str = "k1", value: float = 0.5) -> StoredCalibration:
    return StoredCalibration(
        key=key,
        metadata={"window_size": 10, "detector": {"kind": "mmd"}},
        null_p_values=np.full((3, 5), value),
    )


def _rewrite(path: Path, **changes: np.ndarray) -> None:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def test_labels_round_trip_with_their_own_hash(tmp_path: Path) -> None:
    reference = labelled()
    loaded = ReferenceSet.load(reference.save(tmp_path / "ref.npz"))
    assert loaded.labels is not None and loaded.labels.dtype == np.int64
    np.testing.assert_array_equal(loaded.labels, reference.labels)
    assert loaded.lineage.labels_hash.startswith("sha256:") and not loaded.labels.flags.writeable


def test_tampered_labels_are_refused(tmp_path: Path) -> None:
    path = labelled().save(tmp_path / "ref.npz")
    _rewrite(path, labels=np.zeros(20, dtype=np.int64))
    with pytest.raises(ReferenceIntegrityError, match="labels hash") as error:
        ReferenceSet.load(path)
    assert error.value.code == "reference_hash_mismatch"


def test_labels_must_be_one_class_index_per_row() -> None:
    with pytest.raises(ValueError, match="20 integer class indices"):
        ReferenceSet.from_embeddings(
            np.ones((20, 2)),
            labels=np.ones(19, dtype=int),
            model_name="m",
            model_version="1",
            data_version="d",
        )
    with pytest.raises(ValueError, match="integer"):
        ReferenceSet.from_embeddings(
            np.ones((2, 2)),
            labels=[0.5, 1.0],
            model_name="m",
            model_version="1",
            data_version="d",
        )


def test_calibrations_round_trip_and_leave_the_version_alone(tmp_path: Path) -> None:
    reference = labelled()
    calibrated = reference.with_calibrations([draws("a"), draws("b", 0.25)])
    assert calibrated.version == reference.version
    loaded = ReferenceSet.load(calibrated.save(tmp_path / "ref.npz"))
    assert [c.key for c in loaded.calibrations] == ["a", "b"]
    stored = loaded.calibration("b")
    assert stored is not None and stored.metadata["window_size"] == 10
    np.testing.assert_array_equal(stored.null_p_values, np.full((3, 5), 0.25))
    entry = loaded.lineage_dict()["calibrations"][1]
    assert entry["array"] == "calibration_1" and entry["hash"].startswith("sha256:")
    assert loaded.calibration("missing") is None


def test_a_calibration_with_the_same_key_replaces_the_old_one() -> None:
    calibrated = labelled().with_calibrations([draws("a"), draws("b")])
    replaced = calibrated.with_calibrations([draws("a", 0.1)])
    assert [c.key for c in replaced.calibrations] == ["b", "a"]
    assert replaced.calibration("a").null_p_values[0, 0] == 0.1  # type: ignore[union-attr]


def test_tampered_or_missing_calibration_arrays_are_refused(tmp_path: Path) -> None:
    path = labelled().with_calibrations([draws()]).save(tmp_path / "ref.npz")
    _rewrite(path, calibration_0=np.full((3, 5), 0.01))
    with pytest.raises(ReferenceIntegrityError, match="hash") as error:
        ReferenceSet.load(path)
    assert error.value.code == "reference_hash_mismatch"
    with np.load(path, allow_pickle=False) as archive:
        kept = {k: archive[k] for k in archive.files if k != "calibration_0"}
    np.savez(path, **kept)
    with pytest.raises(ReferenceIntegrityError) as error:
        ReferenceSet.load(path)
    assert error.value.code == "reference_missing_key"


def test_calibration_draws_must_be_finite_json_described_arrays() -> None:
    with pytest.raises(ValueError, match="finite 2-D"):
        labelled().with_calibrations(
            [StoredCalibration(key="x", metadata={}, null_p_values=np.full(5, np.nan))]
        )
    with pytest.raises(TypeError):
        labelled().with_calibrations(
            [StoredCalibration(key="x", metadata={"f": object()}, null_p_values=np.ones((2, 5)))]
        )


def test_files_without_labels_or_calibrations_still_load(tmp_path: Path) -> None:
    plain = ReferenceSet.from_embeddings(
        np.arange(10.0).reshape(5, 2), model_name="m", model_version="1", data_version="d"
    )
    loaded = ReferenceSet.load(plain.save(tmp_path / "plain.npz"))
    assert loaded.labels is None and loaded.calibrations == ()
    assert loaded.lineage.labels_hash == "" and loaded.lineage.calibrations == ()
