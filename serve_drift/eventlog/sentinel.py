"""Sentinel evaluation: a fixed labelled set through the model, scored like label feedback.

A sentinel set is a small, fixed, labelled image set the team trusts. Run on a schedule, it
measures the model's quality independently of which users send labels: a drop here with no
drop in live labels points at the model or the serving path, not the traffic.

:func:`run_sentinel` takes any callable ``model`` (an ``nn.Module``, or a function that calls
the deployed model and returns its scores) and records a
:class:`~serve_drift.eventlog.schema.ConceptMetricsRecord` tagged ``sentinel``.

>>> import numpy as np, torch
>>> model = lambda x: torch.nn.functional.one_hot(x.long().flatten(1)[:, 0], 3).float()
>>> images = np.array([[[0]], [[1]], [[2]]], dtype=np.uint8)
>>> record = run_sentinel(model, images, [0, 1, 1], preprocess=torch.from_numpy, store=None)
>>> (record.tag, round(record.metrics.accuracy, 3))
('sentinel', 0.667)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from serve_drift.eventlog.labels import compute_metrics, metrics_record
from serve_drift.eventlog.schema import ConceptMetricsRecord
from serve_drift.eventlog.store import EventStore


def run_sentinel(
    model: Callable[[Any], Any],
    images: Sequence[Any] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    preprocess: Callable[[Any], Any],
    store: EventStore | None,
    tag: str = "sentinel",
    model_name: str = "model",
    model_version: str = "0",
    scores: Literal["logits", "probabilities"] = "logits",
    batch_size: int = 256,
) -> ConceptMetricsRecord:
    """Predict ``images`` in batches, score against ``labels``, and store the metrics record.

    ``preprocess`` turns a slice of ``images`` into the model's input. ``scores`` says what the
    model returns per image: logits (softmax is applied) or probabilities.
    """
    truth = np.asarray(labels, dtype=np.int64)
    if len(truth) != len(images) or len(truth) == 0:
        raise ValueError(
            f"need as many labels as images (and at least one); got {len(truth)} and {len(images)}"
        )
    import torch  # a dependency of the package; imported here to keep imports light

    # No autograd graph: evaluation only (the caller's model mode, e.g. eval(), is left as is).
    with torch.inference_mode():
        probabilities = np.concatenate(
            [
                _probabilities(model(preprocess(images[start : start + batch_size])), scores)
                for start in range(0, len(truth), batch_size)
            ]
        )
    metrics = compute_metrics(
        y_true=truth, y_pred=probabilities.argmax(axis=1), confidence=probabilities.max(axis=1)
    )
    record = metrics_record(metrics, tag=tag, model_name=model_name, model_version=model_version)
    if store is not None:
        store.write_concept_metrics([record])
    return record


def _probabilities(output: Any, scores: str) -> np.ndarray:
    values = _as_numpy(output).astype(np.float64)
    if values.ndim != 2:
        raise ValueError(f"model output must be (batch, classes), got shape {values.shape}")
    if scores == "probabilities":
        return values
    if scores != "logits":
        raise ValueError(f"scores must be 'logits' or 'probabilities', got {scores!r}")
    shifted = np.exp(values - values.max(axis=1, keepdims=True))  # stable softmax
    return shifted / shifted.sum(axis=1, keepdims=True)


def _as_numpy(output: Any) -> np.ndarray:
    detach = getattr(output, "detach", None)
    if detach is not None:  # a torch tensor, possibly on a GPU, possibly requiring grad
        return np.asarray(detach().cpu().numpy())
    return np.asarray(output)


def digits_sentinel(*, store: EventStore | None, tag: str = "sentinel") -> ConceptMetricsRecord:
    """The embedded digits model on its held-out split (trained and cached on first use)."""
    from serve_drift.models.digits import (
        load_or_train_digits_model,
        preprocess_digits,
        split_digits,
    )

    model, info = load_or_train_digits_model()
    split = split_digits()
    return run_sentinel(
        model,
        split.test_images,
        split.test_labels,
        preprocess=preprocess_digits,
        store=store,
        tag=tag,
        model_name=info.name,
        model_version=info.version,
    )
