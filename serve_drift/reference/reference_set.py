"""Reference sets: float32 embeddings plus JSON lineage in one ``.npz`` file, never pickle.

The file holds ``embeddings`` (float32, (N, d)), optionally ``probabilities`` (float32, (N, C):
the model's softmax outputs on the same images, for BBSD and the default detector's confidence
test), optionally ``labels`` (int64, (N,): the true classes, for the label-free accuracy
estimate's fit), optionally ``calibration_<i>`` (float64 (S, J): the null p-values a detector's
calibration drew for this reference, see :mod:`serve_drift.detectors.calibration`), and
``lineage_json`` (the lineage as UTF-8 JSON bytes in a uint8 array, so loading never needs
``allow_pickle``). The lineage carries SHA-256 content hashes of every array, which
:meth:`ReferenceSet.load` verifies; each calibration's entry also says what drew it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serve_drift.errors import ServeDriftError
from serve_drift.files import atomic_write

# Bumped if the file layout changes; load refuses layouts it does not know.
_SCHEMA = "serve-drift.reference/v1"
_EMBEDDINGS_KEY = "embeddings"
_PROBABILITIES_KEY = "probabilities"
_LINEAGE_KEY = "lineage_json"
_LABELS_KEY = "labels"
_CALIBRATION_PREFIX = "calibration_"
_HASH_PREFIX = "sha256:"


class ReferenceIntegrityError(ServeDriftError, ValueError):
    """A reference file that is corrupt, unsafe to load, or does not match its own lineage.

    ``code`` is stable for telemetry and API errors: ``reference_hash_mismatch``,
    ``reference_missing_key``, ``reference_corrupt``, ``reference_pickle_refused``,
    ``reference_lineage_invalid`` or ``reference_lineage_mismatch``.
    """

    def __init__(self, message: str, *, code: str = "reference_corrupt") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ReferenceLineage:
    """Where a reference set came from; stored as JSON beside the embeddings."""

    model_name: str
    model_version: str
    data_version: str
    created_at: str
    count: int
    dim: int
    content_hash: str
    preprocessing: str = ""
    source: str = ""
    # Empty when the set has no probabilities (older files, or a model without logits).
    probabilities_hash: str = ""
    num_classes: int = 0
    # Empty when the set has no labels.
    labels_hash: str = ""
    # One entry per stored calibration: key, array name, shape, hash and what drew it.
    calibrations: tuple[dict[str, Any], ...] = ()
    # What the embeddings were computed by and from (empty when not known): the model's
    # source ("factory my_model:make_model", "torchvision resnet18"), the sha256 of its
    # weights file, and a sha256 over the input files (names and contents) or array.
    model_source: str = ""
    weights_hash: str = ""
    data_hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CalibrationDraws(Protocol):
    """What :meth:`ReferenceSet.with_calibrations` stores (``serve_drift.detectors``'s
    ``NullDraws``, or a :class:`StoredCalibration` read back)."""

    @property
    def key(self) -> str: ...

    @property
    def metadata(self) -> Mapping[str, Any]: ...

    @property
    def null_p_values(self) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class StoredCalibration:
    """Null p-values one detector's calibration drew for this reference (S references x J
    windows), identified by ``key``; ``metadata`` says what drew them (detector, window size,
    plan), as JSON. Made by :mod:`serve_drift.detectors.calibration`, only stored here."""

    key: str
    metadata: dict[str, Any]
    null_p_values: np.ndarray


# eq=False: dataclass equality would compare arrays elementwise and raise.
@dataclass(frozen=True, eq=False)
class ReferenceSet:
    """Reference embeddings (float32, (N, d), read-only) and their lineage.

    Construction checks that the embeddings match the lineage's shape and content hash.

    >>> import numpy as np, tempfile, pathlib
    >>> ref = ReferenceSet.from_embeddings(
    ...     np.ones((3, 2)), model_name="m", model_version="1", data_version="d1")
    >>> path = ref.save(pathlib.Path(tempfile.mkdtemp()) / "ref.npz")
    >>> ReferenceSet.load(path).version == ref.version
    True
    """

    embeddings: np.ndarray
    lineage: ReferenceLineage
    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None
    calibrations: tuple[StoredCalibration, ...] = ()

    def __post_init__(self) -> None:
        embeddings = self.embeddings
        if not (isinstance(embeddings, np.ndarray) and embeddings.dtype == np.float32):
            raise ReferenceIntegrityError(
                "reference embeddings must be a float32 numpy array", code="reference_corrupt"
            )
        _check_lineage_matches(embeddings, self.lineage)
        _check_probabilities_match(self.probabilities, self.lineage)
        _check_labels_match(self.labels, self.lineage)
        _check_calibrations_match(self.calibrations, self.lineage)
        # Read-only views, so a frozen ReferenceSet cannot be changed through its attributes.
        object.__setattr__(self, "embeddings", _read_only(embeddings))
        if self.probabilities is not None:
            object.__setattr__(self, "probabilities", _read_only(self.probabilities))
        if self.labels is not None:
            object.__setattr__(self, "labels", _read_only(self.labels))

    @classmethod
    def from_embeddings(
        cls,
        embeddings: Any,
        *,
        model_name: str,
        model_version: str,
        data_version: str,
        preprocessing: str = "",
        source: str = "",
        probabilities: Any | None = None,
        labels: Any | None = None,
        model_source: str = "",
        weights_hash: str = "",
        data_hash: str = "",
    ) -> ReferenceSet:
        """A reference set from (N, d) embeddings, stored as a float32 copy.

        ``probabilities`` (N, C) are the model's softmax outputs on the same inputs, if any;
        ``labels`` (N,) their true classes, if known (the accuracy estimate is fitted on them);
        ``model_source``, ``weights_hash`` and ``data_hash`` go into the lineage as given.
        """
        array = _as_reference_array(embeddings)
        probs = None if probabilities is None else _as_probability_array(probabilities, array)
        classes = None if labels is None else _as_label_array(labels, array)
        lineage = ReferenceLineage(
            model_name=model_name,
            model_version=model_version,
            data_version=data_version,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            count=int(array.shape[0]),
            dim=int(array.shape[1]),
            content_hash=content_hash(array),
            preprocessing=preprocessing,
            source=source,
            probabilities_hash="" if probs is None else content_hash(probs),
            num_classes=0 if probs is None else int(probs.shape[1]),
            labels_hash="" if classes is None else content_hash(classes),
            model_source=model_source,
            weights_hash=weights_hash,
            data_hash=data_hash,
        )
        return cls(embeddings=array, lineage=lineage, probabilities=probs, labels=classes)

    def with_calibrations(self, stored: Sequence[CalibrationDraws]) -> ReferenceSet:
        """This set with ``stored`` calibrations added (replacing any with the same key).

        The embeddings' hash, hence :attr:`version`, does not change: a calibration is
        derived from the reference, not part of it.
        """
        new_keys = {item.key for item in stored}
        kept = [item for item in self.calibrations if item.key not in new_keys]
        calibrations = tuple(kept) + tuple(_checked_calibration(item) for item in stored)
        entries = tuple(
            _calibration_entry(item, index=index) for index, item in enumerate(calibrations)
        )
        return dataclasses.replace(
            self,
            lineage=dataclasses.replace(self.lineage, calibrations=entries),
            calibrations=calibrations,
        )

    def calibration(self, key: str) -> StoredCalibration | None:
        """The stored calibration with this key, if any."""
        return next((item for item in self.calibrations if item.key == key), None)

    @property
    def version(self) -> str:
        """Short id for telemetry: ``<data_version>@<first 12 hex digits of the hash>``."""
        return _version(self.lineage)

    def lineage_dict(self) -> dict[str, Any]:
        """The lineage as a JSON-ready dict, with ``version`` added."""
        return {**self.lineage.to_dict(), "version": self.version}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one ``.npz`` file atomically (temporary file, then ``os.replace``)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        lineage_bytes = json.dumps(
            {"schema": _SCHEMA, **self.lineage.to_dict()}, sort_keys=True
        ).encode("utf-8")
        arrays = {
            _EMBEDDINGS_KEY: np.ascontiguousarray(self.embeddings),
            _LINEAGE_KEY: np.frombuffer(lineage_bytes, dtype=np.uint8),
        }
        if self.probabilities is not None:
            arrays[_PROBABILITIES_KEY] = np.ascontiguousarray(self.probabilities)
        if self.labels is not None:
            arrays[_LABELS_KEY] = np.ascontiguousarray(self.labels)
        for entry, item in zip(self.lineage.calibrations, self.calibrations, strict=True):
            arrays[entry["array"]] = np.ascontiguousarray(item.null_p_values)
        atomic_write(target, lambda stream: np.savez(stream, **arrays))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceSet:
        """Read and verify a file written by :meth:`save`; never unpickles anything.

        Raises ``FileNotFoundError`` for a missing file and :class:`ReferenceIntegrityError`
        for anything else wrong with it.
        """
        with _open_archive(Path(path)) as archive:
            lineage = _parse_lineage(_read_member(archive, _LINEAGE_KEY))
            embeddings = _read_member(archive, _EMBEDDINGS_KEY)
            probabilities = (
                _read_member(archive, _PROBABILITIES_KEY) if lineage.probabilities_hash else None
            )
            labels = _read_member(archive, _LABELS_KEY) if lineage.labels_hash else None
            calibrations = tuple(
                _stored_calibration(entry, _read_member(archive, str(entry.get("array"))))
                for entry in lineage.calibrations
            )
        return cls(
            embeddings=embeddings,
            lineage=lineage,
            probabilities=probabilities,
            labels=labels,
            calibrations=calibrations,
        )


def content_hash(embeddings: np.ndarray) -> str:
    """``"sha256:<hex>"`` over the dtype, the shape and the C-contiguous bytes.

    Dtype and shape are hashed too, so the same bytes read as a different array never match.

    >>> content_hash(np.zeros((2, 2), dtype=np.float32))[:7]
    'sha256:'
    """
    array = np.ascontiguousarray(embeddings)
    digest = hashlib.sha256()
    header = f"{array.dtype.str}|{','.join(str(n) for n in array.shape)}|"
    digest.update(header.encode("ascii"))
    # A flat byte view hashes the data without copying it.
    digest.update(array.reshape(-1).view(np.uint8).data)
    return _HASH_PREFIX + digest.hexdigest()


def read_reference_version(path: str | os.PathLike[str] | None) -> str:
    """The reference version recorded in a file's lineage, or ``"none"`` without a path.

    Reads only the lineage (cheap, for replicas that tag telemetry with it); it does not
    verify the content hash, which :meth:`ReferenceSet.load` does.
    """
    if path is None:
        return "none"
    with _open_archive(Path(path)) as archive:
        return _version(_parse_lineage(_read_member(archive, _LINEAGE_KEY)))


def _version(lineage: ReferenceLineage) -> str:
    return f"{lineage.data_version}@{lineage.content_hash.removeprefix(_HASH_PREFIX)[:12]}"


def _as_reference_array(embeddings: Any) -> np.ndarray:
    array = np.asarray(embeddings)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"reference embeddings must be a non-empty 2-D array, got {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"reference embeddings must be numeric, got dtype {array.dtype}")
    # Checked after the cast: a finite float64 beyond float32's range becomes inf.
    with np.errstate(over="ignore"):
        array = np.array(array, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(array).all():
        raise ValueError("reference embeddings contain NaN or infinite values (as float32)")
    return array


def _as_probability_array(probabilities: Any, embeddings: np.ndarray) -> np.ndarray:
    array = np.array(probabilities, dtype=np.float32, order="C", copy=True)
    if array.ndim != 2 or array.shape[0] != embeddings.shape[0] or array.shape[1] < 2:
        raise ValueError(
            f"reference probabilities must be (N, C) with N = {embeddings.shape[0]} rows and "
            f"C >= 2 classes, got {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("reference probabilities contain NaN or infinite values")
    return array


def _as_label_array(labels: Any, embeddings: np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != (embeddings.shape[0],) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"reference labels must be {embeddings.shape[0]} integer class indices, got "
            f"{array.dtype} {array.shape}"
        )
    if (array < 0).any():
        raise ValueError("reference labels must be non-negative class indices")
    return np.array(array, dtype=np.int64, order="C", copy=True)


def _check_labels_match(labels: Any, lineage: ReferenceLineage) -> None:
    _check_optional(
        labels,
        what="labels",
        dtype=np.int64,
        shape=(lineage.count,),
        recorded_hash=lineage.labels_hash,
    )


def _checked_calibration(item: CalibrationDraws) -> StoredCalibration:
    array = np.asarray(item.null_p_values, dtype=np.float64)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise ValueError(f"calibration {item.key!r}: null p-values must be a finite 2-D array")
    json.dumps(item.metadata)  # JSON only: fails here, not when saving
    return StoredCalibration(key=item.key, metadata=dict(item.metadata), null_p_values=array)


def _calibration_entry(item: StoredCalibration, *, index: int) -> dict[str, Any]:
    return {
        "key": item.key,
        "array": f"{_CALIBRATION_PREFIX}{index}",
        "shape": list(item.null_p_values.shape),
        "hash": content_hash(item.null_p_values),
        "metadata": item.metadata,
    }


def _stored_calibration(entry: dict[str, Any], array: np.ndarray) -> StoredCalibration:
    return StoredCalibration(
        key=str(entry.get("key")), metadata=dict(entry.get("metadata") or {}), null_p_values=array
    )


def _check_calibrations_match(
    calibrations: tuple[StoredCalibration, ...], lineage: ReferenceLineage
) -> None:
    if len(calibrations) != len(lineage.calibrations):
        raise ReferenceIntegrityError(
            f"lineage records {len(lineage.calibrations)} calibrations, the set has "
            f"{len(calibrations)}",
            code="reference_lineage_mismatch",
        )
    for entry, item in zip(lineage.calibrations, calibrations, strict=True):
        if entry.get("key") != item.key or item.null_p_values.dtype != np.float64:
            raise ReferenceIntegrityError(
                f"calibration {item.key!r} does not match its lineage entry",
                code="reference_lineage_mismatch",
            )
        _check_recorded(
            item.null_p_values,
            what=f"calibration {item.key!r}",
            shape=tuple(entry.get("shape") or ()),
            recorded_hash=entry.get("hash"),
        )


def _check_probabilities_match(probabilities: Any, lineage: ReferenceLineage) -> None:
    _check_optional(
        probabilities,
        what="probabilities",
        dtype=np.float32,
        shape=(lineage.count, lineage.num_classes),
        recorded_hash=lineage.probabilities_hash,
    )


def _check_optional(
    array: Any, *, what: str, dtype: Any, shape: tuple[int, ...], recorded_hash: str
) -> None:
    """An optional array: absent exactly when the lineage records no hash for it, else of the
    recorded dtype, shape and hash."""
    if array is None:
        if recorded_hash:
            raise ReferenceIntegrityError(
                f"lineage records {what} but the reference set has none",
                code="reference_lineage_mismatch",
            )
        return
    if not (isinstance(array, np.ndarray) and array.dtype == dtype):
        raise ReferenceIntegrityError(
            f"reference {what} must be a {np.dtype(dtype).name} numpy array",
            code="reference_corrupt",
        )
    _check_recorded(array, what=what, shape=shape, recorded_hash=recorded_hash)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _check_lineage_matches(embeddings: np.ndarray, lineage: ReferenceLineage) -> None:
    _check_recorded(
        embeddings,
        what="embeddings",
        shape=(lineage.count, lineage.dim),
        recorded_hash=lineage.content_hash,
    )


def _check_recorded(
    array: np.ndarray, *, what: str, shape: tuple[int, ...], recorded_hash: str | None
) -> None:
    """The array has the shape and content hash its lineage recorded."""
    if array.shape != shape:
        raise ReferenceIntegrityError(
            f"{what} have shape {array.shape}, lineage says {shape}",
            code="reference_lineage_mismatch",
        )
    actual = content_hash(array)
    if actual != recorded_hash:
        raise ReferenceIntegrityError(
            f"reference {what} hash to {actual}, lineage records {recorded_hash}: "
            "the file was modified or corrupted",
            code="reference_hash_mismatch",
        )


def _open_archive(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"reference file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:  # numpy's refusal to unpickle a non-npz file
        raise ReferenceIntegrityError(
            f"{path} is not a reference .npz file (numpy: {exc})", code="reference_corrupt"
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ReferenceIntegrityError(
            f"{path} could not be read as .npz: {exc}", code="reference_corrupt"
        ) from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ReferenceIntegrityError(
            f"{path} holds a single array, not a reference .npz archive",
            code="reference_corrupt",
        )
    return loaded


def _read_member(archive: Any, key: str) -> np.ndarray:
    if key not in archive.files:
        raise ReferenceIntegrityError(
            f"reference file has no {key!r} array (found: {', '.join(archive.files) or 'none'})",
            code="reference_missing_key",
        )
    try:
        return archive[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ReferenceIntegrityError(
                f"reference array {key!r} is a pickled object array; refusing to load it",
                code="reference_pickle_refused",
            ) from exc
        raise ReferenceIntegrityError(
            f"reference array {key!r} is unreadable: {exc}", code="reference_corrupt"
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ReferenceIntegrityError(
            f"reference array {key!r} is unreadable: {exc}", code="reference_corrupt"
        ) from exc


def _parse_lineage(raw: np.ndarray) -> ReferenceLineage:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ReferenceIntegrityError(
            f"lineage must be a 1-D uint8 byte array, got {raw.dtype} {raw.shape}",
            code="reference_lineage_invalid",
        )
    try:
        data = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReferenceIntegrityError(
            f"lineage is not valid UTF-8 JSON: {exc}", code="reference_lineage_invalid"
        ) from exc
    return _lineage_from_dict(data)


def _lineage_from_dict(data: Any) -> ReferenceLineage:
    if not isinstance(data, dict) or data.get("schema") != _SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ReferenceIntegrityError(
            f"unknown reference lineage schema {found!r}, expected {_SCHEMA!r}",
            code="reference_lineage_invalid",
        )
    names = {field.name for field in fields(ReferenceLineage)}
    # Unknown keys are ignored so that a newer writer adding fields stays readable.
    known = {key: value for key, value in data.items() if key in names}
    entries = known.get("calibrations", [])
    if not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
        raise ReferenceIntegrityError(
            "lineage calibrations must be a list of objects", code="reference_lineage_invalid"
        )
    known["calibrations"] = tuple(entries)
    try:
        return ReferenceLineage(**known)
    except TypeError as exc:
        raise ReferenceIntegrityError(
            f"lineage is missing fields: {exc}", code="reference_lineage_invalid"
        ) from exc
