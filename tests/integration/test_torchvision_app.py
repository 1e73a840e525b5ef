"""The ready-made app serving a torchvision model chosen by name, with the user's weights file."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from serve_drift import ReferenceSet
from serve_drift.apps.model_loading import imagenet_preprocess
from serve_drift.reference.embed import embed_outputs
from tests.support.serve import ADMIN, ServeInstance

pytestmark = pytest.mark.integration

IMAGE_SIZE = 64
LABELS = ["cat", "dog", "bird", "fish", "frog"]


def _images(n: int, *, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)) for _ in range(n)]


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tv")
    torch.manual_seed(0)
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=5).eval()
    torch.save(model.state_dict(), folder / "weights.pt")
    (folder / "labels.txt").write_text("\n".join(LABELS))
    out = embed_outputs(
        model, _images(60, seed=0), preprocess=imagenet_preprocess(image_size=IMAGE_SIZE)
    )
    ReferenceSet.from_embeddings(
        out.embeddings,
        probabilities=out.probabilities,
        model_name="mobilenet",
        model_version="t1",
        data_version="noise-0",
    ).save(folder / "reference.npz")
    return {
        k: str(folder / f)
        for k, f in (
            ("weights", "weights.pt"),
            ("labels", "labels.txt"),
            ("reference", "reference.npz"),
        )
    }


def test_torchvision_app_serves_and_tests_drift(
    serve_instance: ServeInstance, model_files: dict[str, str]
) -> None:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    args = {
        "model": {
            "source": "torchvision",
            "arch": "mobilenet_v3_small",
            "num_classes": 5,
            "weights_path": model_files["weights"],
            "labels_path": model_files["labels"],
            "image_size": IMAGE_SIZE,
            "version": "t1",
        },
        "drift": {
            "model_name": "mobilenet",
            "reference_path": model_files["reference"],
            "window": {"size": 10},
            "detectors": [{"backend": "native"}],
            "monitor_deployment": "TvMonitor",
            "shipping": {"flush_interval_s": 0.1},
        },
    }
    serve.run(build_app(args), name="tv", route_prefix="/tv")
    try:
        with httpx.Client(timeout=30) as client:
            for i, image in enumerate(_images(10, seed=1)):
                response = client.post(
                    serve_instance.url("/tv/predict"),
                    content=_jpeg(image),
                    headers={"content-type": "image/jpeg", "x-request-id": f"tv-{i}"},
                )
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["model_version"] == "t1" and body["label"] in LABELS
                assert len(body["top_k"]) == 5
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            results = httpx.get(serve_instance.url("/tv/drift"), headers=ADMIN, timeout=10).json()[
                "results"
            ]
            if results:
                break
            time.sleep(0.3)
        assert results[0]["model_version"] == "t1" and results[0]["window_size"] == 10
        assert set(results[0]["correlation_ids_sample"]) <= {f"tv-{i}" for i in range(10)}
    finally:
        serve.delete("tv")
