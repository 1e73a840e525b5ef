"""Reference embeddings through the served model's own preprocessing and embedding capture."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from serve_drift._capture import EmbeddingCapture

Item = TypeVar("Item")


@torch.no_grad()
def embed(
    model: torch.nn.Module,
    items: Sequence[Item] | np.ndarray,
    *,
    preprocess: Callable[[Any], torch.Tensor],
    layer: str | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Embeddings of ``items`` exactly as the monitored replica captures them."""
    capture = EmbeddingCapture(model, layer=layer)
    device = next(model.parameters()).device
    chunks = []
    try:
        for start in range(0, len(items), batch_size):
            with capture.capture() as captured:
                model(preprocess(items[start : start + batch_size]).to(device))
            if captured.error is not None:
                raise captured.error
            assert captured.embeddings is not None
            chunks.append(captured.embeddings.float().cpu().numpy())
    finally:
        capture.remove()
    return np.concatenate(chunks)
