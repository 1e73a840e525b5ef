"""Sentinel runs: a fixed labelled set sent through the *deployed* model, on demand or on a
schedule. A sentinel set is small, fixed and trusted: a drop in its accuracy with no drop in
live labels points at the model or the serving path, not at the traffic.

Requests carry ``X-Serve-Drift-Context-Source: sentinel``, so the replica keeps them out of
drift windows and the monitor always stores them; their labels then go to
``POST /labels?source=sentinel`` and the monitor records the run's metrics tagged ``sentinel``.

A set is the embedded digits pool, or a labelled folder or manifest of the user's own
(:mod:`serve_drift.tools.sentinel_sets`), versioned and hashed: the run ID starts with the set's
version, so the stored events of a run name the set they came from.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np

from serve_drift.tools.imageio import encode_png
from serve_drift.tools.sentinel_sets import (
    EMBEDDED,
    ImageSet,
    ImageSetError,
    SetLineage,
    embedded_set,
    load_image_set,
)

SENTINEL_SOURCE_HEADER = {"x-serve-drift-context-source": "sentinel"}


@dataclass(frozen=True)
class SentinelRun:
    run_id: str
    sent: int
    failed: int
    accuracy: float
    label_status: dict[str, int]
    # Which labelled set ran (name, version, content hash); None for arrays passed directly.
    set_lineage: SetLineage | None = None


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
    """Send every image (uint8 arrays, as PNG), then its label; returns what the deployed model
    scored.

    A sentinel run changes what the monitor believes (its requests stay out of drift windows,
    its labels become metrics): every call carries the admin bearer token."""
    payloads = [(encode_png(image), "image/png") for image in images]
    return _run(
        base_url,
        payloads,
        [int(y) for y in labels],
        admin_token=admin_token,
        run_id=run_id or _stamp(),
        label_wait_s=label_wait_s,
    )


def run_sentinel_set(
    base_url: str,
    sentinel_set: ImageSet,
    *,
    admin_token: str,
    run_id: str | None = None,
    label_wait_s: float = 20.0,
) -> SentinelRun:
    """Send a labelled set of the user's own (``sentinel_sets.load_image_set``) as its files'
    bytes. The run ID starts with the set's version, so every stored sentinel
    event names the set it came from (``sentinel-<version>-<time>-<hex>-<i>``)."""
    if not sentinel_set.labelled:
        raise ImageSetError(f"{sentinel_set.lineage.source}: a sentinel set needs labels")
    lineage = sentinel_set.lineage
    run = _run(
        base_url,
        [(item.data, item.content_type) for item in sentinel_set.items],
        [int(item.label or 0) for item in sentinel_set.items],
        admin_token=admin_token,
        run_id=run_id or f"{lineage.version}-{_stamp()}",
        label_wait_s=label_wait_s,
    )
    return replace(run, set_lineage=lineage)


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _run(
    base_url: str,
    payloads: list[tuple[bytes, str]],
    labels: list[int],
    *,
    admin_token: str,
    run_id: str,
    label_wait_s: float,
) -> SentinelRun:
    ids = [f"sentinel-{run_id}-{i:04d}" for i in range(len(payloads))]
    headers = {"authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=30, headers=headers) as client:
        predicted = [
            _predict(client, data, content_type, cid)
            for (data, content_type), cid in zip(payloads, ids, strict=True)
        ]
        answered = [(c, y) for c, y, p in zip(ids, labels, predicted, strict=True) if p is not None]
        status = post_labels(client, answered, source="sentinel", wait_s=label_wait_s)
    hits = [p == y for p, y in zip(predicted, labels, strict=True) if p is not None]
    return SentinelRun(
        run_id=run_id,
        sent=len(ids),
        failed=sum(p is None for p in predicted),
        accuracy=float(np.mean(hits)) if hits else float("nan"),
        label_status=dict(Counter(status.values())),
    )


def _predict(
    client: httpx.Client, data: bytes, content_type: str, correlation_id: str
) -> int | None:
    headers = {
        **SENTINEL_SOURCE_HEADER,
        "content-type": content_type,
        "x-request-id": correlation_id,
    }
    try:
        response = client.post("/predict", content=data, headers=headers)
    except httpx.HTTPError:
        return None
    return int(response.json()["class_index"]) if response.status_code == 200 else None


def post_labels(
    client: httpx.Client, items: list[tuple[str, int]], *, source: str, wait_s: float
) -> dict[str, str]:
    """Post labels (``client`` carries the admin token) until each is joined, in batches of at
    most 10 000: events reach the store a moment after their answer. Returns each ID's status."""
    status: dict[str, str] = {}
    pending = dict(items)
    deadline = time.monotonic() + wait_s
    while pending:
        for chunk in _chunks(list(pending.items()), 10_000):
            body = {"labels": [{"correlation_id": c, "label": y} for c, y in chunk]}
            response = client.post("/labels", params={"source": source}, json=body)
            results = response.json().get("results", []) if response.status_code == 200 else []
            for result in results:
                status[result["correlation_id"]] = result["status"]
                if result["status"] != "unknown_correlation_id":
                    pending.pop(result["correlation_id"], None)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return status


def _chunks(items: list[tuple[str, int]], size: int) -> list[list[tuple[str, int]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def read_admin_token(*, token_file: str | None, token_env: str) -> str | None:
    """The admin token a command-line tool sends: from a file, else an environment variable."""
    if token_file:
        return Path(token_file).read_text(encoding="utf-8").strip() or None
    return os.environ.get(token_env, "").strip() or None


def sentinel_command(
    *,
    url: str,
    count: int | None,
    every_s: float,
    runs: int,
    token_file: str | None,
    token_env: str,
    set_path: str = EMBEDDED,
    set_name: str | None = None,
    set_version: str | None = None,
    inspect_only: bool = False,
) -> int:
    """``serve-drift sentinel``: one run, or ``runs`` runs (0: forever) every ``every_s``."""
    try:
        sentinel_set = _sentinel_set(set_path, count=count, name=set_name, version=set_version)
    except ImageSetError as exc:
        print(f"serve-drift sentinel: {exc}")
        return 2
    print("sentinel set " + json.dumps(sentinel_set.lineage.to_dict()))
    if inspect_only:
        return 0
    credential = read_admin_token(token_file=token_file, token_env=token_env)
    if credential is None:
        print(f"serve-drift sentinel: no admin token (use --token-file or ${token_env})")
        return 2
    done = 0
    while True:
        result = run_sentinel_set(url, sentinel_set, admin_token=credential)
        print(
            f"sentinel {result.run_id}: {result.sent} sent, {result.failed} failed, "
            f"accuracy {result.accuracy:.1%}, labels {result.label_status}"
        )
        done += 1
        if every_s <= 0 or (runs and done >= runs):
            return 0 if result.failed == 0 else 1
        time.sleep(every_s)


def _sentinel_set(
    path: str, *, count: int | None, name: str | None, version: str | None
) -> ImageSet:
    if path == EMBEDDED:
        return embedded_set(200 if count is None else count, name=name, version=version)
    return load_image_set(path, name=name, version=version, limit=count)
