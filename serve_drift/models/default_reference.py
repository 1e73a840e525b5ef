"""The embedded default model's reference set: the digits reference pool, embedded once, cached.

It carries the pool's labels (for the label-free accuracy estimate) and the default
detector's calibration at the default window size (``serve_drift.detectors.calibration``), so
a monitor with the default configuration starts without drawing it (about 16 s on one CPU core,
once, when the cache is built).
"""

from __future__ import annotations

from pathlib import Path

from serve_drift import _env
from serve_drift.config import CalibrationConfig, WindowConfig, default_detectors
from serve_drift.detectors.calibration import draw_nulls
from serve_drift.models import digits
from serve_drift.reference.embed import embed_outputs
from serve_drift.reference.reference_set import ReferenceSet

DATA_VERSION = "sklearn-load_digits-reference-pool-seed0"
# "-c2": sets with labels and the default detector's calibration; caches from before are not
# reused (older ones, "-p", had probabilities only).
_CACHE_SUFFIX = "c2"


def ensure_digits_reference(*, cache_dir: Path | None = None) -> tuple[Path, str]:
    """Path of the cached reference set for the cached digits model, and that model's version."""
    model, info = digits.load_or_train_digits_model(cache_dir=cache_dir)
    directory = Path(cache_dir or _env.cache_dir()) / "references"
    path = directory / f"digits-{info.version}-{_CACHE_SUFFIX}.npz"
    if not path.exists():
        split = digits.split_digits(seed=0)
        outputs = embed_outputs(
            model.eval(), split.reference_images, preprocess=digits.preprocess_digits
        )
        reference = ReferenceSet.from_embeddings(
            outputs.embeddings,
            probabilities=outputs.probabilities,
            labels=split.reference_labels,
            model_name=digits.MODEL_NAME,
            model_version=info.version,
            data_version=DATA_VERSION,
            preprocessing=digits.PREPROCESSING,
            source="serve_drift.models.digits.split_digits(seed=0).reference",
        )
        calibrated_default(reference).save(path)
    return path, info.version


def calibrated_default(reference: ReferenceSet) -> ReferenceSet:
    """``reference`` with the default detector's calibration at the default window size."""
    draws = draw_nulls(
        default_detectors(),
        embeddings=reference.embeddings,
        probabilities=reference.probabilities,
        window_size=WindowConfig().size,
        plan=CalibrationConfig(),
        reference_hash=reference.lineage.content_hash,
    )
    return reference.with_calibrations(draws)
