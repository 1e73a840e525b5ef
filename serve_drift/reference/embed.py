"""Embeddings and softmax probabilities through the served model's own capture hooks.

The same :class:`~serve_drift.capture.EmbeddingCapture` a monitored replica installs records
the penultimate embedding and the classifier's logits in one forward pass, so a reference set
built here matches what the replicas send, row for row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from serve_drift.capture import EmbeddingCapture

Progress = Callable[[int], None]


@dataclass(frozen=True, eq=False)
class ModelOutputs:
    """Row ``i`` of each array belongs to input ``i``; ``probabilities`` is ``None`` when the
    capture found no classifier logits (e.g. an explicit ``embedding_layer`` on a headless model).
    """

    embeddings: np.ndarray  # float32 (N, d)
    probabilities: np.ndarray | None  # float32 (N, C), softmax of the logits


@torch.no_grad()
def embed_outputs(
    model: torch.nn.Module,
    items: Sequence[Any] | np.ndarray,
    *,
    preprocess: Callable[[Any], torch.Tensor],
    layer: str | None = None,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> ModelOutputs:
    """Embeddings and softmax probabilities of ``items``, exactly as a replica captures them.

    ``preprocess`` is the model's own (a batch of items to a tensor); ``progress`` is called
    with the number of items done after every batch.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> out = embed_outputs(model.eval(), torch.zeros(5, 3), preprocess=lambda x: x)
    >>> out.embeddings.shape, out.probabilities.shape
    ((5, 4), (5, 2))
    """
    capture = EmbeddingCapture(model, layer=layer)
    device = next(model.parameters()).device
    embeddings, probabilities = [], []
    try:
        for start in range(0, len(items), batch_size):
            with capture.capture() as captured:
                model(preprocess(items[start : start + batch_size]).to(device))
            if captured.error is not None:
                raise captured.error
            assert captured.embeddings is not None
            embeddings.append(captured.embeddings.float().cpu().numpy())
            if captured.logits is not None:
                probabilities.append(torch.softmax(captured.logits.float(), dim=-1).cpu().numpy())
            if progress is not None:
                progress(min(start + batch_size, len(items)))
    finally:
        capture.remove()
    complete = len(probabilities) == len(embeddings)
    return ModelOutputs(
        embeddings=np.concatenate(embeddings),
        probabilities=np.concatenate(probabilities) if complete else None,
    )
