"""Embedding capture: auto-detected classifiers, named layers, shape errors and concurrency."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from serve_drift.capture import (
    Capture,
    EmbeddingCapture,
    EmbeddingShapeError,
    LayerNotFoundError,
    describe_model_device,
    find_classifier_layer,
)

# (constructor, expected classifier path, extra kwargs, input side). Small inputs keep the
# whole family sweep to a few seconds on CPU; ViT needs image_size set to accept 32x32.
FAMILIES = [
    ("resnet18", "fc", {}, 64),
    ("efficientnet_b0", "classifier.1", {}, 64),
    ("mobilenet_v2", "classifier.1", {}, 64),
    ("mobilenet_v3_small", "classifier.3", {}, 64),
    ("convnext_tiny", "classifier.2", {}, 64),
    ("densenet121", "classifier", {}, 64),
    ("regnet_y_400mf", "fc", {}, 64),
    ("vit_b_16", "heads.head", {"image_size": 32}, 32),
    ("swin_t", "head", {}, 64),
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _build(name: str, **kwargs: Any) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs).eval()


def _record_input(module: nn.Module) -> tuple[list[torch.Tensor], Any]:
    """Independent witness: a pre-hook that copies whatever enters ``module``."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    return seen, handle


def _count_calls(model: nn.Module) -> tuple[list[int], Any]:
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize(("name", "expected", "kwargs", "side"), FAMILIES)
def test_torchvision_family_captures_classifier_input_and_logits(
    name: str, expected: str, kwargs: dict[str, Any], side: int
) -> None:
    model = _build(name, **kwargs)
    hooks = EmbeddingCapture(model)
    seen, witness = _record_input(model.get_submodule(expected))
    calls, counter = _count_calls(model)
    with torch.no_grad(), hooks.capture() as captured:
        output = model(torch.randn(2, 3, side, side))
    witness.remove()
    counter.remove()
    assert hooks.layer_name == expected
    assert find_classifier_layer(model)[0] == expected
    assert captured.error is None
    assert len(calls) == 1 and len(seen) == 1
    assert captured.embeddings is not None and captured.logits is not None
    assert torch.equal(captured.embeddings, seen[0])
    assert torch.equal(captured.logits, output)
    assert hooks.embedding_dim == seen[0].shape[1]


def test_named_layer_output_is_flattened_pooled_vector() -> None:
    model = _build("resnet18")
    hooks = EmbeddingCapture(model, layer="avgpool")
    seen, witness = _record_input(model.get_submodule("fc"))
    with torch.no_grad(), hooks.capture() as captured:
        output = model(torch.randn(2, 3, 64, 64))
    witness.remove()
    assert hooks.layer_name == "avgpool" and hooks.classifier_name == "fc"
    assert captured.embeddings is not None and captured.embeddings.shape == (2, 512)
    assert torch.equal(captured.embeddings, seen[0])
    assert captured.logits is not None and torch.equal(captured.logits, output)


def test_named_layer_survives_later_inplace_activation() -> None:
    # classifier.0 is a Linear followed by Hardswish(inplace=True); a stored view would change.
    model = _build("mobilenet_v3_small")
    outputs: list[torch.Tensor] = []
    witness = model.get_submodule("classifier.0").register_forward_hook(
        lambda *a: outputs.append(a[2].clone())
    )
    hooks = EmbeddingCapture(model, layer="classifier.0")
    with torch.no_grad(), hooks.capture() as captured:
        model(torch.randn(2, 3, 64, 64))
    witness.remove()
    assert captured.embeddings is not None
    assert torch.equal(captured.embeddings, outputs[0])


class _TimmStyle(nn.Module):
    """Mimics timm: the head is found through get_classifier(), not an attribute name."""

    def __init__(self, *, head: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(12, 8))
        self.fc = nn.Linear(8, 8)  # a decoy with a well-known head name
        self.last_layer = head

    def get_classifier(self) -> nn.Module:
        return self.last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.fc(self.stem(x)))


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (nn.Linear(8, 3), "last_layer"),
        (nn.Sequential(nn.Dropout(0.0), nn.Linear(8, 3)), "last_layer.1"),
        (nn.Identity(), "fc"),  # timm after reset_classifier(0): fall back to head attributes
    ],
)
def test_timm_style_get_classifier(head: nn.Module, expected: str) -> None:
    assert find_classifier_layer(_TimmStyle(head=head))[0] == expected


def test_plain_model_falls_back_to_last_linear() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    hooks = EmbeddingCapture(model)
    with torch.no_grad(), hooks.capture() as captured:
        output = model(torch.randn(4, 3, 2, 2))
    assert hooks.layer_name == "3"
    assert captured.embeddings is not None and captured.embeddings.shape == (4, 6)
    assert captured.logits is not None and torch.equal(captured.logits, output)


def test_model_without_linear_needs_named_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
    with pytest.raises(LayerNotFoundError, match="layer=") as info:
        EmbeddingCapture(model)
    assert info.value.code == "embedding_layer_not_found"
    hooks = EmbeddingCapture(model, layer="1")
    with torch.no_grad(), hooks.capture() as captured:
        model(torch.randn(2, 3, 8, 8))
    assert captured.embeddings is not None and captured.embeddings.shape == (2, 4)
    assert captured.logits is None and hooks.classifier_name is None


