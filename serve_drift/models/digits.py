"""The embedded default model: a small CNN for scikit-learn's bundled 8x8 ``load_digits`` images.

Nothing reaches a model hub from these machines, so the demo model is trained on first use (a few
seconds on two CPU cores) and cached as safetensors (or a ``weights_only`` torch file) with a JSON
sidecar that records its lineage. The 64-d input of ``fc`` is the monitored embedding.

>>> model, info = load_or_train_digits_model()  # doctest: +SKIP
>>> model(preprocess_digits(split_digits().test_images[:2])).shape  # doctest: +SKIP
torch.Size([2, 10])
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from serve_drift.files import atomic_write

DIGIT_LABELS: tuple[str, ...] = tuple(str(i) for i in range(10))
PREPROCESSING = "grey, resize 8x8 bilinear, /255"
MODEL_NAME = "digits-cnn"
EMBEDDING_DIM = 64
IMAGE_SIZE = 8

# Bump when the architecture or training recipe changes, so stale caches are never reused.
_CACHE_SCHEMA = "v1"
# The model is tiny: intra-op threads barely help, and when cores are shared (Ray replicas,
# other jobs) OpenMP barrier waits made 2-thread training ~10x slower than 1 thread in our runs.
_TRAIN_THREADS = 1
_LOCK_TIMEOUT_S = 600.0


class DigitsCNN(nn.Module):
    """Small CNN for (B, 1, 8, 8) float images in [0, 1]; returns (B, 10) logits.

    ``fc`` is registered last, so "last ``nn.Linear``" classifier detection finds it, and its
    64-d input (the output of ``embed`` after ReLU) is the penultimate embedding.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.embed = nn.Linear(32 * 4 * 4, EMBEDDING_DIM)
        self.fc = nn.Linear(EMBEDDING_DIM, len(DIGIT_LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(self.features(x), start_dim=1)
        return self.fc(torch.relu(self.embed(h)))


@dataclass(frozen=True, eq=False)
class DigitsSplit:
    """Disjoint, stratified train / reference-pool / traffic-pool split of the digits images."""

    train_images: np.ndarray
    train_labels: np.ndarray
    reference_images: np.ndarray
    reference_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True)
class ModelInfo:
    """Lineage of the embedded model, as recorded in the cache's JSON sidecar."""

    name: str
    version: str
    weights_path: str
    weights_sha256: str
    weights_format: str
    seed: int
    epochs: int
    test_accuracy: float
    train_time_s: float
    torch_version: str
    preprocessing: str
    labels: tuple[str, ...]
    embedding_dim: int
    classifier_layer: str
    from_cache: bool

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 bundled digits as uint8 (N, 8, 8) images in 0..255 and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The bundled pixels are counts 0..16; scale to the usual 8-bit range a client would send.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def split_digits(*, seed: int = 0) -> DigitsSplit:
    """Deterministic stratified split: 50% train, 25% reference pool, 25% traffic (test) pool."""
    from sklearn.model_selection import train_test_split

    images, labels = load_digits_images()
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, train_size=0.5, stratify=labels, random_state=seed)
    ref, test = train_test_split(rest, train_size=0.5, stratify=labels[rest], random_state=seed)
    return DigitsSplit(
        train_images=images[train],
        train_labels=labels[train],
        reference_images=images[ref],
        reference_labels=labels[ref],
        test_images=images[test],
        test_labels=labels[test],
    )


def preprocess_digits(images: Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
    """The model's preprocessing: grey, resize to 8x8, scale by 1/255 -> (B, 1, 8, 8) float32.

    Accepts PIL images of any mode and size, or a uint8 array (B, H, W) / (B, H, W, C).
    Resizing uses PIL's BILINEAR filter, which since Pillow 7 widens its support when
    downscaling (anti-aliased, close to area averaging), so large inputs are not aliased.

    >>> preprocess_digits(np.zeros((2, 8, 8), dtype=np.uint8)).shape
    torch.Size([2, 1, 8, 8])
    """
    if isinstance(images, np.ndarray):
        grey = _array_to_grey8(images)
    else:
        grey = np.stack([_pil_to_grey8(img) for img in images]) if len(images) else _empty()
    return torch.from_numpy(grey.astype(np.float32) / 255.0).unsqueeze(1)


def _empty() -> np.ndarray:
    return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)


def _array_to_grey8(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(
            f"expected a uint8 array (B, H, W) or (B, H, W, C), got {images.dtype} {images.shape}"
        )
    if images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE):
        return images  # fast path: already what the model sees
    # Anything else goes through PIL so arrays and decoded images are treated identically.
    return np.stack([_pil_to_grey8(Image.fromarray(img.squeeze())) for img in images])


def _pil_to_grey8(image: Image.Image) -> np.ndarray:
    grey = image.convert("L")
    if grey.size != (IMAGE_SIZE, IMAGE_SIZE):
        grey = grey.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.uint8)


