"""The YAML configs in deployments/ are valid Serve configs whose args our builder accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_drift import DriftConfig
from serve_drift.apps.classifier import AppArgs
from serve_drift.ingress import IngressConfig

CONFIGS = sorted(Path(__file__).parents[3].joinpath("deployments").glob("*.yaml"))
READY_MADE = "serve_drift.apps.classifier:build_app"
# The shadow configs' router and digits variants: validated in tests/unit/routing.
OTHER_BUILDERS = {"serve_drift.routing.app:build_app", "serve_drift.tools.shadow_models:build_app"}


def test_there_is_a_digits_and_a_torchvision_config() -> None:
    assert {p.stem for p in CONFIGS} >= {"digits", "torchvision"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_a_valid_serve_config_with_valid_args(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in schema.applications:
        assert app.import_path in {READY_MADE, *OTHER_BUILDERS}
        if app.import_path != READY_MADE:
            continue
        args = AppArgs.model_validate(app.args)
        DriftConfig.model_validate(args.drift)
        IngressConfig.model_validate(args.ingress)
