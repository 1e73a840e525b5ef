"""Building a reference set from any model, its own preprocessing and a folder of images.

The embeddings come from the same capture hooks a monitored replica installs
(:func:`~serve_drift.reference.embed.embed_outputs`), so a reference built here matches what the
replicas send, row for row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serve_drift.errors import ServeDriftError
from serve_drift.reference.embed import embed_outputs
from serve_drift.reference.reference_set import ReferenceSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
BuildProgress = Callable[[int, int], None]  # (images done, images in all)


def build_reference(
    model: Any,
    images: Path | Sequence[Path],
    *,
    preprocess: Callable[[list[Any]], Any],
    model_name: str,
    model_version: str,
    data_version: str,
    preprocessing: str = "",
    layer: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: BuildProgress | None = None,
    labels: Mapping[str, int] | None = None,
) -> ReferenceSet:
    """Embed ``images`` (a folder, searched recursively, or a list of files) into a reference.

    ``model`` and ``preprocess`` are the served model and its own preprocessing (a list of PIL
    images to a batch tensor); ``limit`` embeds a seeded random sample of that many images;
    ``progress(done, total)`` is called after every batch; ``labels`` maps each image's
    path (relative to the folder, or as listed) to its true class, for the label-free
    accuracy estimate (every embedded image needs one). The set is returned, not saved: call
    :meth:`ReferenceSet.save`; calibrate it for a detector and window size with
    :func:`serve_drift.calibrate_reference` (the ``serve-drift reference build`` command
    does both).
    """
    if isinstance(images, Path):
        paths = find_images(images, limit=limit, seed=seed)
        source = f"{len(paths)} images under {images}"
        source += f" (random sample, seed {seed})" if limit else ""
    else:
        paths = list(images)
        source = f"{len(paths)} listed images"
    outputs = embed_outputs(
        model,
        LazyImages(paths),
        preprocess=preprocess,
        layer=layer,
        batch_size=batch_size,
        progress=None if progress is None else lambda done: progress(done, len(paths)),
    )
    return ReferenceSet.from_embeddings(
        outputs.embeddings,
        probabilities=outputs.probabilities,
        labels=None if labels is None else _labels_of(paths, labels, folder=images),
        model_name=model_name,
        model_version=model_version,
        data_version=data_version,
        preprocessing=preprocessing,
        source=source,
    )


def _labels_of(
    paths: Sequence[Path], labels: Mapping[str, int], *, folder: Path | Sequence[Path]
) -> list[int]:
    keys = [p.relative_to(folder).as_posix() if isinstance(folder, Path) else str(p) for p in paths]
    missing = [key for key in keys if key not in labels]
    if missing:
        raise ValueError(f"{len(missing)} images have no label, e.g. {missing[0]!r}")
    return [int(labels[key]) for key in keys]


def find_images(folder: Path, *, limit: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), or a seeded sample of ``limit``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    paths = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    if limit is not None and limit < len(paths):
        picks = np.random.default_rng(seed).choice(len(paths), size=limit, replace=False)
        paths = [paths[i] for i in sorted(picks)]
    return paths


class LazyImages(Sequence[Any]):
    """Image files opened only when a batch is sliced, so memory holds one batch."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [_open(p) for p in self._paths[index]]
        return _open(self._paths[index])


def _open(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decode now: the file closes when the block ends
            return image.copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"{path}: not a readable image ({exc})") from exc


class UnreadableImageError(ServeDriftError, ValueError):
    """An image file that does not decode (truncated, corrupt, not an image)."""

    code = "unreadable_image"
