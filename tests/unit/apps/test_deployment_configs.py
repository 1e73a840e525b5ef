"""The YAML configs in deployments/ are valid Serve configs whose args our builder accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_drift import DriftConfig
from serve_drift.apps.classifier import AppArgs
from serve_drift.ingress import IngressConfig

CONFIGS = sorted(Path(__file__).parents[3].joinpath("deployments").glob("*.yaml"))


def test_there_is_a_digits_and_a_torchvision_config() -> None:
    assert {p.stem for p in CONFIGS} >= {"digits", "torchvision"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_a_valid_serve_config_with_valid_args(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in schema.applications:
        assert app.import_path == "serve_drift.apps.classifier:build_app"
        args = AppArgs.model_validate(app.args)
        DriftConfig.model_validate(args.drift)
        IngressConfig.model_validate(args.ingress)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_run_the_default_detector(path: Path) -> None:
    """What a user copies is what the README documents: the default detector."""
    from ray.serve.schema import ServeDeploySchema

    from serve_drift.config import default_detectors

    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in schema.applications:
        drift = DriftConfig.model_validate(AppArgs.model_validate(app.args).drift)
        assert drift.detectors == default_detectors()
