"""Where a reference set's inputs come from: a folder, a glob, a manifest, or an ``.npy``.

- **a folder**, searched recursively for image files (sorted by path);
- **a glob**, ``"/data/val/**/*.png"`` (sorted);
- **a manifest**, ``.csv`` with a ``path`` column (and optionally ``label``) or ``.jsonl`` with
  one ``{"path": ..., "label": ...}`` per line, paths relative to the manifest;
- **an ``.npy``** array of model inputs (``N`` rows), read with ``allow_pickle=False``.

Each source has a ``data_hash``: a sha256 over every file's relative name and content hash (or
over the array's bytes), which a reference set's lineage records as what it was built from.

>>> import tempfile, pathlib, numpy as np
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> np.save(folder / "inputs.npy", np.zeros((4, 1, 8, 8), np.float32))
>>> found = image_source(folder / "inputs.npy")
>>> found.count, found.kind, found.data_hash.startswith("sha256:")
(4, 'npy', True)
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serve_drift.errors import CodedError
from serve_drift.reference.build import IMAGE_SUFFIXES, find_images

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_GLOB_CHARACTERS = frozenset("*?[")


class ImageSourceError(CodedError, ValueError):
    """Inputs that cannot be read; ``code`` is ``no_images`` (nothing found, or no such path),
    ``unreadable_image`` (a file that does not decode), ``bad_manifest`` (a malformed CSV or
    JSONL row), ``missing_label`` (some image has no label) or ``bad_npy`` (not a numeric
    array, or a pickled one)."""


@dataclass(frozen=True, eq=False)
class ImageSource:
    """The inputs of a reference build: image ``paths`` (with ``labels`` when the manifest
    gives every image one) or an ``array`` of model inputs; ``description`` says where from."""

    kind: str  # "folder", "glob", "manifest" or "npy"
    description: str
    data_hash: str
    paths: tuple[Path, ...] = ()
    labels: tuple[int, ...] | None = None
    array: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.paths) if self.array is None else len(self.array)

    def sample(self, *, limit: int | None, seed: int = 0) -> ImageSource:
        """A seeded random sample of ``limit`` inputs (in their original order), or all."""
        if limit is None or limit >= self.count:
            return self
        picks = sorted(np.random.default_rng(seed).choice(self.count, size=limit, replace=False))
        return ImageSource(
            kind=self.kind,
            description=f"{limit} of {self.description} (random sample, seed {seed})",
            data_hash=self.data_hash,
            paths=tuple(self.paths[i] for i in picks) if self.array is None else (),
            labels=None if self.labels is None else tuple(self.labels[i] for i in picks),
            array=None if self.array is None else self.array[picks],
        )


def image_source(spec: str | Path) -> ImageSource:
    """The inputs ``spec`` names: a folder, a glob, a ``.csv``/``.jsonl`` manifest or an
    ``.npy`` file (see the module docstring)."""
    text = str(spec)
    if _GLOB_CHARACTERS & set(text):
        return _from_glob(text)
    path = Path(text)
    if path.is_dir():
        return _from_paths(_listed(path), kind="folder", where=path, base=path)
    if not path.is_file():
        raise ImageSourceError(f"no such folder, file or glob: {text}", code="no_images")
    if path.suffix.lower() == ".npy":
        return _from_npy(path)
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return _from_manifest(path)
    raise ImageSourceError(
        f"{path}: give a folder, a glob, a manifest ({', '.join(MANIFEST_SUFFIXES)}) or an .npy",
        code="no_images",
    )


def _listed(folder: Path) -> list[Path]:
    try:
        return find_images(folder)
    except FileNotFoundError as exc:
        raise ImageSourceError(str(exc), code="no_images") from exc


def read_manifest(path: Path) -> list[tuple[Path, int | None]]:
    """``(image path, label or None)`` per row of a ``.csv`` (``path[,label]`` header) or
    ``.jsonl`` manifest; paths are relative to the manifest's folder."""
    text = path.read_text(encoding="utf-8")
    try:
        rows = _manifest_rows(path, text)
    except (json.JSONDecodeError, csv.Error) as exc:
        raise ImageSourceError(f"{path}: {exc}", code="bad_manifest") from exc
    found: list[tuple[Path, int | None]] = []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping) or not row.get("path"):
            raise ImageSourceError(f"{path}:{n}: each row needs a 'path'", code="bad_manifest")
        label = row.get("label")
        found.append(
            (
                path.parent / str(row["path"]),
                None if label in (None, "") else class_index(label, where=f"{path}:{n}"),
            )
        )
    return found


