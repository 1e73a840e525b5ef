"""The embedded default model's reference set: the digits reference pool, embedded once, cached."""

from __future__ import annotations

from pathlib import Path

from serve_drift import _env
from serve_drift.models import digits
from serve_drift.reference.embed import embed_outputs
from serve_drift.reference.reference_set import ReferenceSet

DATA_VERSION = "sklearn-load_digits-reference-pool-seed0"


def ensure_digits_reference(*, cache_dir: Path | None = None) -> tuple[Path, str]:
    """Path of the cached reference set for the cached digits model, and that model's version."""
    model, info = digits.load_or_train_digits_model(cache_dir=cache_dir)
    # "-p": sets with softmax probabilities (for BBSD and the default detector's confidence
    # test); caches from before they were stored are not reused.
    path = Path(cache_dir or _env.cache_dir()) / "references" / f"digits-{info.version}-p.npz"
    if not path.exists():
        images = digits.split_digits(seed=0).reference_images
        outputs = embed_outputs(model.eval(), images, preprocess=digits.preprocess_digits)
        ReferenceSet.from_embeddings(
            outputs.embeddings,
            probabilities=outputs.probabilities,
            model_name=digits.MODEL_NAME,
            model_version=info.version,
            data_version=DATA_VERSION,
            preprocessing=digits.PREPROCESSING,
            source="serve_drift.models.digits.split_digits(seed=0).reference",
        ).save(path)
    return path, info.version
