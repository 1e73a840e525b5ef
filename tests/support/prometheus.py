"""Real Prometheus and Alertmanager servers for tests: Debian's binaries, on 127.0.0.1.

Each server runs from its own temporary folder on a free loopback port and is stopped when its
``with`` block ends. A missing binary fails the test with the package to install: CI installs
them (``apt-get install -y prometheus prometheus-alertmanager``), so a skip would hide a broken
CI image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.support.serve import free_port

APT_PACKAGES = "prometheus prometheus-alertmanager"
T = TypeVar("T")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed; this test needs Debian's Prometheus tools: "
            f"apt-get install -y {APT_PACKAGES}",
            pytrace=False,
        )
    return path


def run_tool(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run promtool/amtool; the result's output explains a failure."""
    return subprocess.run(
        [require_binary(args[0]), *args[1:]], capture_output=True, text=True, timeout=60
    )


def wait_until(check: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (httpx.HTTPError, KeyError, ValueError) as exc:  # not up yet, or not there yet
            last_error, result = exc, None
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} ({last_error})")


class _Server:
    binary = ""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.folder / "server.log"

    def _arguments(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> _Server:
        command = [require_binary(self.binary), *self._arguments()]
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout_s=30, what=f"{self.binary} to be ready")
        return self

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(f"{self.binary} exited: {self.log_tail()}")
        return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        text = self._log.read_text(errors="replace") if self._log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class PrometheusServer(_Server):
    """``prometheus`` with ``config`` (a dict) and rule files (name -> YAML text)."""

    binary = "prometheus"

    def __init__(self, folder: Path, *, config: dict[str, Any], rules: dict[str, str]) -> None:
        super().__init__(folder)
        for name, text in rules.items():
            (self.folder / name).write_text(text)
        self.config_path = self.folder / "prometheus.yml"
        self.config_path.write_text(json.dumps({**config, "rule_files": sorted(rules)}))

    def _arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
        ]

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        if answer["status"] != "success":
            raise AssertionError(f"{expr}: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()[
            "data"
        ]["groups"]
        return groups

    def targets(self) -> list[dict[str, Any]]:
        data = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]
        targets: list[dict[str, Any]] = data["activeTargets"]
        return targets


class AlertmanagerServer(_Server):
    """``prometheus-alertmanager`` with ``config`` (YAML text), clustering off."""

    binary = "prometheus-alertmanager"

    def __init__(self, folder: Path, *, config: str) -> None:
        super().__init__(folder)
        self.config_path = self.folder / "alertmanager.yml"
        self.config_path.write_text(config)

    def _arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no gossip port: a single instance
        ]

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v2/alerts", timeout=10).json()
        return alerts

    def silence(self, silence_id: str) -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(
            f"{self.url}/api/v2/silence/{silence_id}", timeout=10
        ).json()
        return found
