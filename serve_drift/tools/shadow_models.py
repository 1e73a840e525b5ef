"""Digits CNN variants served by the ready-made app: candidates for the shadow example.

``serve_drift.tools.shadow_models:build_app`` takes the ready-made app's ``args`` plus
``variant: {seed, epochs}`` and serves a digits CNN trained with that seed for that many
epochs (cached like the default one), with a reference set embedded by that model from the
same reference pool, so that its drift monitor tests it against its own embedding space.
``{seed: 1, epochs: 30}`` is a differently trained model as good as the default (seed 0,
30 epochs); ``{seed: 0, epochs: 2}`` is a deliberately weaker one (about 89 % against 98 %
on the traffic pool).

>>> DigitsVariant(seed=0, epochs=2).model_name
'digits-s0-e2'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serve_drift import _env
from serve_drift.apps.classifier import AppArgs, ImageClassifier, _deployment_options
from serve_drift.config import DriftConfig
from serve_drift.models import digits
from serve_drift.models.default_reference import DATA_VERSION
from serve_drift.monitor.deployment import _lower_priority as lower_priority
from serve_drift.reference.embed import embed_outputs
from serve_drift.reference.reference_set import ReferenceSet


class DigitsVariant(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0)
    epochs: int = Field(30, ge=1, le=500)

    @property
    def model_name(self) -> str:
        return f"digits-s{self.seed}-e{self.epochs}"


def variant_reference(variant: DigitsVariant) -> tuple[Path, str]:
    """The variant's cached reference set (embedded by the variant itself) and its version."""
    model, info = digits.load_or_train_digits_model(seed=variant.seed, epochs=variant.epochs)
    path = _env.cache_dir() / "references" / f"digits-{info.version}-variant.npz"
    if not path.exists():
        split = digits.split_digits(seed=0)
        outputs = embed_outputs(
            model.eval(), split.reference_images, preprocess=digits.preprocess_digits
        )
        ReferenceSet.from_embeddings(
            outputs.embeddings,
            probabilities=outputs.probabilities,
            model_name=variant.model_name,
            model_version=info.version,
            data_version=DATA_VERSION,
            preprocessing=digits.PREPROCESSING,
            source="serve_drift.models.digits.split_digits(seed=0).reference",
        ).save(path)
    return path, info.version


class VariantClassifier(ImageClassifier):
    """The ready-made classifier, serving a digits variant instead of the default model.

    ``niceness`` > 0 lowers the replica's CPU priority (Unix nice), as a shadow candidate may
    want: under contention its copies wait (and are dropped beyond the mirror's queue) while
    the incumbent keeps the CPU. A promoted candidate is redeployed without it.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        *,
        variant: Mapping[str, Any],
        niceness: int = 0,
        top_k: int = 5,
        ingress: Mapping[str, Any] | None = None,
    ) -> None:
        if niceness:
            lower_priority(niceness)
        super().__init__(model, top_k=top_k, ingress=ingress)
        chosen = DigitsVariant.model_validate(dict(variant))
        net, info = digits.load_or_train_digits_model(seed=chosen.seed, epochs=chosen.epochs)
        self.model = net.to(self.device).eval()
        self.loaded = dataclasses.replace(self.loaded, model=self.model, version=info.version)


def build_app(args: Mapping[str, Any]) -> Any:
    """Serve application builder: the ready-made app's ``args`` plus ``variant`` (and an
    optional ``niceness`` for the replicas, see :class:`VariantClassifier`).

    The same deployment as ``serve_drift.apps.classifier:build_app`` builds, with
    :class:`VariantClassifier` in place of the ready-made classifier.
    """
    from ray import serve

    from serve_drift.monitor.deployment import monitored_app
    from serve_drift.replica.decorator import monitored

    rest = dict(args)
    variant = DigitsVariant.model_validate(rest.pop("variant", {}))
    niceness = int(rest.pop("niceness", 0))
    parsed = AppArgs.model_validate(rest)
    if parsed.model.source != "digits":
        raise ValueError("a digits variant needs model.source: digits")
    path, version = variant_reference(variant)
    defaults = {"model_name": variant.model_name, "reference_path": str(path)}
    config = DriftConfig.model_validate({**defaults, "model_version": version, **parsed.drift})
    cls = monitored(config, methods=("predict",))(VariantClassifier)
    deployment: Any = serve.deployment(cls)
    deployment = deployment.options(**_deployment_options(parsed))
    return monitored_app(
        deployment,
        parsed.model.model_dump(mode="json"),
        variant=variant.model_dump(),
        niceness=niceness,
        top_k=parsed.top_k,
        ingress=parsed.ingress.model_dump(mode="json"),
        monitor_options=parsed.monitor,
    )
