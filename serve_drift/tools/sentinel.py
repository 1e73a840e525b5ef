"""Sentinel runs: a fixed labelled set sent through the *deployed* model, on demand or on a
schedule. A sentinel set is small, fixed and trusted: a drop in its accuracy with no drop in
live labels points at the model or the serving path, not at the traffic.

Requests carry ``X-Serve-Drift-Context-Source: sentinel``, so the replica keeps them out of
drift windows and the monitor always stores them; their labels then go to
``POST /labels?source=sentinel`` and the monitor records the run's metrics tagged ``sentinel``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from serve_drift.tools.imageio import encode_png

SENTINEL_HEADERS = {"content-type": "image/png", "x-serve-drift-context-source": "sentinel"}


@dataclass(frozen=True)
class SentinelRun:
    run_id: str
    sent: int
    failed: int
    accuracy: float
    label_status: dict[str, int]


def digits_sentinel_set(count: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The embedded model's sentinel set: the first ``count`` images of the fixed traffic pool."""
    from serve_drift.models.digits import split_digits

    split = split_digits(seed=0)
    return split.test_images[:count], split.test_labels[:count]


def run_sentinel(
    base_url: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    admin_token: str,
    run_id: str | None = None,
    label_wait_s: float = 20.0,
) -> SentinelRun:
    """Send every image, then its label; returns what the deployed model scored.

    A sentinel run changes what the monitor believes (its requests stay out of drift windows,
    its labels become metrics): every call carries the admin bearer token."""
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    ids = [f"sentinel-{run_id}-{i:04d}" for i in range(len(images))]
    headers = {"authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=30, headers=headers) as client:
        predicted = [_predict(client, image, cid) for image, cid in zip(images, ids, strict=True)]
        answered = [
            (cid, int(y)) for cid, y, p in zip(ids, labels, predicted, strict=True) if p is not None
        ]
        status = _send_labels(client, answered, wait_s=label_wait_s)
    hits = [p == int(y) for p, y in zip(predicted, labels, strict=True) if p is not None]
    return SentinelRun(
        run_id=run_id,
        sent=len(ids),
        failed=sum(p is None for p in predicted),
        accuracy=float(np.mean(hits)) if hits else float("nan"),
        label_status=dict(Counter(status.values())),
    )


def _predict(client: httpx.Client, image: np.ndarray, correlation_id: str) -> int | None:
    try:
        response = client.post(
            "/predict",
            content=encode_png(image),
            headers={**SENTINEL_HEADERS, "x-request-id": correlation_id},
        )
    except httpx.HTTPError:
        return None
    return int(response.json()["class_index"]) if response.status_code == 200 else None


def _send_labels(
    client: httpx.Client, items: list[tuple[str, int]], *, wait_s: float
) -> dict[str, str]:
    """Post labels until each is joined: events reach the store a moment after their answer."""
    status: dict[str, str] = {}
    pending = dict(items)
    deadline = time.monotonic() + wait_s
    while pending:
        body = {"labels": [{"correlation_id": c, "label": y} for c, y in pending.items()]}
        response = client.post("/labels", params={"source": "sentinel"}, json=body)
        results = response.json().get("results", []) if response.status_code == 200 else []
        for result in results:
            status[result["correlation_id"]] = result["status"]
            if result["status"] != "unknown_correlation_id":
                pending.pop(result["correlation_id"], None)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return status


def read_admin_token(*, token_file: str | None, token_env: str) -> str | None:
    """The admin token a command-line tool sends: from a file, else an environment variable."""
    if token_file:
        return Path(token_file).read_text(encoding="utf-8").strip() or None
    return os.environ.get(token_env, "").strip() or None


def sentinel_command(
    *, url: str, count: int, every_s: float, runs: int, token_file: str | None, token_env: str
) -> int:
    """``serve-drift sentinel``: one run, or ``runs`` runs (0: forever) every ``every_s``."""
    credential = read_admin_token(token_file=token_file, token_env=token_env)
    if credential is None:
        print(f"serve-drift sentinel: no admin token (use --token-file or ${token_env})")
        return 2
    images, labels = digits_sentinel_set(count)
    done = 0
    while True:
        result = run_sentinel(url, images, labels, admin_token=credential)
        print(
            f"sentinel {result.run_id}: {result.sent} sent, {result.failed} failed, "
            f"accuracy {result.accuracy:.1%}, labels {result.label_status}"
        )
        done += 1
        if every_s <= 0 or (runs and done >= runs):
            return 0 if result.failed == 0 else 1
        time.sleep(every_s)
