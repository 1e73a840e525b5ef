"""The README's "Bring your own model" walk-through, run as written, on real Ray Serve.

The code blocks are read from the README itself, so the test fails when the README drifts from
the code: each ``python`` block is saved under the file name its first line gives, each
``bash`` block runs in a fresh shell in the walk-through's folder, in order. Two things differ
from a user's terminal, and only these: ``serve run my_app.yaml`` is replaced by deploying that
same config on the test run's shared Ray Serve instance (``serve run`` would start a second
Ray), and the README's port 8000 becomes that instance's port.

The second test swaps the deployed monitor's reference through the app's Serve ``user_config``
while traffic flows: no window is lost, and every window tested after the swap, and the replicas'
request spans, carry the new reference version.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_drift import ReferenceSet
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.serve import ServeInstance

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Bring your own model"
SERVE_RUN = re.compile(r"^serve run (\S+)", re.M)
APP = "my-app"
MONITOR = "ImageClassifierDriftMonitor"


def walk_through() -> list[tuple[str, str]]:
    """The section's fenced blocks, ``(language, code)``, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.index("\n## ", start + len(SECTION) + 2)
    return re.findall(r"```(\w*)\n(.*?)```", text[start:end], re.S)


def _env() -> dict[str, str]:
    # The interpreter running the tests, and its serve-drift and serve scripts, come first.
    scripts = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{scripts}:{os.environ['PATH']}"}


def _bash(code: str, *, cwd: Path) -> str:
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout


def _deploy(config_path: Path, *, timeout_s: float = 300) -> dict[str, Any]:
    """What ``serve run <config>`` does, on the running instance."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(APP)
        if app is not None and app.status == "RUNNING":
            return dict(config)
        assert app is None or app.status != "DEPLOY_FAILED", app.message
        time.sleep(1)
    raise AssertionError(f"{APP} did not start: {serve.status().applications.get(APP)}")


def _get(instance: ServeInstance, path: str, *, token: str) -> Any:
    request = urllib.request.Request(
        instance.url(path), headers={"authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def walked(
    serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """The walk-through's folder once every block ran, and what its last command printed."""
    from ray import serve

    folder = tmp_path_factory.mktemp("byom")
    printed = ""
    port = f"127.0.0.1:{serve_instance.http_port}"
    try:
        for language, code in walk_through():
            code = code.replace("127.0.0.1:8000", port)
            if language == "python":
                name = code.splitlines()[0].removeprefix("# ").split(":")[0]
                (folder / name).write_text(code, encoding="utf-8")
            elif language == "bash":
                printed = _run_bash_block(code, folder=folder)
        yield folder, printed
    finally:
        serve.delete(APP)


def _run_bash_block(code: str, *, folder: Path) -> str:
    found = SERVE_RUN.search(code)
    if found is None:
        return _bash(code, cwd=folder)
    before = code[: found.start()]
    assert not code[found.end() :].split("\n", 1)[-1].strip(), "serve run ends its block"
    printed = _bash(before, cwd=folder) if before.strip() else ""
    _deploy(folder / found.group(1))
    return printed


def test_the_walk_through_builds_deploys_and_sees_shifted_traffic_drift(
    walked: tuple[Path, str], serve_instance: ServeInstance
) -> None:
    folder, printed = walked
    reference = ReferenceSet.load(folder / "reference.npz")
    lineage = reference.lineage
    assert lineage.model_source == "factory my_model:make_model"
    assert lineage.preprocessing == "my_model:preprocess"
    assert (lineage.model_version, lineage.data_version, lineage.count) == ("1", "digits-400", 400)
    assert lineage.data_hash.startswith("sha256:") and reference.calibrations
    token = (folder / "admin-token").read_text().strip()
    results = _get(serve_instance, "/drift", token=token)["results"]
    assert [r["window_index"] for r in results] == [0, 1, 2, 3]
    assert [r["is_drift"] for r in results] == [False, False, True, True]
    assert {(r["model_version"], r["reference_model_version"]) for r in results} == {("1", "1")}
    assert {r["reference_version"] for r in results} == {reference.version}
    # What the README says the script prints, from the same results.
    assert "sent data/clean" in printed and "sent data/shifted" in printed
    for r in results:
        verdict = "DRIFT" if r["is_drift"] else "ok"
        assert f"window {r['window_index']}: p = {r['p_value']:.3f} {verdict}" in printed


def test_a_reference_swap_through_user_config_under_load_loses_no_window(
    walked: tuple[Path, str], serve_instance: ServeInstance, otlp_receiver: OtlpReceiver
) -> None:
    folder, _ = walked
    token = (folder / "admin-token").read_text().strip()
    _bash(  # a second reference of the same model: the monitor calibrates it at the swap
        "serve-drift reference build --model my_model:make_model --preprocess "
        "my_model:preprocess --images data/clean --data-version digits-clean-200 "
        "--model-version 1 --no-calibration --out reference-2.npz",
        cwd=folder,
    )
    new = ReferenceSet.load(folder / "reference-2.npz")
    config = yaml.safe_load((folder / "my_app.yaml").read_text())
    config["applications"][0]["deployments"] = [
        {
            "name": MONITOR,
            "user_config": {
                "reference_path": str(folder / "reference-2.npz"),
                "reference_sha256": new.lineage.content_hash,
                "changed_by": "test-operator",
            },
        }
    ]
    (folder / "my_app-swap.yaml").write_text(yaml.safe_dump(config))
    images = sorted((folder / "data" / "clean").glob("*.png"))
    stop = threading.Event()
    sender = threading.Thread(target=_send_until, args=(serve_instance, images, stop))
    sender.start()
    try:
        time.sleep(2)  # traffic is flowing when the update lands
        _deploy(folder / "my_app-swap.yaml")
        health = _wait_for_version(serve_instance, token=token, version=new.version)
        time.sleep(4)  # windows after the swap
    finally:
        stop.set()
        sender.join(timeout=30)
    results = _get(serve_instance, "/drift?limit=500", token=token)["results"]
    indices = [r["window_index"] for r in results]
    assert indices == list(range(indices[-1] + 1))  # every window, in order, none lost
    versions = [r["reference_version"] for r in results]
    assert new.version in versions
    first_new = versions.index(new.version)
    assert set(versions[first_new:]) == {new.version}  # the swap holds
    assert first_new >= 4  # the walk-through's windows kept the reference they were tested with
    monitor = _get(serve_instance, "/admin/health", token=token)["monitor"]
    assert monitor["windows_skipped"] == 0 and monitor["windows_refused"] == 0
    change = health["monitor"]["reference_changes"][-1]
    assert (change["outcome"], change["changed_by"]) == ("applied", "test-operator")
    assert change["to_hash"] == new.lineage.content_hash
    otlp_receiver.wait_for(  # the replicas' request spans follow the monitor's reference
        lambda r: any(
            s.name == "serve_drift.request"
            and s.attributes.get("serve_drift.reference.version") == new.version
            for s in r.spans()
        ),
        timeout_s=30,
    )


def _send_until(instance: ServeInstance, images: list[Path], stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        request = urllib.request.Request(
            instance.url("/predict"),
            data=images[i % len(images)].read_bytes(),
            headers={"content-type": "image/png"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        i += 1


def _wait_for_version(
    instance: ServeInstance, *, token: str, version: str, timeout_s: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = _get(instance, "/admin/health", token=token)
        reference = health["monitor"].get("reference") or {}
        if reference.get("version") == version:
            return dict(health)
        time.sleep(0.5)
    raise AssertionError(f"the monitor did not swap to {version}: {health['monitor']}")