def class_index(value: Any, *, where: str) -> int:
    """A label as written in a manifest or folder name: a non-negative class index."""
    text = str(value).strip()
    if not text.isascii() or not text.isdigit():
        raise ImageSourceError(
            f"{where}: label {value!r} is not a class index (0, 1, 2, ...)", code="bad_manifest"
        )
    return int(text)


def _manifest_rows(path: Path, text: str) -> list[Any]:
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    raise ImageSourceError(
        f"{path}: a manifest is .csv (path,label) or .jsonl", code="bad_manifest"
    )


def _from_glob(pattern: str) -> ImageSource:
    paths = sorted(
        Path(p)
        for p in glob.glob(pattern, recursive=True)
        if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES
    )
    return _from_paths(paths, kind="glob", where=pattern, base=None)


def _from_manifest(path: Path) -> ImageSource:
    rows = read_manifest(path)
    missing = [p for p, _ in rows if not p.is_file()]
    if missing:
        raise ImageSourceError(
            f"{path}: {len(missing)} listed images do not exist, e.g. {missing[0]}",
            code="unreadable_image",
        )
    labels = [label for _, label in rows]
    given = [label for label in labels if label is not None]
    if given and len(given) != len(labels):
        raise ImageSourceError(
            f"{path}: {len(labels) - len(given)} rows have no label; label every row or none",
            code="missing_label",
        )
    source = _from_paths([p for p, _ in rows], kind="manifest", where=path, base=path.parent)
    if not given:
        return source
    return ImageSource(
        kind=source.kind,
        description=source.description,
        data_hash=_hash_lines(_file_lines(source.paths, base=path.parent), labels=given),
        paths=source.paths,
        labels=tuple(given),
    )


def _from_paths(
    paths: Sequence[Path], *, kind: str, where: str | Path, base: Path | None
) -> ImageSource:
    if not paths:
        raise ImageSourceError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {kind} {where}", code="no_images"
        )
    return ImageSource(
        kind=kind,
        description=f"{len(paths)} images in {kind} {where}",
        data_hash=_hash_lines(_file_lines(paths, base=base)),
        paths=tuple(paths),
    )


def _from_npy(path: Path) -> ImageSource:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:  # a pickled object array, or not an .npy at all
        raise ImageSourceError(f"{path}: not a numeric .npy array ({exc})", code="bad_npy") from exc
    if not isinstance(array, np.ndarray) or array.ndim < 2 or not len(array):
        raise ImageSourceError(f"{path}: expected an (N, ...) array of inputs", code="bad_npy")
    if not np.issubdtype(array.dtype, np.number):
        raise ImageSourceError(f"{path}: dtype {array.dtype} is not numeric", code="bad_npy")
    digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
    return ImageSource(
        kind="npy",
        description=f"{len(array)} inputs {array.shape[1:]} from {path}",
        data_hash=f"sha256:{digest}",
        array=array,
    )


def _file_lines(paths: Sequence[Path], *, base: Path | None) -> list[str]:
    """``name<TAB>sha256`` per file, the name relative to ``base`` when it lies inside it, so
    the hash names the data, not where it was mounted."""
    lines = []
    for path in paths:
        name = (
            path.relative_to(base).as_posix() if base and path.is_relative_to(base) else path.name
        )
        lines.append(f"{name}\t{hashlib.sha256(path.read_bytes()).hexdigest()}")
    return lines


def _hash_lines(lines: list[str], *, labels: Sequence[int] | None = None) -> str:
    if labels is not None:
        lines = [f"{line}\t{label}" for line, label in zip(lines, labels, strict=True)]
    return "sha256:" + hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
