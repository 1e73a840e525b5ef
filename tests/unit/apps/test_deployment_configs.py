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
VARIANTS = "serve_drift.tools.shadow_models:build_app"  # the ready-made app, another digits CNN
ROUTER = "serve_drift.routing.app:build_app"  # no model of its own: tests/unit/routing


def _model_args(app: object) -> AppArgs | None:
    """The ready-made app's args of an app that serves a model; None for the shadow router."""
    import_path, args = app.import_path, dict(app.args)  # type: ignore[attr-defined]
    assert import_path in {READY_MADE, VARIANTS, ROUTER}
    if import_path == ROUTER:
        return None
    if import_path == VARIANTS:
        for key in ("variant", "niceness"):
            args.pop(key, None)
    return AppArgs.model_validate(args)


def test_there_is_a_digits_and_a_torchvision_config() -> None:
    assert {p.stem for p in CONFIGS} >= {"digits", "torchvision"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_a_valid_serve_config_with_valid_args(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in schema.applications:
        args = _model_args(app)
        if args is None:
            continue
        DriftConfig.model_validate(args.drift)
        IngressConfig.model_validate(args.ingress)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_run_the_default_detector(path: Path) -> None:
    """What a user copies is what the README documents: the default detector."""
    from ray.serve.schema import ServeDeploySchema

    from serve_drift.config import default_detectors

    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in schema.applications:
        args = _model_args(app)
        if args is not None:
            assert DriftConfig.model_validate(args.drift).detectors == default_detectors()
