"""A bounded on-disk store of inputs kept for review: one data file plus a JSON sidecar each.

Entries are named ``<nanosecond time>-<random>`` so that name order is age order. The data file
is written first and the sidecar last (each to a temporary name, then renamed): an entry exists
once its sidecar does. Several replicas may share a directory; retention runs after every write
and tolerates files another process removed first. Nothing is ever pickled: inputs are kept as
the bytes the client sent (images) or ``.npy`` written with ``allow_pickle=False`` (tensors).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_drift.files import TEMPORARY_PREFIX, atomic_write

SIDECAR = ".json"
_ENTRY_ID = re.compile(r"^\d{20}-[0-9a-f]{8}\.")
# Files without a sidecar this old are leftovers of a crashed write, not a write in progress.
_ORPHAN_AGE_S = 60.0


@dataclass(frozen=True)
class QuarantineEntry:
    entry_id: str
    data_path: Path
    metadata: dict[str, Any]


class QuarantineStore:
    """Keeps at most ``max_items`` entries, ``max_bytes`` bytes, none older than ``max_age_s``.

    >>> import tempfile
    >>> store = QuarantineStore(directory=tempfile.mkdtemp(), max_items=2)
    >>> _ = [store.put(data=bytes([i]), extension="bin", metadata={"i": i}) for i in range(3)]
    >>> [e.metadata["i"] for e in store.entries()]
    [1, 2]
    """

    def __init__(
        self,
        *,
        directory: str | Path,
        max_items: int = 1000,
        max_bytes: int = 256 * 1024 * 1024,
        max_age_s: float = 7 * 24 * 3600.0,
    ) -> None:
        self.directory = Path(directory)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s

    def put(self, *, data: bytes, extension: str, metadata: Mapping[str, Any]) -> str:
        """Store one input; returns its entry ID. The sidecar gets ``sha256``, ``bytes``, time."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        entry_id = f"{time.time_ns():020d}-{os.urandom(4).hex()}"
        data_name = f"{entry_id}.{extension}"
        sidecar = {
            **metadata,
            "entry_id": entry_id,
            "data_file": data_name,
            "created_at": time.time(),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        self._write(data_name, data)
        self._write(entry_id + SIDECAR, json.dumps(sidecar, indent=2, default=str).encode())
        self.enforce_retention()
        return entry_id

    def entries(self) -> list[QuarantineEntry]:
        """Complete entries, oldest first."""
        found = []
        for sidecar in sorted(self.directory.glob(f"*{SIDECAR}")):
            if not _ENTRY_ID.match(sidecar.name):
                continue
            try:
                metadata = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                continue  # removed meanwhile, or not ours
            data_path = self.directory / str(metadata.get("data_file", ""))
            found.append(QuarantineEntry(sidecar.stem, data_path, metadata))
        return found

    def enforce_retention(self, *, now: float | None = None) -> int:
        """Remove expired entries, then the oldest until within count and bytes; returns count.

        Works from file names and sizes only (no sidecar is parsed), so it stays cheap.
        """
        now = time.time() if now is None else now
        groups = self._groups()
        complete = sorted(eid for eid, paths in groups.items() if _has_sidecar(paths))
        self._remove_orphans(groups, now=now)
        sizes = {eid: sum(_size(path) for path in groups[eid]) for eid in complete}
        total = sum(sizes.values())
        removed = 0
        for index, entry_id in enumerate(complete):
            expired = now - _created_at(entry_id) > self.max_age_s
            if not (expired or len(complete) - index > self.max_items or total > self.max_bytes):
                break  # entries are in age order: every later one is within bounds too
            _remove_files(groups[entry_id])
            total -= sizes[entry_id]
            removed += 1
        return removed

    def _groups(self) -> dict[str, list[Path]]:
        groups: dict[str, list[Path]] = {}
        for path in self.directory.iterdir():
            name = path.name.removeprefix(TEMPORARY_PREFIX)
            if not _ENTRY_ID.match(name):
                continue  # not ours: never touched
            key = path.name if name != path.name else name.split(".", 1)[0]
            groups.setdefault(key, []).append(path)
        return groups

    def _remove_orphans(self, groups: Mapping[str, list[Path]], *, now: float) -> None:
        for paths in groups.values():
            if _has_sidecar(paths):
                continue
            for path in paths:
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > _ORPHAN_AGE_S:
                        path.unlink()

    def _write(self, name: str, data: bytes) -> None:
        atomic_write(self.directory / name, data, mode=0o600)  # clients' inputs: private


def _has_sidecar(paths: list[Path]) -> bool:
    return any(p.suffix == SIDECAR and not p.name.startswith(TEMPORARY_PREFIX) for p in paths)


def _created_at(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1e9


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove_files(paths: list[Path]) -> None:
    # The sidecar goes first: without it the entry no longer exists for readers.
    for path in sorted(paths, key=lambda p: p.suffix != SIDECAR):
        with contextlib.suppress(OSError):
            path.unlink()
