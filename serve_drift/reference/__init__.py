"""Reference sets: what "no drift" looks like for one model, with its lineage.

- :class:`ReferenceSet`: embeddings (and softmax probabilities) plus lineage, saved as one
  ``.npz`` with content hashes and never unpickled;
- :func:`build_reference`: a reference from any model, its preprocessing and a folder of images;
- :func:`embed_outputs`: embeddings and probabilities exactly as a monitored replica captures
  them, for anything that needs them outside a replica.
"""

from serve_drift.reference.build import (
    IMAGE_SUFFIXES,
    BuildProgress,
    LazyImages,
    build_reference,
    find_images,
)
from serve_drift.reference.embed import ModelOutputs, embed_outputs
from serve_drift.reference.reference_set import (
    ReferenceIntegrityError,
    ReferenceLineage,
    ReferenceSet,
    StoredCalibration,
    content_hash,
    read_reference_version,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "BuildProgress",
    "LazyImages",
    "ModelOutputs",
    "ReferenceIntegrityError",
    "ReferenceLineage",
    "ReferenceSet",
    "StoredCalibration",
    "build_reference",
    "content_hash",
    "embed_outputs",
    "find_images",
    "read_reference_version",
]
