"""Loading the model a ready-made app serves: the embedded digits CNN or a torchvision model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

Preprocess = Callable[[list[Image.Image]], torch.Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelSpec(BaseModel):
    """Which model to serve. ``source="torchvision"`` needs ``arch`` and the user's weights file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["digits", "torchvision"] = "digits"
    arch: str | None = None
    weights_path: str | None = None
    num_classes: int = 1000
    labels_path: str | None = None
    version: str | None = None
    image_size: int = 224


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    preprocess: Preprocess
    labels: tuple[str, ...]
    version: str
    preprocessing: str


def load_model(spec: ModelSpec) -> LoadedModel:
    if spec.source == "digits":
        return _load_digits()
    return _load_torchvision(spec)


def _load_digits() -> LoadedModel:
    from serve_drift.models import digits

    model, info = digits.load_or_train_digits_model()
    return LoadedModel(
        model=model,
        preprocess=digits.preprocess_digits,
        labels=digits.DIGIT_LABELS,
        version=info.version,
        preprocessing=digits.PREPROCESSING,
    )


def _load_torchvision(spec: ModelSpec) -> LoadedModel:
    import torchvision

    if not spec.arch:
        raise ValueError(
            "source='torchvision' needs arch (a torchvision.models name, e.g. 'resnet18')"
        )
    model = torchvision.models.get_model(spec.arch, weights=None, num_classes=spec.num_classes)
    if spec.weights_path:
        model.load_state_dict(load_state_dict(Path(spec.weights_path)))
    labels = _labels(spec)
    version = model_version(spec)
    resize = int(spec.image_size * 256 / 224)
    return LoadedModel(
        model=model,
        preprocess=imagenet_preprocess(image_size=spec.image_size),
        labels=labels,
        version=version,
        preprocessing=f"rgb, resize {resize}, center-crop {spec.image_size}, imagenet-normalize",
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors or a ``torch.save``d state dict, never by unpickling objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def _labels(spec: ModelSpec) -> tuple[str, ...]:
    if not spec.labels_path:
        return tuple(str(i) for i in range(spec.num_classes))
    text = Path(spec.labels_path).read_text(encoding="utf-8")
    labels = json.loads(text) if text.lstrip().startswith("[") else text.splitlines()
    if len(labels) != spec.num_classes:
        raise ValueError(
            f"{spec.labels_path} has {len(labels)} labels, expected num_classes={spec.num_classes}"
        )
    return tuple(str(label) for label in labels)


def model_version(spec: ModelSpec) -> str:
    """The explicit version, else the architecture plus a digest of the weights file."""
    return spec.version or f"{spec.arch}-{_file_digest(spec.weights_path)}"


def _file_digest(path: str | None) -> str:
    if not path:
        return "random-init"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def imagenet_preprocess(*, image_size: int) -> Preprocess:
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Resize(int(image_size * 256 / 224)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )

    def preprocess(images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([transform(image.convert("RGB")) for image in images])

    return preprocess