def test_unknown_layer_lists_close_matches() -> None:
    with pytest.raises(LayerNotFoundError, match=r"'avgpol'.*avgpool"):
        EmbeddingCapture(_build("resnet18"), layer="avgpol")


class _TokenHead(nn.Module):
    """A Linear applied to every token: (B, T, d) in, so there is no single embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_token_sequence_linear_is_recorded_not_raised() -> None:
    model = _TokenHead()
    hooks = EmbeddingCapture(model)
    with torch.no_grad(), hooks.capture() as captured:
        output = model(torch.randn(2, 5, 8))  # the user's forward pass still completes
    assert output.shape == (2, 5, 3)
    assert isinstance(captured.error, EmbeddingShapeError)
    assert captured.error.code == "embedding_shape_invalid"
    assert "'head'" in str(captured.error) and "(2, 5, 8)" in str(captured.error)
    assert captured.embeddings is None and hooks.embedding_dim is None


def test_feature_map_named_layer_is_rejected() -> None:
    model = _build("resnet18")
    hooks = EmbeddingCapture(model, layer="layer4")
    with torch.no_grad(), hooks.capture() as captured:
        model(torch.randn(1, 3, 64, 64))
    assert isinstance(captured.error, EmbeddingShapeError)
    assert "(1, 512, 2, 2)" in str(captured.error)


class _Passthrough(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def test_embedding_width_change_is_an_error() -> None:
    model = _Passthrough()
    hooks = EmbeddingCapture(model, layer="features")
    with hooks.capture() as first:
        model(torch.randn(2, 4))
    with hooks.capture() as second:
        model(torch.randn(2, 6))
    assert first.error is None and hooks.embedding_dim == 4
    assert isinstance(second.error, EmbeddingShapeError)
    assert "width 6" in str(second.error) and "(batch, 4)" in str(second.error)


def test_forward_outside_context_is_ignored_and_remove_unhooks() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    hooks = EmbeddingCapture(model)
    model(torch.randn(2, 4))  # warm-up: no active capture
    with hooks.capture() as captured:
        pass
    model(torch.randn(2, 4))
    assert captured == Capture()
    hooks.remove()
    hooks.remove()
    with hooks.capture() as after_remove:
        model(torch.randn(2, 4))
    assert after_remove.embeddings is None and hooks.embedding_dim is None


def test_captured_tensors_are_detached() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    hooks = EmbeddingCapture(model)
    with hooks.capture() as captured:
        model(torch.randn(2, 4)).sum().backward()
    assert captured.embeddings is not None and not captured.embeddings.requires_grad
    assert captured.logits is not None and not captured.logits.requires_grad


class _Rendezvous(nn.Module):
    """Holds every forward at a barrier before the classifier, forcing the calls to overlap."""

    def __init__(self, *, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=10)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.barrier.wait()
        return self.fc(x)


def _inputs() -> Iterator[torch.Tensor]:
    yield torch.full((1, 4), 1.0)
    yield torch.full((3, 4), 2.0)


def test_concurrent_threads_each_get_their_own_embeddings() -> None:
    model = _Rendezvous(parties=2)
    hooks = EmbeddingCapture(model)

    async def one(x: torch.Tensor) -> Capture:
        with hooks.capture() as captured:
            await asyncio.to_thread(model, x)
        return captured

    async def both() -> list[Capture]:
        return await asyncio.gather(*(one(x) for x in _inputs()))

    for captured, x in zip(asyncio.run(both()), _inputs(), strict=True):
        assert captured.embeddings is not None and torch.equal(captured.embeddings, x)


def test_interleaved_asyncio_tasks_each_get_their_own_embeddings() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    hooks = EmbeddingCapture(model)

    async def one(x: torch.Tensor, *, wait: asyncio.Event, done: asyncio.Event) -> Capture:
        with hooks.capture() as captured:
            await wait.wait()  # the other task runs its whole forward while this one is open
            model(x)
            done.set()
        return captured

    async def both() -> list[Capture]:
        first_done, second_done = asyncio.Event(), asyncio.Event()
        go_now = asyncio.Event()
        go_now.set()
        x1, x2 = _inputs()
        return list(
            await asyncio.gather(
                one(x1, wait=second_done, done=first_done),
                one(x2, wait=go_now, done=second_done),
            )
        )

    for captured, x in zip(asyncio.run(both()), _inputs(), strict=True):
        assert captured.embeddings is not None and torch.equal(captured.embeddings, x)


def test_two_hooked_models_do_not_share_captures() -> None:
    primary, shadow = nn.Sequential(nn.Linear(4, 3)), nn.Sequential(nn.Linear(4, 3))
    primary_hooks, shadow_hooks = EmbeddingCapture(primary), EmbeddingCapture(shadow)
    with primary_hooks.capture() as captured, shadow_hooks.capture() as shadow_captured:
        primary(torch.ones(1, 4))
        shadow(torch.zeros(2, 4))
    assert captured.embeddings is not None and captured.embeddings.shape == (1, 4)
    assert shadow_captured.embeddings is not None and shadow_captured.embeddings.shape == (2, 4)


def test_describe_model_device() -> None:
    assert describe_model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert describe_model_device(nn.ReLU()) == torch.device("cpu")
