"""A reference set for the user's own model, named the way Serve names an app.

:func:`build_reference_from` loads the model exactly as the ready-made app serves it
(:mod:`serve_drift.apps.model_loading`: a factory import path, or a torchvision/timm name plus a
weights file), embeds a folder, glob, manifest or ``.npy`` of inputs through the model's own
preprocessing and the replicas' capture hooks, calibrates the result for the monitor's detectors
and window size, and records where everything came from in the lineage.
``serve-drift reference build`` is this function on the command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from serve_drift.apps.model_loading import (
    NAMED_SOURCES,
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    load_model,
)
from serve_drift.config import DriftConfig
from serve_drift.monitor.calibration import calibrate_reference
from serve_drift.reference import BuildProgress, LazyImages, ReferenceSet, embed_outputs
from serve_drift.reference.sources import ImageSource, ImageSourceError, image_source

__all__ = ["CalibrationTarget", "build_reference_from", "model_spec"]


@dataclass(frozen=True)
class CalibrationTarget:
    """What to calibrate a new reference for: the monitor's detectors, window size and plan
    (from a ``drift`` config section; its defaults without one), or nothing."""

    drift: DriftConfig | None
    window_size: int | None = None

    @classmethod
    def of(
        cls, drift: DriftConfig | Mapping[str, Any] | None, *, window_size: int | None = None
    ) -> CalibrationTarget:
        if drift is None or isinstance(drift, DriftConfig):
            return cls(drift=drift or DriftConfig(), window_size=window_size)
        # The section's own reference is not what is being built: it is not loaded here.
        config = DriftConfig.model_validate({**drift, "reference_path": None})
        return cls(drift=config, window_size=window_size)

    def apply(self, reference: ReferenceSet) -> ReferenceSet:
        if self.drift is None:
            return reference
        return calibrate_reference(
            reference,
            detectors=self.drift.detectors,
            window_size=self.window_size or self.drift.window.size,
            plan=self.drift.calibration,
        )


def build_reference_from(
    *,
    model: str | ModelSpec | Mapping[str, Any],
    images: str | Path,
    data_version: str,
    preprocess: str | None = None,
    weights: str | None = None,
    num_classes: int | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    layer: str | None = None,
    labels: Mapping[str, int] | Sequence[int] | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    drift: DriftConfig | Mapping[str, Any] | None = None,
    window_size: int | None = None,
    calibrate: bool = True,
    device: str | None = None,
    progress: BuildProgress | None = None,
    out: str | Path | None = None,
) -> ReferenceSet:
    """Build (calibrate, and with ``out`` save) a reference set for the user's own model.

    ``model`` is an import path to a factory (``"my_pkg.model:make_model"``, returning the
    ``nn.Module`` with its weights), a name (``"torchvision:resnet50"``, ``"timm:convnext_tiny"``,
    randomly initialised, then ``weights``: a state dict or ``.safetensors`` file), a
    :class:`~serve_drift.apps.model_loading.ModelSpec`, or the ready-made app's ``model``
    section. ``preprocess`` is an import path to the model's own preprocessing (a list of PIL
    images to a batch tensor; required for a factory, ImageNet's by default for names).
    ``images`` is a folder, a glob, a ``.csv``/``.jsonl`` manifest (``path[,label]``) or an
    ``.npy`` of model inputs (used as the model's input tensor, as a client sending tensors
    would). ``labels`` maps each image's path (relative to the folder, or as listed) to its
    class, or lists one per row; a labelled manifest needs none. The set is calibrated for
    ``drift``'s detectors and window size (or ``window_size``; the defaults without ``drift``)
    unless ``calibrate`` is False. Errors raised on purpose are
    :class:`~serve_drift.ServeDriftError`\\ s with a stable ``code`` (``bad_import_path``,
    ``import_failed``, ``not_a_model``, ``no_images``, ``unreadable_image``, ``bad_manifest``,
    ``missing_label``, ``bad_npy``, ``invalid_model_spec``).

    >>> import numpy as np, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> np.save(folder / "inputs.npy", np.random.default_rng(0).normal(size=(40, 3, 16, 16)))
    >>> reference = build_reference_from(
    ...     model="torchvision:resnet18", num_classes=4, images=folder / "inputs.npy",
    ...     data_version="val-1", model_version="r18-1", calibrate=False)
    >>> reference.embeddings.shape, reference.lineage.model_version
    ((40, 512), 'r18-1')
    """
    spec = model_spec(
        model, preprocess=preprocess, weights=weights, version=model_version, classes=num_classes
    )
    loaded = load_model(spec)
    found = _with_labels(image_source(images), labels, root=Path(images))
    found = found.sample(limit=limit, seed=seed)
    outputs = _embed(
        loaded, found, layer=layer, batch_size=batch_size, device=device, progress=progress
    )
    reference = ReferenceSet.from_embeddings(
        outputs.embeddings,
        probabilities=outputs.probabilities,
        labels=None if found.labels is None else list(found.labels),
        model_name=model_name or spec.name,
        model_version=loaded.version,
        data_version=data_version,
        preprocessing=loaded.preprocessing if found.array is None else "none: model inputs (.npy)",
        source=found.description,
        model_source=loaded.source,
        weights_hash=loaded.weights_hash,
        data_hash=found.data_hash,
    )
    target = CalibrationTarget.of(drift, window_size=window_size)
    calibrated = target.apply(reference) if calibrate else reference
    if out is not None:
        calibrated.save(out)
    return calibrated


def model_spec(
    model: str | ModelSpec | Mapping[str, Any],
    *,
    preprocess: str | None = None,
    weights: str | None = None,
    version: str | None = None,
    classes: int | None = None,
) -> ModelSpec:
    """The :class:`ModelSpec` a model argument names, with the explicit options applied.

    >>> model_spec("timm:resnet18", weights="w.safetensors").source
    'timm'
    >>> model_spec("my_model:make_model", preprocess="my_model:preprocess").factory
    'my_model:make_model'
    """
    if isinstance(model, ModelSpec):
        fields: dict[str, Any] = model.model_dump()
    elif isinstance(model, str):
        fields = _spec_fields(model)
    else:
        fields = dict(model)
    options = {"preprocess": preprocess, "weights_path": weights, "version": version}
    fields.update({k: v for k, v in options.items() if v is not None})
    if classes is not None:
        fields["num_classes"] = classes
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as exc:
        message = "; ".join(str(e["msg"]) for e in exc.errors())
        raise ModelLoadError(f"invalid model: {message}", code="invalid_model_spec") from exc


def _spec_fields(model: str) -> dict[str, Any]:
    library, _, name = model.partition(":")
    if library in NAMED_SOURCES and name:
        return {"source": library, "arch": name}
    if model == "digits":
        return {"source": "digits"}
    return {"source": "factory", "factory": model}


def _embed(
    loaded: LoadedModel,
    found: ImageSource,
    *,
    layer: str | None,
    batch_size: int,
    device: str | None,
    progress: BuildProgress | None,
) -> Any:
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loaded.model.to(target).eval()
    if found.array is None:
        items: Any = LazyImages(found.paths)
        preprocess: Any = loaded.preprocess
    else:  # model inputs as a tensor client sends them: no image preprocessing
        items = found.array
        preprocess = _as_tensor
    return embed_outputs(
        model,
        items,
        preprocess=preprocess,
        layer=layer,
        batch_size=batch_size,
        progress=None if progress is None else lambda done: progress(done, found.count),
    )


def _as_tensor(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


def _with_labels(
    found: ImageSource, labels: Mapping[str, int] | Sequence[int] | None, *, root: Path
) -> ImageSource:
    """The source with ``labels`` (a mapping of relative paths, or one per row) attached."""
    if labels is None:
        return found
    if isinstance(labels, Mapping):
        keys = [
            p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
            for p in found.paths
        ]
        missing = [key for key in keys if key not in labels]
        if missing:
            raise ImageSourceError(
                f"{len(missing)} images have no label, e.g. {missing[0]!r}", code="missing_label"
            )
        labels = [labels[key] for key in keys]
    if len(labels) != found.count:
        raise ImageSourceError(
            f"{len(labels)} labels for {found.count} inputs", code="missing_label"
        )
    return dataclasses.replace(found, labels=tuple(int(label) for label in labels))
