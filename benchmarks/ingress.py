"""Ingress cost per image size, next to the model forward passes it protects.

Run: ``.venv/bin/python benchmarks/ingress.py`` (about a minute on two cores; ``--quick`` for a
smoke run). For each size and format it times, in process, the median of repeated runs of:

- decode: ``decode_payload`` (allow-list, header limits, full decode, colour-mode handling);
- checks: the plausibility checks with the digits input profile (and the policy decision);

then the same for tensor payloads, and finally the forward pass of the embedded digits CNN and
of torchvision ResNet-18/50 (random weights: the cost does not depend on them) at batch 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from serve_drift.ingress import IngressConfig, InputProfile, decode_payload, evaluate
from serve_drift.ingress.policy import decide

SIZES = [(8, 8), (64, 64), (224, 224), (640, 480), (1920, 1080), (4032, 3024)]
FORMATS = [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
# The largest PNGs here exceed the default 10 MiB body limit: raise it, to time the decoder.
CONFIG = IngressConfig.model_validate({"limits": {"max_body_bytes": 64 * 1024 * 1024}})


def median_ms(fn: Callable[[], object], *, budget_s: float, min_runs: int = 3) -> float:
    """Median wall time of ``fn`` over as many runs as fit in ``budget_s`` (at least a few)."""
    fn()  # warm-up: imports, allocator, caches
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_runs or time.perf_counter() < deadline:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
        if len(times) >= 200:
            break
    return 1000 * statistics.median(times)


def photo_like(width: int, height: int) -> Image.Image:
    """Smooth gradients plus texture, so that compressed sizes look like a real photo's."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128 + 60 * np.sin(x / (width / 6 + 1)) * np.cos(y / (height / 4 + 1))
    channels = [base + rng.normal(0, 12, size=base.shape) + shift for shift in (0, 20, -20)]
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


def digits_profile() -> InputProfile:
    from serve_drift.models.digits import split_digits

    return InputProfile.from_images(split_digits(seed=0).reference_images, source="digits")


def image_rows(*, budget_s: float, sizes: list[tuple[int, int]]) -> list[tuple[str, ...]]:
    profile = digits_profile()
    rows = []
    for width, height in sizes:
        image = photo_like(width, height)
        for fmt, content_type in FORMATS:
            body = encoded(image, fmt)

            def decode(body: bytes = body, content_type: str = content_type) -> object:
                return decode_payload(content_type=content_type, body=body, config=CONFIG)

            payload = decode()
            images = [d.image for d in payload.images]  # type: ignore[attr-defined]

            def check(images: list[Image.Image] = images) -> object:
                findings = evaluate(images, config=CONFIG.plausibility, profile=profile)
                return decide(findings, rows=len(images), config=CONFIG.plausibility)

            decode_ms = median_ms(decode, budget_s=budget_s)
            check_ms = median_ms(check, budget_s=budget_s)
            rows.append(
                (
                    f"{width}x{height}",
                    fmt,
                    f"{len(body) / 1024:.1f}",
                    f"{decode_ms:.3f}",
                    f"{check_ms:.3f}",
                    f"{decode_ms + check_ms:.3f}",
                )
            )
    return rows


def tensor_rows(*, budget_s: float) -> list[tuple[str, ...]]:
    rows = []
    for shape in [(1, 8, 8), (3, 224, 224)]:
        array = np.random.default_rng(0).random(shape, dtype=np.float32)
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        for label, content_type, body in [
            ("npy", "application/x-npy", buffer.getvalue()),
            ("json", "application/json", json.dumps({"tensor": array.tolist()}).encode()),
        ]:

            def decode(
                body: bytes = body, content_type: str = content_type, shape: tuple = shape
            ) -> object:
                return decode_payload(
                    content_type=content_type, body=body, config=CONFIG, input_shape=shape
                )

            ms = median_ms(decode, budget_s=budget_s)
            size = "x".join(map(str, shape))
            rows.append((size, label, f"{len(body) / 1024:.1f}", f"{ms:.3f}"))
    return rows


def forward_rows(*, budget_s: float, quick: bool) -> list[tuple[str, ...]]:
    import torchvision

    from serve_drift.apps.model_loading import imagenet_preprocess
    from serve_drift.models.digits import DigitsCNN, preprocess_digits

    digit = [photo_like(8, 8).convert("L")]
    photo = [photo_like(640, 480)]
    models: list[tuple[str, torch.nn.Module, Callable[[], torch.Tensor]]] = [
        ("digits CNN (8x8 grey)", DigitsCNN().eval(), lambda: preprocess_digits(digit)),
    ]
    arches = ["resnet18"] if quick else ["resnet18", "resnet50"]
    preprocess = imagenet_preprocess(image_size=224)
    for arch in arches:
        model = torchvision.models.get_model(arch, weights=None).eval()
        models.append((f"{arch} (224x224 RGB)", model, lambda: preprocess(photo)))
    rows = []
    for name, model, make_input in models:
        batch = make_input()

        @torch.inference_mode()
        def forward(model: torch.nn.Module = model, batch: torch.Tensor = batch) -> object:
            return model(batch)

        preprocess_ms = median_ms(make_input, budget_s=budget_s)
        forward_ms = median_ms(forward, budget_s=budget_s)
        rows.append((name, f"{preprocess_ms:.3f}", f"{forward_ms:.3f}"))
    return rows


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, *body])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: as a replica sharing its cores would run)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget_s = 0.05 if args.quick else 0.5
    sizes = SIZES[:3] if args.quick else SIZES
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"median of repeated in-process runs, milliseconds\n"
    )
    print("## Image payloads: decode + colour handling, then plausibility checks")
    print(table(("size", "format", "KiB", "decode", "checks", "total"), image_rows(
        budget_s=budget_s, sizes=sizes)))  # fmt: skip
    print("\n## Tensor payloads (decode, dtype/shape/finite/range checks)")
    print(table(("shape", "body", "KiB", "decode"), tensor_rows(budget_s=budget_s)))
    print("\n## Model forward pass at batch 1, for comparison (CPU)")
    print(table(("model", "preprocess", "forward"), forward_rows(
        budget_s=budget_s, quick=args.quick)))  # fmt: skip


if __name__ == "__main__":
    main()