def evaluate_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on uint8 digit images (leaves ``model`` in eval mode)."""
    model.eval()
    with torch.inference_mode():
        predicted = model(preprocess_digits(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def train_digits_model(*, seed: int = 0, epochs: int = 30) -> DigitsCNN:
    """Train :class:`DigitsCNN` on the train split, on CPU, in seconds; returns it in eval mode.

    The global torch RNG and thread count are restored afterwards.
    """
    split = split_digits(seed=seed)
    x = preprocess_digits(split.train_images)
    y = torch.from_numpy(split.train_labels)
    with _limited_threads(_TRAIN_THREADS), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN()
        _fit(model, x, y, epochs=epochs, generator=torch.Generator().manual_seed(seed))
    return model.eval()


def _fit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, generator: torch.Generator
) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(32):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
        scheduler.step()


@contextmanager
def _limited_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, previous)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_or_train_digits_model(
    *, cache_dir: Path | None = None, seed: int = 0, epochs: int = 30
) -> tuple[DigitsCNN, ModelInfo]:
    """Load the cached model, training and caching it first if needed. Returns it on CPU, eval mode.

    Safe when several processes (e.g. Ray replicas) start at once: only one trains, under a file
    lock, and files only ever appear whole (written to a temporary name, then ``os.replace``).

    >>> model, info = load_or_train_digits_model()  # doctest: +SKIP
    >>> info.version  # doctest: +SKIP
    'digits-cnn-3f2a...'
    """
    from filelock import FileLock  # a torch dependency

    directory = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{MODEL_NAME}-{_CACHE_SCHEMA}-seed{seed}-e{epochs}"
    loaded = _try_load(directory, stem)  # fast path, no lock: readers only see whole files
    if loaded is not None:
        return loaded
    with FileLock(str(directory / f"{stem}.lock"), timeout=_LOCK_TIMEOUT_S):
        loaded = _try_load(directory, stem)  # another process may have finished meanwhile
        if loaded is not None:
            return loaded
        return _train_and_store(directory, stem, seed=seed, epochs=epochs)


def _default_cache_dir() -> Path:
    from serve_drift import _env

    return _env.cache_dir() / "models"


def _try_load(directory: Path, stem: str) -> tuple[DigitsCNN, ModelInfo] | None:
    """The cached model, or ``None`` when absent or inconsistent (then it is retrained)."""
    meta_path = directory / f"{stem}.json"
    try:
        meta = json.loads(meta_path.read_text())
        weights_path = directory / meta["weights_file"]
        if _sha256(weights_path) != meta["weights_sha256"]:
            return None
        model = DigitsCNN()
        model.load_state_dict(_read_state_dict(weights_path, meta["weights_format"]))
    except (OSError, ValueError, KeyError, RuntimeError):
        return None
    return model.eval(), _info_from_meta(meta, weights_path, from_cache=True)


def _train_and_store(
    directory: Path, stem: str, *, seed: int, epochs: int
) -> tuple[DigitsCNN, ModelInfo]:
    started = time.perf_counter()
    model = train_digits_model(seed=seed, epochs=epochs)
    train_time_s = time.perf_counter() - started
    split = split_digits(seed=seed)
    accuracy = evaluate_accuracy(model, split.test_images, split.test_labels)
    fmt = _weights_format()
    weights_path = directory / f"{stem}.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    atomic_write(weights_path, _serialize_state_dict(model.state_dict(), fmt))
    digest = _sha256(weights_path)
    meta = {
        "name": MODEL_NAME,
        "version": f"{MODEL_NAME}-{digest[:12]}",
        "weights_file": weights_path.name,
        "weights_sha256": digest,
        "weights_format": fmt,
        "seed": seed,
        "epochs": epochs,
        "test_accuracy": accuracy,
        "train_time_s": round(train_time_s, 3),
        "torch_version": torch.__version__,
        "preprocessing": PREPROCESSING,
        "labels": list(DIGIT_LABELS),
        "embedding_dim": EMBEDDING_DIM,
        "classifier_layer": "fc",
    }
    # The sidecar is written last: its presence (with a matching hash) marks the cache complete.
    atomic_write(directory / f"{stem}.json", json.dumps(meta, indent=2).encode())
    return model, _info_from_meta(meta, weights_path, from_cache=False)


def _info_from_meta(meta: dict[str, Any], weights_path: Path, *, from_cache: bool) -> ModelInfo:
    return ModelInfo(
        name=meta["name"],
        version=meta["version"],
        weights_path=str(weights_path),
        weights_sha256=meta["weights_sha256"],
        weights_format=meta["weights_format"],
        seed=int(meta["seed"]),
        epochs=int(meta["epochs"]),
        test_accuracy=float(meta["test_accuracy"]),
        train_time_s=float(meta["train_time_s"]),
        torch_version=meta["torch_version"],
        preprocessing=meta["preprocessing"],
        labels=tuple(meta["labels"]),
        embedding_dim=int(meta["embedding_dim"]),
        classifier_layer=meta["classifier_layer"],
        from_cache=from_cache,
    )


def _weights_format() -> str:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return "torch"
    return "safetensors"


def _serialize_state_dict(state: dict[str, torch.Tensor], fmt: str) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        from safetensors.torch import save

        return save(tensors)
    import io

    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def _read_state_dict(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if fmt == "torch":
        # Never unpickle arbitrary objects: tensors and plain containers only.
        return torch.load(path, map_location="cpu", weights_only=True)
    raise ValueError(f"unknown weights format {fmt!r}; valid: safetensors, torch")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
