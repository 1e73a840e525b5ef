"""Penultimate-layer embedding capture with forward hooks, in the prediction's own forward pass.

A forward hook on the model's final classifier ``nn.Linear`` sees both its input (the
penultimate embedding) and its output (the logits) while the serving forward pass runs, so drift
monitoring costs no second pass. Tensors are detached and left on the model's device; moving
them off the device is the caller's job, batched, outside the request path.

Which request a hook writes to is decided by a :class:`contextvars.ContextVar`, so concurrent
requests in one asyncio event loop, or in threads started with :func:`asyncio.to_thread` (which
copies the context), each see only their own forward pass. A batched forward pass that serves
several requests at once (Ray Serve's ``@serve.batch``) runs in a task of its own: a
``row_owners`` callable says whose row each one is, and each request's capture gets its row.
"""

from __future__ import annotations

import contextvars
import difflib
import itertools
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from serve_drift.errors import ServeDriftError

__all__ = [
    "Capture",
    "EmbeddingCapture",
    "EmbeddingShapeError",
    "LayerNotFoundError",
    "describe_model_device",
    "find_classifier_layer",
]

# Attribute names torchvision and most hand-written models give their classification head:
# ResNet/RegNet ``fc``; EfficientNet/MobileNet/ConvNeXt/DenseNet ``classifier``; Swin ``head``;
# ViT ``heads``.
_HEAD_ATTRIBUTES = ("fc", "classifier", "head", "heads")
_MAX_NAMES_IN_MESSAGE = 12


class EmbeddingShapeError(ServeDriftError, ValueError):
    """The captured tensor cannot be read as one ``(batch, d)`` embedding per input."""

    code = "embedding_shape_invalid"


class LayerNotFoundError(ServeDriftError, LookupError):
    """No module with the requested name, or no ``nn.Linear`` classifier to hook."""

    code = "embedding_layer_not_found"


@dataclass
class Capture:
    """What the hooks recorded for the forward passes run inside one ``capture()`` context.

    Mutable on purpose: the hooks fill it in while the forward pass runs. When several forward
    passes run inside one context, the last one wins.
    """

    embeddings: torch.Tensor | None = None
    # What probabilities are computed from: the model's own (batch, classes) output, or the
    # hooked classifier's when the model returns something else.
    logits: torch.Tensor | None = None
    # Hooks never raise into the user's forward pass; the first failure is kept here instead.
    error: Exception | None = None


