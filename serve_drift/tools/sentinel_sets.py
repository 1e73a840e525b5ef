"""Labelled image sets of the user's own: a folder or a manifest, hashed and versioned.

A set is read from one of:

- **a folder of class folders**, ``<root>/<class index>/<image>`` (``3/cam7-0012.jpg``), as
  torchvision's ``ImageFolder`` lays them out, with class indices as folder names;
- **a manifest**, ``.csv`` with a ``path,label`` header or ``.jsonl`` with one
  ``{"path": ..., "label": ...}`` per line, paths relative to the manifest;
- **a flat folder** of images without labels (drill traffic only: ``require_labels=False``).

Images are kept as the bytes on disk (PNG, JPEG or WebP, checked by decoding), so a sentinel run
sends exactly what the camera wrote. The **lineage** names the set, its version and a
``sha256`` over every image's name, content hash and label (in name order, so it does not
depend on the file system), which a run carries into its correlation IDs.

>>> import tempfile, pathlib
>>> from serve_drift.tools.imageio import encode_png
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for label in (0, 1):
...     (root / str(label)).mkdir()
...     grey = np.full((8, 8), label * 200, np.uint8)
...     _ = (root / str(label) / "a.png").write_bytes(encode_png(grey))
>>> found = load_image_set(root, name="tiny")
>>> lineage = found.lineage
>>> lineage.count, lineage.classes, lineage.version == lineage.sha256[:12]
(2, {0: 1, 1: 1}, True)
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from serve_drift.errors import ServeDriftError
from serve_drift.reference.sources import ImageSourceError, class_index, read_manifest
from serve_drift.tools.imageio import encode_png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_FORMATS = ("PNG", "JPEG", "WEBP")
_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# A version travels inside correlation IDs (printable ASCII, no spaces, at most 128 chars).
_VERSION = re.compile(r"[A-Za-z0-9._]{1,24}")
EMBEDDED = "embedded"


class ImageSetError(ServeDriftError, ValueError):
    """A labelled set that cannot be read: a missing path, a bad manifest, a broken image."""

    code = "invalid_image_set"


@dataclass(frozen=True)
class ImageItem:
    """One image as stored (its bytes and format) with its label, if the set has labels."""

    name: str
    data: bytes
    content_type: str
    label: int | None

    def pixels(self) -> Image.Image:
        """The decoded image (PNG, JPEG or WebP only)."""
        image = Image.open(io.BytesIO(self.data), formats=_FORMATS)
        image.load()
        return image


@dataclass(frozen=True)
class SetLineage:
    """Which set this is: ``version`` defaults to the first 12 hex digits of ``sha256``."""

    name: str
    version: str
    sha256: str
    count: int
    classes: Mapping[int, int]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "count": self.count,
            "classes": {str(k): v for k, v in sorted(self.classes.items())},
            "source": self.source,
        }


@dataclass(frozen=True)
class ImageSet:
    items: tuple[ImageItem, ...]
    lineage: SetLineage

    @property
    def labelled(self) -> bool:
        return all(item.label is not None for item in self.items)

    def labels(self) -> np.ndarray:
        return np.asarray([-1 if i.label is None else i.label for i in self.items], dtype=np.int64)


def load_image_set(
    path: str | Path,
    *,
    name: str | None = None,
    version: str | None = None,
    require_labels: bool = True,
    limit: int | None = None,
) -> ImageSet:
    """A set from a class-folder tree, a ``.csv``/``.jsonl`` manifest or a flat folder."""
    root = Path(path)
    if not root.exists():
        raise ImageSetError(f"no such image set: {root}")
    entries = _manifest(root) if root.is_file() else _folder(root)
    if require_labels and any(label is None for _, label in entries):
        raise ImageSetError(f"{root}: every image needs a label (class folders or a manifest)")
    entries = sorted(entries, key=lambda e: str(e[0]))[:limit]
    base = root.parent if root.is_file() else root
    items = tuple(_item(file, label, base=base) for file, label in entries)
    return _with_lineage(items, name=name or root.stem, version=version, source=str(root))


def embedded_set(
    count: int | None = 200, *, name: str | None = None, version: str | None = None
) -> ImageSet:
    """The embedded digits model's set: the first ``count`` images of its traffic pool (all
    449 with ``None``)."""
    from serve_drift.models.digits import split_digits

    split = split_digits(seed=0)
    items = tuple(
        ImageItem(f"digits-{i:04d}.png", encode_png(image), "image/png", int(label))
        for i, (image, label) in enumerate(
            zip(split.test_images[:count], split.test_labels[:count], strict=True)
        )
    )
    return _with_lineage(items, name=name or "digits", version=version, source=EMBEDDED)


def image_set(spec: str, *, count: int | None = None, require_labels: bool = True) -> ImageSet:
    """``"embedded"`` or a path, as the command line and scenarios name a set."""
    if spec == EMBEDDED:
        return embedded_set(count)
    return load_image_set(spec, require_labels=require_labels, limit=count)


def _with_lineage(
    items: tuple[ImageItem, ...], *, name: str, version: str | None, source: str
) -> ImageSet:
    if not items:
        raise ImageSetError(f"{source}: no images")
    digest = content_hash(items)
    version = version or digest[:12]
    if not _VERSION.fullmatch(version):
        raise ImageSetError(f"version {version!r}: letters, digits, '.' and '_' only, 1-24")
    counts = Counter(i.label for i in items if i.label is not None)
    lineage = SetLineage(
        name=name,
        version=version,
        sha256=digest,
        count=len(items),
        classes=dict(sorted(counts.items())),
        source=source,
    )
    return ImageSet(items=items, lineage=lineage)


def content_hash(items: Iterable[ImageItem]) -> str:
    """sha256 over ``name, sha256(bytes), label`` lines in name order."""
    lines = sorted(
        f"{i.name}\t{hashlib.sha256(i.data).hexdigest()}\t{'' if i.label is None else i.label}"
        for i in items
    )
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _folder(root: Path) -> list[tuple[Path, int | None]]:
    flat = [(p, None) for p in _images(root)]
    classes = [d for d in sorted(root.iterdir()) if d.is_dir()]
    if flat and not classes:
        return list(flat)
    if flat:
        raise ImageSetError(f"{root}: images beside class folders; use one layout")
    found: list[tuple[Path, int | None]] = []
    for folder in classes:
        label = _label(folder.name, where=str(folder))
        found += [(p, label) for p in _images(folder)]
    if not found:
        raise ImageSetError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def _images(folder: Path) -> list[Path]:
    return [
        p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]


def _manifest(path: Path) -> list[tuple[Path, int | None]]:
    try:
        return read_manifest(path)
    except ImageSourceError as exc:  # the same reader as reference builds, this set's error
        raise ImageSetError(str(exc)) from exc


def _label(value: Any, *, where: str) -> int:
    try:
        return class_index(value, where=where)
    except ImageSourceError as exc:
        raise ImageSetError(str(exc)) from exc


def _item(file: Path, label: int | None, *, base: Path) -> ImageItem:
    try:
        data = file.read_bytes()
        image = Image.open(io.BytesIO(data), formats=_FORMATS)
        image.verify()  # the whole file decodes as the format it claims
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageSetError(f"{file}: not a readable PNG, JPEG or WebP image ({exc})") from exc
    name = file.relative_to(base).as_posix() if file.is_relative_to(base) else file.name
    return ImageItem(name, data, _CONTENT_TYPES[str(image.format)], label)
