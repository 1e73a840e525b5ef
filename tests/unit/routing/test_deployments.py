"""The shipped shadow and canary configs are valid Serve configs whose args our builders take,
and whose router names apps that the same file deploys, out of clients' reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_drift.apps.classifier import AppArgs
from serve_drift.routing.app import ShadowAppArgs
from serve_drift.routing.config import RouterUpdate
from serve_drift.tools.shadow_models import DigitsVariant

DEPLOYMENTS = Path(__file__).resolve().parents[3] / "deployments"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOYMENTS / name).read_text())


@pytest.mark.parametrize("name", ["shadow.yaml", "shadow-canary.yaml"])
def test_the_config_is_valid_and_its_router_points_at_its_own_arms(name: str) -> None:
    config = _load(name)
    ServeDeploySchema.model_validate(config)
    apps = {app["name"]: app for app in config["applications"]}
    (router_app,) = [a for a in apps.values() if a["import_path"].startswith("serve_drift.routing")]
    args = ShadowAppArgs.model_validate(router_app["args"])
    for arm in (args.router.incumbent, args.router.candidate):
        assert apps[arm.app]["route_prefix"] is None  # reachable only through the router
    for override in router_app.get("deployments", []):
        assert override["name"] == "ShadowRouter"
        RouterUpdate.model_validate(override["user_config"])
    for app in apps.values():
        if app is router_app:
            continue
        rest = dict(app["args"])
        if "variant" in rest:
            DigitsVariant.model_validate(rest.pop("variant"))
        AppArgs.model_validate(rest)
    model_names = [a["args"]["drift"]["model_name"] for a in apps.values() if "drift" in a["args"]]
    assert len(set(model_names)) == len(model_names)  # one event store per arm
