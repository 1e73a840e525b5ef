"""Reference sets: npz + JSON lineage round trips, integrity checks, no pickle."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serve_drift.reference.reference_set import (
    ReferenceIntegrityError,
    ReferenceLineage,
    ReferenceSet,
    content_hash,
    read_reference_version,
)


def _reference(rows: int = 40, dim: int = 6) -> ReferenceSet:
    embeddings = np.random.default_rng(0).normal(size=(rows, dim))
    return ReferenceSet.from_embeddings(
        embeddings,
        model_name="digits-cnn",
        model_version="v3",
        data_version="digits-2024-06",
        preprocessing="scale to [0, 1]",
        source="unit test",
    )


def _rewrite(path: Path, **arrays: np.ndarray) -> None:
    """Rewrite ``path`` with some arrays replaced, as a tamperer would."""
    with np.load(path, allow_pickle=False) as archive:
        current = {key: archive[key] for key in archive.files}
    np.savez(path, **{**current, **arrays})


def test_round_trip_keeps_embeddings_and_lineage(tmp_path: Path) -> None:
    reference = _reference()
    path = reference.save(tmp_path / "nested" / "ref.npz")
    loaded = ReferenceSet.load(path)
    np.testing.assert_array_equal(loaded.embeddings, reference.embeddings)
    assert loaded.embeddings.dtype == np.float32
    assert loaded.lineage == reference.lineage
    assert loaded.version == reference.version == read_reference_version(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ref.npz"]  # no temp file left


def test_lineage_fields_are_present() -> None:
    reference = _reference(rows=40, dim=6)
    lineage = reference.lineage
    assert (lineage.model_name, lineage.model_version) == ("digits-cnn", "v3")
    assert (lineage.count, lineage.dim) == (40, 6)
    assert (lineage.preprocessing, lineage.source) == ("scale to [0, 1]", "unit test")
    assert lineage.content_hash == content_hash(reference.embeddings)
    assert datetime.fromisoformat(lineage.created_at).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert reference.version == f"digits-2024-06@{lineage.content_hash[7:19]}"
    assert reference.lineage_dict()["version"] == reference.version


def test_file_layout_is_plain_arrays(tmp_path: Path) -> None:
    path = _reference().save(tmp_path / "ref.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["embeddings", "lineage_json"]
        assert archive["lineage_json"].dtype == np.uint8
        lineage = json.loads(archive["lineage_json"].tobytes())
    assert lineage["schema"] == "serve-drift.reference/v1"


def test_tampered_embeddings_are_detected(tmp_path: Path) -> None:
    reference = _reference()
    path = reference.save(tmp_path / "ref.npz")
    tampered = reference.embeddings.copy()
    tampered[5, 2] += 0.5
    _rewrite(path, embeddings=tampered)
    with pytest.raises(ReferenceIntegrityError, match="modified or corrupted") as info:
        ReferenceSet.load(path)
    assert info.value.code == "reference_hash_mismatch"


def test_tampered_lineage_count_is_detected(tmp_path: Path) -> None:
    reference = _reference()
    path = reference.save(tmp_path / "ref.npz")
    lineage = {"schema": "serve-drift.reference/v1", **reference.lineage.to_dict(), "count": 41}
    _rewrite(path, lineage_json=np.frombuffer(json.dumps(lineage).encode(), dtype=np.uint8))
    with pytest.raises(ReferenceIntegrityError) as info:
        ReferenceSet.load(path)
    assert info.value.code == "reference_lineage_mismatch"


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    path = _reference().save(tmp_path / "ref.npz")
    payload = np.empty(1, dtype=object)
    payload[0] = {"evil": "pickle"}
    _rewrite(path, lineage_json=payload)
    with pytest.raises(ReferenceIntegrityError, match="refusing") as info:
        ReferenceSet.load(path)
    assert info.value.code == "reference_pickle_refused"


def test_missing_key_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "ref.npz"
    np.savez(path, embeddings=np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(ReferenceIntegrityError, match="no 'lineage_json' array") as info:
        ReferenceSet.load(path)
    assert info.value.code == "reference_missing_key"


@pytest.mark.parametrize(
    "content",
    [b"not a zip at all", b"PK\x03\x04truncated", b"\x80\x04\x95pickle"],
    ids=["text", "truncated-zip", "pickle"],
)
def test_corrupt_files_are_reported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ref.npz"
    path.write_bytes(content)
    with pytest.raises(ReferenceIntegrityError) as info:
        ReferenceSet.load(path)
    assert info.value.code == "reference_corrupt"


def test_single_npy_array_is_not_a_reference(tmp_path: Path) -> None:
    path = tmp_path / "ref.npy"
    np.save(path, np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(ReferenceIntegrityError, match="single array"):
        ReferenceSet.load(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ReferenceSet.load(tmp_path / "absent.npz")
    assert read_reference_version(None) == "none"


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        (np.array([[1.0, np.nan]]), "NaN or infinite"),
        (np.array([[1e39, 0.0]]), "NaN or infinite"),  # finite float64, inf as float32
        (np.zeros(4), "2-D"),
        (np.zeros((0, 4)), "2-D"),
        (np.array([["a", "b"]]), "numeric"),
    ],
    ids=["nan", "float32-overflow", "1-d", "empty", "strings"],
)
def test_from_embeddings_validates(embeddings: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReferenceSet.from_embeddings(
            embeddings, model_name="m", model_version="1", data_version="d"
        )


def test_embeddings_are_a_read_only_copy() -> None:
    source = np.ones((12, 3))
    reference = ReferenceSet.from_embeddings(
        source, model_name="m", model_version="1", data_version="d"
    )
    source[0, 0] = 5.0
    assert reference.embeddings[0, 0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        reference.embeddings[0, 0] = 2.0


def test_constructor_checks_the_hash() -> None:
    reference = _reference()
    other = np.zeros_like(reference.embeddings)
    with pytest.raises(ReferenceIntegrityError):
        ReferenceSet(embeddings=other, lineage=reference.lineage)
    assert isinstance(reference.lineage, ReferenceLineage)


@settings(max_examples=60, deadline=None)
@given(
    array=hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    position=st.integers(0, 35),
    delta=st.floats(1.0, 10.0),
)
def test_content_hash_changes_iff_data_changes(
    array: np.ndarray, position: int, delta: float
) -> None:
    # Layout is not content: a Fortran-ordered copy hashes the same.
    assert content_hash(np.asfortranarray(array)) == content_hash(array.copy())
    changed = array.copy()
    changed.flat[position % array.size] += delta
    assert content_hash(changed) != content_hash(array)
    # Same bytes under another shape or dtype are other data.
    assert content_hash(array.reshape(1, -1)) != content_hash(array) or array.shape[0] == 1
    assert content_hash(array.view(np.uint8)) != content_hash(array)
