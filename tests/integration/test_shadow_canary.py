"""Canary mode over real HTTP, deployed from ``deployments/shadow-canary.yaml`` as ``serve
deploy`` would: a caller keeps its arm across requests, the share changes through Serve's
user_config without a redeploy, and widening it never moves a caller back."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.serve import ServeInstance
from tests.support.shadow import (
    EQUAL,
    report,
    traffic,
    version_of,
    wait,
)

pytestmark = pytest.mark.integration

INCUMBENT, CANDIDATE, ROUTER = "ca-inc", "ca-cand", "ca"
PREFIX = "/ca"
USERS = [f"user-{i:02d}" for i in range(24)]
CONFIG = Path(__file__).resolve().parents[2] / "deployments" / "shadow-canary.yaml"


def _config(db_dir: Path, *, share: float) -> dict[str, Any]:
    """deployments/shadow-canary.yaml, renamed for this test run, with the share given."""
    config = yaml.safe_load(CONFIG.read_text())
    names = {"digits": INCUMBENT, "digits-candidate": CANDIDATE, "canary": ROUTER}
    for app in config["applications"]:
        app["name"] = names[app["name"]]
        args = app["args"]
        if "drift" in args:
            args["drift"]["model_name"] = app["name"]
            args["drift"]["events"] = {"path": str(db_dir / f"{app['name']}.sqlite")}
            args["drift"]["window"] = {"size": 20}
        else:
            router = args["router"]
            router.update(name=ROUTER, incumbent={"app": INCUMBENT}, candidate={"app": CANDIDATE})
            router["comparison"] = {"window_size": 20, "path": str(db_dir / "canary.sqlite")}
            app["route_prefix"] = PREFIX
            app["deployments"][0]["user_config"]["canary_share"] = share
    return {"applications": config["applications"]}


def _apply(config: dict[str, Any]) -> None:
    """What ``serve deploy`` does: the declarative config, applied by the Serve controller."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))

    def running() -> bool:
        apps = serve.status().applications
        names = [a["name"] for a in config["applications"]]
        return all(n in apps and apps[n].status == "RUNNING" for n in names)

    wait(running, timeout_s=180, what="the canary apps to run")


@pytest.fixture(scope="module")
def apps(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from ray import serve

    db_dir = tmp_path_factory.mktemp("canary")
    _apply(_config(db_dir, share=0.25))
    yield {"url": serve_instance.url(PREFIX), "db_dir": db_dir}
    for app in (ROUTER, CANDIDATE, INCUMBENT):
        serve.delete(app)


def _arms_by_user(url: str, *, rounds: int) -> dict[str, set[str]]:
    bodies, _ = traffic(rounds * len(USERS), seed=7)
    seen: dict[str, set[str]] = {user: set() for user in USERS}
    with httpx.Client(timeout=60) as client:
        for r in range(rounds):
            for k, user in enumerate(USERS):
                response = client.post(
                    f"{url}/predict",
                    content=bodies[r * len(USERS) + k],
                    headers={
                        "content-type": "image/png",
                        "x-user-id": user,
                        "x-request-id": f"canary-{uuid.uuid4().hex}",
                    },
                )
                assert response.status_code == 200
                seen[user].add(response.json()["model_version"])
    return seen


def test_a_caller_keeps_its_arm_and_the_share_changes_without_a_redeploy(
    apps: dict[str, Any],
) -> None:
    url = apps["url"]
    candidate = version_of(*EQUAL.values())
    before = _arms_by_user(url, rounds=3)
    assert all(len(arms) == 1 for arms in before.values()), before  # sticky per caller
    on_candidate = {u for u, arms in before.items() if arms == {candidate}}
    assert 0 < len(on_candidate) < len(USERS)
    pid = report(url)["routing"]["replica"]["pid"]

    _apply(_config(apps["db_dir"], share=0.75))  # only user_config changes: reconfigured in place
    wait(lambda: report(url)["routing"]["canary_share"] == 0.75, what="the new share")
    assert report(url)["routing"]["replica"]["pid"] == pid  # the same router process
    after = _arms_by_user(url, rounds=3)
    assert all(len(arms) == 1 for arms in after.values()), after
    widened = {u for u, arms in after.items() if arms == {candidate}}
    assert on_candidate < widened < set(USERS)  # nobody moved back to the incumbent


def test_without_a_caller_key_the_correlation_id_decides_and_repeats_alike(
    apps: dict[str, Any],
) -> None:
    url = apps["url"]
    bodies, _ = traffic(1, seed=8)
    with httpx.Client(timeout=60) as client:
        answers = {
            cid: {
                client.post(
                    f"{url}/predict",
                    content=bodies[0],
                    headers={"content-type": "image/png", "x-request-id": cid},
                ).json()["model_version"]
                for _ in range(3)
            }
            for cid in (f"retry-{i}" for i in range(12))
        }
    assert all(len(v) == 1 for v in answers.values())  # a retried ID gets the same arm
    assert len({next(iter(v)) for v in answers.values()}) == 2  # both arms answer someone
