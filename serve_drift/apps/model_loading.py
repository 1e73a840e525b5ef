"""Loading the model a ready-made app serves, and that a reference set is built from.

Four sources (``ModelSpec.source``): the embedded ``digits`` CNN; a ``torchvision`` or ``timm``
architecture by name plus the user's weights file; or the user's own ``factory``, an import
path ``pkg.module:make_model`` the way Serve takes an app, with the user's ``preprocess``
function by import path too. The replicas and ``serve-drift reference build`` load a model
through this one function, so a reference built from a spec matches what that spec serves.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_drift.errors import CodedError

Preprocess = Callable[[list[Image.Image]], torch.Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Names given as "<library>:<architecture>" rather than as an import path.
NAMED_SOURCES = ("torchvision", "timm")


class ModelLoadError(CodedError, ValueError):
    """The model or its preprocessing could not be loaded as specified.

    ``code``: ``bad_import_path`` (not ``pkg.module:name``), ``import_failed`` (the module or
    the name is not there), ``not_callable``, ``not_a_model`` (the factory did not return an
    ``nn.Module``), ``missing_option`` (e.g. a factory without its preprocess function),
    ``missing_dependency`` (timm not installed) or ``bad_weights``.
    """


class ModelSpec(BaseModel):
    """Which model to serve.

    - ``source="digits"``: the embedded CNN (nothing else needed);
    - ``source="torchvision"`` or ``"timm"``: ``arch`` and the user's ``weights_path``;
    - ``source="factory"``: ``factory``, an import path ``pkg.module:make_model`` to a function
      that returns the ``nn.Module`` (with its weights loaded), and ``preprocess``.

    ``preprocess`` (an import path to a function from a list of PIL images to a batch tensor)
    replaces the ImageNet preprocessing of torchvision and timm models. ``input_shape`` is what
    clients that send tensors must send (default ``(3, image_size, image_size)``; a factory
    model without one takes images only).

    >>> ModelSpec(source="factory", factory="my_model:make_model",
    ...           preprocess="my_model:preprocess", num_classes=10).input_shape is None
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["digits", "torchvision", "timm", "factory"] = "digits"
    arch: str | None = None
    weights_path: str | None = None
    num_classes: int = Field(1000, ge=2)
    labels_path: str | None = None
    version: str | None = None
    image_size: int = 224
    factory: str | None = None
    preprocess: str | None = None
    input_shape: tuple[int, int, int] | None = None

    @model_validator(mode="after")
    def _check_source(self) -> ModelSpec:
        # A ValueError: pydantic reports it with the field path (a ValidationError).
        if self.source == "factory" and not (self.factory and self.preprocess):
            raise ValueError(
                "source 'factory' needs factory (pkg.module:make_model) and preprocess "
                "(pkg.module:preprocess)"
            )
        if self.source in NAMED_SOURCES and not self.arch:
            raise ValueError(
                f"source {self.source!r} needs arch (a {self.source} model name, e.g. 'resnet18')"
            )
        return self

    @property
    def name(self) -> str:
        """What the model is called by default: its architecture, factory or source."""
        return self.arch or (self.factory or self.source).rsplit(":", 1)[-1]


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    preprocess: Preprocess
    labels: tuple[str, ...]
    version: str
    preprocessing: str
    # Where the model came from ("factory my_model:make_model", "torchvision resnet18") and
    # the weights file's sha256 ("" without one): both go into a reference set's lineage.
    source: str = ""
    weights_hash: str = ""


def load_model(spec: ModelSpec) -> LoadedModel:
    if spec.source == "digits":
        return _load_digits()
    if spec.source == "factory":
        return _load_factory(spec)
    return _load_named(spec)


def resolve_import_path(path: str, *, what: str) -> Any:
    """The object an import path ``pkg.module:name`` names (``pkg.module.name`` also works).

    >>> resolve_import_path("os.path:join", what="function").__name__
    'join'
    """
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".")):
        raise ModelLoadError(
            f"{what} {path!r} is not an import path like 'pkg.module:name'",
            code="bad_import_path",
        )
    try:
        found: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"{what} {path!r} could not be imported: {type(exc).__name__}: {exc}",
            code="import_failed",
        ) from exc
    if not callable(found):
        raise ModelLoadError(f"{what} {path!r} is not callable", code="not_callable")
    return found


def _load_factory(spec: ModelSpec) -> LoadedModel:
    assert spec.factory is not None and spec.preprocess is not None
    model = resolve_import_path(spec.factory, what="model factory")()
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(
            f"model factory {spec.factory!r} returned a {type(model).__name__}, not a "
            "torch.nn.Module",
            code="not_a_model",
        )
    if spec.weights_path:
        model.load_state_dict(load_state_dict(Path(spec.weights_path)))
    return LoadedModel(
        model=model,
        preprocess=resolve_import_path(spec.preprocess, what="preprocess function"),
        labels=_labels(spec),
        version=model_version(spec),
        preprocessing=spec.preprocess,
        source=f"factory {spec.factory}",
        weights_hash=_weights_hash(spec.weights_path),
    )


def _load_digits() -> LoadedModel:
    from serve_drift.models import digits

    model, info = digits.load_or_train_digits_model()
    return LoadedModel(
        model=model,
        preprocess=digits.preprocess_digits,
        labels=digits.DIGIT_LABELS,
        version=info.version,
        preprocessing=digits.PREPROCESSING,
        source="embedded digits CNN",
    )


def _load_named(spec: ModelSpec) -> LoadedModel:
    """A torchvision or timm architecture, randomly initialised, then the user's weights."""
    assert spec.arch is not None
    model = _architecture(spec.source, spec.arch, num_classes=spec.num_classes)
    if spec.weights_path:
        model.load_state_dict(load_state_dict(Path(spec.weights_path)))
    if spec.preprocess:
        preprocess = resolve_import_path(spec.preprocess, what="preprocess function")
        preprocessing = spec.preprocess
    else:
        resize = int(spec.image_size * 256 / 224)
        preprocess = imagenet_preprocess(image_size=spec.image_size)
        preprocessing = f"rgb, resize {resize}, center-crop {spec.image_size}, imagenet-normalize"
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        labels=_labels(spec),
        version=model_version(spec),
        preprocessing=preprocessing,
        source=f"{spec.source} {spec.arch}",
        weights_hash=_weights_hash(spec.weights_path),
    )


def _architecture(source: str, arch: str, *, num_classes: int) -> torch.nn.Module:
    # Random weights only: nothing here may download (the user's weights file follows).
    if source == "timm":
        try:
            import timm
        except ImportError as exc:
            raise ModelLoadError(
                "source 'timm' needs the timm package (pip install timm)",
                code="missing_dependency",
            ) from exc
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    import torchvision

    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors or a ``torch.save``d state dict, never by unpickling objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}", code="bad_weights")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} does not hold a state dict", code="bad_weights")
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
    """The explicit version, else the model's name plus a digest of the weights file."""
    return spec.version or f"{spec.name}-{_file_digest(spec.weights_path)}"


def _weights_hash(path: str | None) -> str:
    return f"sha256:{hashlib.sha256(Path(path).read_bytes()).hexdigest()}" if path else ""


def _file_digest(path: str | None) -> str:
    return _weights_hash(path).removeprefix("sha256:")[:12] if path else "random-init"


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
