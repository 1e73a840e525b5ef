"""Capture on real timm models (random weights): the embedding is timm's own pre-logits
feature, and the probabilities are the softmax of what the model returns, also for models whose
output is not their classifier layer's (LeViT, EfficientFormer average two heads)."""

from __future__ import annotations

import pytest
import torch

from serve_drift.capture import EmbeddingCapture
from serve_drift.replica.batch import batch_outputs
from tests.unit.replica.rows import pending_rows

timm = pytest.importorskip("timm")

MODELS = [
    "resnet18",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "convnext_atto",
    "vit_tiny_patch16_224",
    "levit_128s",
    "efficientformer_l1",
    "efficientformerv2_s0",
    "regnetx_002",
    "mixer_s32_224",
    "poolformer_s12",
    "ghostnet_100",
    "mobilevit_xxs",
    "rexnet_100",
]
TWO_HEADS = {"levit_128s", "efficientformer_l1", "efficientformerv2_s0"}


@pytest.mark.parametrize("name", MODELS)
def test_capture_equals_timm_pre_logits_and_the_model_output(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    hooks = EmbeddingCapture(model)
    with torch.no_grad(), hooks.capture() as captured:
        output = model(x)
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    hooks.remove()
    assert captured.embeddings is not None and captured.logits is not None
    torch.testing.assert_close(captured.embeddings, pre_logits, rtol=1e-5, atol=1e-5)
    rows = pending_rows(rows=2, embeddings=captured.embeddings, logits=captured.logits)
    outputs = batch_outputs([rows])  # what the replica ships for these rows
    assert outputs.probabilities is not None
    torch.testing.assert_close(
        torch.from_numpy(outputs.probabilities), torch.softmax(output, dim=-1)
    )


@pytest.mark.parametrize("name", sorted(TWO_HEADS))
def test_the_classifier_layer_alone_would_give_other_probabilities(name: str) -> None:
    """Why scores come from the model's output: these models answer with two heads' mean."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    hooks = EmbeddingCapture(model, scores="classifier")
    with torch.no_grad(), hooks.capture() as captured:
        output = model(x)
    assert captured.logits is not None  # random heads are tiny: compare relatively
    assert not torch.allclose(captured.logits, output, rtol=1e-2, atol=0.0)
