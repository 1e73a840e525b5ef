"""The embedded digits model: accuracy, caching, concurrent first use, preprocessing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from serve_drift.models.digits import (
    DIGIT_LABELS,
    EMBEDDING_DIM,
    DigitsCNN,
    evaluate_accuracy,
    load_digits_images,
    load_or_train_digits_model,
    preprocess_digits,
    split_digits,
)
from serve_drift.tools.imageio import encode_jpeg, encode_png


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("digits-cache")


@pytest.fixture(scope="module")
def trained(cache: Path):
    return load_or_train_digits_model(cache_dir=cache)


def test_images_are_uint8_full_range() -> None:
    images, labels = load_digits_images()
    assert images.dtype == np.uint8 and images.shape[1:] == (8, 8)
    assert images.max() == 255 and images.min() == 0
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))


def test_split_is_disjoint_deterministic_and_complete() -> None:
    a, b = split_digits(seed=0), split_digits(seed=0)
    parts = [a.train_images, a.reference_images, a.test_images]
    assert sum(len(p) for p in parts) == 1797
    assert len(a.train_images) == 898 and abs(len(a.reference_images) - len(a.test_images)) <= 1
    np.testing.assert_array_equal(a.test_images, b.test_images)
    rows = {p.tobytes() for part in parts for p in part}
    train_rows = {p.tobytes() for p in a.train_images}
    test_rows = {p.tobytes() for p in a.test_images}
    # The dataset holds a few identical images; disjoint indices still leave nearly no overlap.
    assert len(train_rows & test_rows) <= 5 and len(rows) > 1700
    assert not np.array_equal(split_digits(seed=1).test_labels, a.test_labels)


def test_classifier_is_last_linear_with_embedding_input() -> None:
    model = DigitsCNN()
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears[-1][0] == "fc" and linears[-1][1].in_features == EMBEDDING_DIM
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, len(DIGIT_LABELS))


def test_trains_to_95_percent_and_records_lineage(trained) -> None:
    model, info = trained
    split = split_digits(seed=0)
    accuracy = evaluate_accuracy(model, split.test_images, split.test_labels)
    print(f"digits test accuracy {accuracy:.4f}, trained in {info.train_time_s:.2f}s")
    assert accuracy >= 0.95
    assert info.test_accuracy == pytest.approx(accuracy)
    assert not info.from_cache and not model.training
    assert info.version.startswith("digits-cnn-") and len(info.version) == len("digits-cnn-") + 12
    assert info.torch_version == torch.__version__ and info.seed == 0


def test_reload_gives_identical_weights_without_training(trained, cache: Path) -> None:
    model, info = trained
    reloaded, info2 = load_or_train_digits_model(cache_dir=cache)
    assert info2.from_cache and info2.version == info.version
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
    sidecar = json.loads(Path(info.weights_path).with_suffix(".json").read_text())
    assert sidecar["weights_sha256"].startswith(info.version.removeprefix("digits-cnn-"))


def test_corrupt_cache_is_retrained(tmp_path: Path, trained) -> None:
    _, info = trained
    weights = Path(info.weights_path)
    for src in (weights, weights.with_suffix(".json")):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    (tmp_path / weights.name).write_bytes(b"garbage")
    _, again = load_or_train_digits_model(cache_dir=tmp_path)
    assert not again.from_cache and again.test_accuracy >= 0.95


_WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from serve_drift.models.digits import load_or_train_digits_model
    _, info = load_or_train_digits_model(cache_dir=Path(sys.argv[1]))
    print(json.dumps({"version": info.version, "from_cache": info.from_cache}))
    """
)


def test_two_processes_starting_at_once_train_once(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert results[0]["version"] == results[1]["version"]
    assert sorted(r["from_cache"] for r in results) == [False, True]  # exactly one trained
    assert not list(tmp_path.glob(".*.tmp"))
    _, info = load_or_train_digits_model(cache_dir=tmp_path)
    assert info.from_cache and info.version == results[0]["version"]


def test_png_round_trip_preprocesses_like_the_array() -> None:
    images = split_digits(seed=0).test_images[:32]
    decoded = [Image.open(io.BytesIO(encode_png(img))) for img in images]
    torch.testing.assert_close(preprocess_digits(decoded), preprocess_digits(images))


def test_rgb_and_jpeg_inputs_are_close_to_the_array() -> None:
    images = split_digits(seed=0).test_images[:16]
    rgb = [Image.fromarray(np.repeat(img[:, :, None], 3, axis=2)) for img in images]
    torch.testing.assert_close(
        preprocess_digits(rgb), preprocess_digits(images), atol=1 / 255, rtol=0
    )
    jpeg = [Image.open(io.BytesIO(encode_jpeg(img))) for img in images]
    assert (preprocess_digits(jpeg) - preprocess_digits(images)).abs().mean() < 0.05


def test_preprocess_resizes_large_images_and_validates() -> None:
    big = Image.fromarray(np.full((64, 48), 200, dtype=np.uint8))
    x = preprocess_digits([big])
    assert x.shape == (1, 1, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.full((1, 1, 8, 8), 200 / 255))
    assert preprocess_digits(np.full((2, 16, 16), 255, dtype=np.uint8)).min() == 1.0
    assert preprocess_digits([]).shape == (0, 1, 8, 8)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_digits(np.zeros((2, 8, 8), dtype=np.float32))


def test_torch_format_fallback_round_trips(tmp_path: Path, monkeypatch, trained) -> None:
    from serve_drift.models import digits

    monkeypatch.setattr(digits, "_weights_format", lambda: "torch")
    model, info = digits.load_or_train_digits_model(cache_dir=tmp_path, epochs=2)
    assert info.weights_format == "torch" and info.weights_path.endswith(".pt")
    reloaded, again = digits.load_or_train_digits_model(cache_dir=tmp_path, epochs=2)
    assert again.from_cache and again.version == info.version
    torch.testing.assert_close(reloaded.fc.weight, model.fc.weight, rtol=0, atol=0)