def describe_model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); ``cpu`` for a model with neither.

    >>> describe_model_device(nn.Linear(2, 2))
    device(type='cpu')
    """
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def find_classifier_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """Dotted name and module of the final classifier ``nn.Linear`` layer.

    Tried in order: timm's ``get_classifier()`` (when it is, or contains, a Linear); the last
    Linear inside the well-known head attributes ``fc``, ``classifier``, ``head``, ``heads``
    (the one registered last wins if several exist); else the last ``nn.Linear`` in
    ``named_modules()`` order, which is registration order, not execution order.

    >>> import torchvision
    >>> find_classifier_layer(torchvision.models.mobilenet_v3_small(weights=None))[0]
    'classifier.3'
    """
    found = _from_timm_head(model) or _from_head_attributes(model) or _last_linear_in(model)
    if found is None:
        raise LayerNotFoundError(
            f"no nn.Linear classifier found in {type(model).__name__}: tried get_classifier(), "
            f"the head attributes {', '.join(_HEAD_ATTRIBUTES)} and every module in "
            "named_modules(); pass layer='<module name>' to capture a named module's output"
        )
    return found


def _last_linear_in(module: object, *, prefix: str = "") -> tuple[str, nn.Module] | None:
    if not isinstance(module, nn.Module):
        return None
    found = None
    for name, child in module.named_modules(prefix=prefix):
        if isinstance(child, nn.Linear):
            found = (name, child)
    return found


def _from_timm_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    getter = getattr(model, "get_classifier", None)
    if not callable(getter):
        return None
    # timm returns nn.Identity after reset_classifier(0) and a tuple for distilled models;
    # both fall through to the other strategies.
    head = getter()
    if not isinstance(head, nn.Module):
        return None
    name = next((n for n, m in model.named_modules() if m is head), None)
    return None if name is None else _last_linear_in(head, prefix=name)


def _from_head_attributes(model: nn.Module) -> tuple[str, nn.Module] | None:
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    candidates = [
        found
        for attribute in _HEAD_ATTRIBUTES
        if (found := _last_linear_in(getattr(model, attribute, None), prefix=attribute))
    ]
    return max(candidates, key=lambda found: order.get(found[0], -1), default=None)


def _named_module(model: nn.Module, *, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer in modules:
        return modules[layer]
    close = difflib.get_close_matches(layer, list(modules), n=5)
    some = [name for name in modules if name][:_MAX_NAMES_IN_MESSAGE]
    raise LayerNotFoundError(
        f"no module named {layer!r} in {type(model).__name__}; "
        f"close matches: {close or 'none'}; valid names start with {some} "
        "(see model.named_modules() for all)"
    )


def _as_embedding(tensor: object, *, layer: str) -> torch.Tensor:
    """Detached ``(B, d)`` view of ``tensor``; only size-1 trailing dims are flattened away."""
    if not isinstance(tensor, torch.Tensor):
        raise EmbeddingShapeError(
            f"layer {layer!r} produced {type(tensor).__name__}, expected a (batch, d) tensor"
        )
    if tensor.dim() == 2:  # the common case, without the checks' cost (this runs per request)
        return _detached(tensor)
    shape = tuple(tensor.shape)
    # (B, C, 1, 1) from a global pool is one vector per input; (B, T, d) token sequences or
    # (B, C, H, W) maps are not, and flattening them would silently change what drift means.
    if tensor.dim() < 2 or any(size != 1 for size in shape[2:]):
        raise EmbeddingShapeError(
            f"layer {layer!r} produced shape {shape}, expected (batch, d) (trailing size-1 "
            "dims allowed); for token sequences or feature maps name a pooled layer with layer="
        )
    return torch.flatten(_detached(tensor), 1)


def _detached(tensor: torch.Tensor) -> torch.Tensor:
    # Under no_grad (serving) nothing requires grad: skip making a new view per request.
    return tensor.detach() if tensor.requires_grad else tensor


class _CaptureScope:
    """One ``capture()`` block: a class, not ``@contextmanager``, as it runs on every request."""

    __slots__ = ("_captured", "_hooks", "_owner", "_token")

    def __init__(self, hooks: EmbeddingCapture, owner: str | None) -> None:
        self._hooks, self._owner = hooks, owner
        self._captured = Capture()
        self._token: contextvars.Token[Capture | None] | None = None

    def __enter__(self) -> Capture:
        self._token = self._hooks._active.set(self._captured)
        if self._owner is not None:
            self._hooks._owned[self._owner] = self._captured
        return self._captured

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        self._hooks._active.reset(self._token)
        if self._owner is not None:
            self._hooks._owned.pop(self._owner, None)


RowOwners = Callable[[], Sequence[str] | None]
Scores = Literal["model", "classifier"]


class EmbeddingCapture:
    """Hooks on one model that record embeddings and scores inside ``capture()`` contexts.

    ``layer=None`` hooks the auto-detected classifier (:func:`find_classifier_layer`): its input
    is the embedding. ``layer="name"`` takes that module's output as the embedding instead.

    Scores (what probabilities are computed from) are the model's own output when it is a
    ``(batch, classes)`` tensor (``scores="model"``, the default): models that average two heads
    (LeViT, EfficientFormer) or scale their logits answer with more than their classifier layer.
    ``scores="classifier"``, or a model returning a tuple or dict, uses the hooked classifier's
    output.

    **Batched forward passes.** When several requests share one forward pass (Ray Serve's
    ``@serve.batch``), ``row_owners`` says whose row each one is: a callable returning the
    owners' keys in row order (or ``None`` outside a batch), each key being the ``owner`` a
    request passed to :meth:`capture`. Row ``i`` of the embedding and the scores then goes to
    the capture of owner ``i``, still on the model's device (a view of the batch tensor).

    >>> import torchvision
    >>> model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    >>> hooks = EmbeddingCapture(model)
    >>> with torch.no_grad(), hooks.capture() as captured:
    ...     prediction = model(torch.zeros(2, 3, 64, 64))
    >>> hooks.layer_name, tuple(captured.embeddings.shape), tuple(captured.logits.shape)
    ('fc', (2, 512), (2, 10))
    >>> hooks.remove()
    """

    layer_name: str  # the module whose tensor is the embedding (input if auto, else output)
    classifier_name: str | None  # the hooked classifier, if any

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: str | None = None,
        scores: Scores = "model",
        row_owners: RowOwners | None = None,
    ) -> None:
        # One ContextVar per instance so a second hooked model (shadow, canary) in the same
        # request never writes into this model's Capture. Few instances exist, so the
        # "create ContextVars at module level" advice (about leaks) does not bite here.
        self._active: contextvars.ContextVar[Capture | None] = contextvars.ContextVar(
            f"serve_drift_capture_{id(self)}", default=None
        )
        self._row_owners = row_owners
        self._owned: dict[str, Capture] = {}  # open captures a batched pass may fill
        self._dim: int | None = None
        self._dim_lock = threading.Lock()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        if layer is None:
            self._hook_auto(model)
        else:
            self._hook_named(model, layer=layer)
        if scores == "model":
            self._handles.append(model.register_forward_hook(self._on_model_output))

    @property
    def embedding_dim(self) -> int | None:
        """Embedding width ``d``; ``None`` until the first successful capture."""
        return self._dim

    def capture(self, *, owner: str | None = None) -> AbstractContextManager[Capture]:
        """Record the forward passes run in this context (and tasks/threads that copy it), and
        the rows of batched passes that ``row_owners`` attributes to ``owner``."""
        return _CaptureScope(self, owner)

    def remove(self) -> None:
        """Remove every hook; idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook_auto(self, model: nn.Module) -> None:
        self.classifier_name, classifier = find_classifier_layer(model)
        self.layer_name = self.classifier_name
        self._handles.append(classifier.register_forward_hook(self._on_classifier_auto))

    def _hook_named(self, model: nn.Module, *, layer: str) -> None:
        module = _named_module(model, layer=layer)
        self.layer_name = layer
        self._handles.append(module.register_forward_hook(self._on_named_layer))
        try:
            self.classifier_name, classifier = find_classifier_layer(model)
        except LayerNotFoundError:
            self.classifier_name = None  # an explicit layer needs no classifier
            return
        self._handles.append(classifier.register_forward_hook(self._on_classifier_logits))

    # --- hooks: each finds whose pass this is, then stores what it saw -------------------------

    def _on_classifier_auto(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        first = args[0] if args else None  # called with keyword input: reported as invalid
        # No clone: nothing runs after the final Linear that could modify its input in place.
        self._deliver(lambda: (_as_embedding(first, layer=self.layer_name), output))

    def _on_named_layer(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        # Clone (an async device copy, no sync): an intermediate output is often modified
        # in place later (ReLU/Hardswish with inplace=True), which would corrupt a view.
        self._deliver(lambda: (_as_embedding(output, layer=self.layer_name).clone(), None))

    def _on_classifier_logits(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._deliver(lambda: (None, output))

    def _on_model_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        active = self._active.get()
        if active is not None and active.logits is output and not self._owned_elsewhere():
            return  # the model answered with its classifier's output: already recorded
        if _is_scores(output):  # a tuple, dict or 1-class output keeps the classifier's
            self._deliver(lambda: (None, output))

    def _owned_elsewhere(self) -> bool:
        # A batched pass's rows go to their owners' captures, not to the active one.
        return bool(self._row_owners is not None and self._row_owners())

    def _deliver(self, read: Callable[[], tuple[torch.Tensor | None, Any]]) -> None:
        """Store ``read()``'s (embedding, scores) in the capture(s) this pass belongs to."""
        owners = self._row_owners() if self._row_owners is not None else None
        if not owners:  # the common case: one request's own forward pass
            active = self._active.get()
            if active is not None:
                self._fill((active,), read, rows=False)
            return  # else warm-up or an unrelated forward pass: nothing to record
        targets = [self._owned.get(o) for o in owners]
        if any(target is not None for target in targets):
            self._fill(targets, read, rows=True)

    def _fill(
        self,
        targets: Sequence[Capture | None],
        read: Callable[[], tuple[torch.Tensor | None, Any]],
        *,
        rows: bool,
    ) -> None:
        """``rows``: each target gets its row of a batched pass, else the whole tensors."""
        try:
            embedding, scores = read()
            if scores is not None:
                scores = self._checked_scores(scores)
            if embedding is not None:
                self._check_dim(dim=embedding.shape[1])
        except Exception as error:
            for target in targets:
                if target is not None:
                    _record_error(target, error=error)
            return
        for row, target in enumerate(targets):
            if target is None:
                continue
            try:  # one request's bad row is its own error, not its batch neighbours'
                self._store(target, embedding, scores, row=row if rows else None)
            except Exception as error:
                _record_error(target, error=error)

    def _store(
        self,
        captured: Capture,
        embedding: torch.Tensor | None,
        scores: torch.Tensor | None,
        *,
        row: int | None,
    ) -> None:
        if row is not None:  # one request's row of a batched pass
            embedding = None if embedding is None else _row(embedding, row, layer=self.layer_name)
            scores = None if scores is None else _row(scores, row, layer=self.layer_name)
        if scores is not None:
            captured.logits = scores
        if embedding is not None:
            captured.embeddings = embedding
        _check_batch(captured, layer=self.layer_name)

    def _checked_scores(self, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() < 1:
            raise EmbeddingShapeError(
                f"classifier {self.classifier_name!r} produced {type(output).__name__} "
                "logits, expected a (batch, classes) tensor"
            )
        return _detached(output)

    def _check_dim(self, *, dim: int) -> None:
        known = self._dim
        if known is None:
            with self._dim_lock:  # two first requests in parallel threads must agree on d
                if self._dim is None:
                    self._dim = dim
                known = self._dim
        if dim != known:
            raise EmbeddingShapeError(
                f"layer {self.layer_name!r} produced embeddings of width {dim}, "
                f"expected (batch, {known}) as on the first call"
            )


def _is_scores(output: object) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] >= 2


def _row(tensor: torch.Tensor, row: int, *, layer: str) -> torch.Tensor:
    if row >= tensor.shape[0]:
        raise EmbeddingShapeError(
            f"a batched forward pass gave {tensor.shape[0]} rows at {layer!r} for more "
            "requests: each request of a batch must contribute exactly one row, in order"
        )
    return tensor[row : row + 1]


def _check_batch(captured: Capture, *, layer: str) -> None:
    embeddings, logits = captured.embeddings, captured.logits
    if embeddings is None or logits is None or embeddings.shape[0] == logits.shape[0]:
        return
    raise EmbeddingShapeError(
        f"layer {layer!r} produced shape {tuple(embeddings.shape)}, expected (batch, d) with "
        f"batch {logits.shape[0]} as in the logits {tuple(logits.shape)}"
    )


def _record_error(captured: Capture, *, error: Exception) -> None:
    # Keep the first failure (the cause); drop the embedding so nobody monitors bad data.
    if captured.error is None:
        captured.error = error
    captured.embeddings = None
