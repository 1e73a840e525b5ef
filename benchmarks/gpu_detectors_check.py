"""One-shot CUDA check of the native detectors: CPU/CUDA agreement and time per test.

Needs only torch, numpy and scipy (it loads the detector modules without the package's
``__init__``, which would pull in Ray and the rest). Run from the repository root on a GPU
machine:  ``python3 benchmarks/gpu_detectors_check.py``  (about a minute on an H100/H200);
``--quick`` runs tiny sizes on the CPU, to smoke-test the script itself.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
QUICK = "--quick" in sys.argv
DEVICE = "cpu" if QUICK else "cuda"
SCALE = 10 if QUICK else 1
# (label, N, M, d, P, extra constructor arguments)
CASES = [
    ("mmd cached", 1000, 200, 512, 100, {}),
    ("mmd cached", 5000, 500, 512, 100, {}),
    ("mmd cached", 10000, 10000, 512, 1000, {"max_cached_rows": 20000}),
    ("mmd blockwise", 20000, 2000, 512, 100, {}),
    ("classifier", 5000, 500, 512, 100, {}),
    ("combined default", 5000, 500, 512, 500, {}),
]


def load_detectors() -> dict[str, Any]:
    for name, path in (
        ("serve_drift", ROOT / "serve_drift"),
        ("serve_drift.detectors", ROOT / "serve_drift" / "detectors"),
    ):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    modules = {}
    for name in ("mmd_native", "classifier_native", "combined"):
        try:
            modules[name] = importlib.import_module(f"serve_drift.detectors.{name}")
        except ImportError as exc:  # e.g. no scipy on the machine: skip what needs it
            print(f"skipping {name}: {exc}")
    return modules


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[], object], *, repeats: int) -> float:
    run()
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def build(
    modules: dict[str, Any],
    label: str,
    x: np.ndarray,
    probs: np.ndarray,
    *,
    p: int,
    device: str,
    extra: dict[str, int],
) -> Any:
    if label.startswith("mmd"):
        return modules["mmd_native"].NativeMMD(x, n_permutations=p, device=device, **extra)
    if label.startswith("classifier"):
        return modules["classifier_native"].NativeClassifier(x, n_permutations=p, device=device)
    return modules["combined"].CombinedDetector(
        x, reference_probabilities=probs, n_permutations=p, device=device
    )


def available(modules: dict[str, Any], label: str) -> bool:
    needed = {"mmd": "mmd_native", "cla": "classifier_native", "com": "combined"}[label[:3]]
    return needed in modules


def main() -> int:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {gpu}, device {DEVICE}")
    if not (QUICK or torch.cuda.is_available()):
        return 1
    modules = load_detectors()
    rng = np.random.default_rng(0)

    def data(n: int, m: int, d: int) -> tuple[np.ndarray, ...]:
        return (
            rng.normal(size=(n, d)).astype(np.float32),
            (rng.normal(size=(m, d)) + 0.02).astype(np.float32),
            rng.dirichlet(np.ones(10) * 0.3, size=n),
            rng.dirichlet(np.ones(10) * 0.3, size=m),
        )

    # 1. agreement: the same statistic on CPU and CUDA (p-values differ: other generators).
    x, y, px, py = data(1000 // SCALE, 200 // SCALE, 512 // SCALE)
    for label in ("mmd", "classifier", "combined"):
        if not available(modules, label):
            continue
        cpu = build(modules, label, x, px, p=100, device="cpu", extra={}).test(y, probabilities=py)
        dev = build(modules, label, x, px, p=100, device=DEVICE, extra={})
        on_device = dev.test(y, probabilities=py)
        rel = abs(cpu.distance - on_device.distance) / abs(cpu.distance)
        print(
            f"agreement {label:10s}: distance cpu {cpu.distance:.12g} {DEVICE} "
            f"{on_device.distance:.12g} (rel diff {rel:.1e}); p cpu {cpu.p_value:.3f} "
            f"{DEVICE} {on_device.p_value:.3f}"
        )
    # 2. time per test.
    for label, n, m, d, p, extra in CASES:
        if not available(modules, label):
            continue
        x, y, px, py = data(n // SCALE, m // SCALE, d // SCALE)
        started = time.perf_counter()
        extra = {k: v // SCALE for k, v in extra.items()}
        detector = build(modules, label, x, px, p=p, device=DEVICE, extra=extra)
        sync()
        build_s = time.perf_counter() - started
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        test_s = timed(lambda: detector.test(y, probabilities=py), repeats=5)  # noqa: B023
        peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
        mode = f" blockwise={detector.blockwise}" if hasattr(detector, "blockwise") else ""
        print(
            f"time {label:17s} N={len(x):>5} M={len(y):>5} d={x.shape[1]} P={p:>4}: build "
            f"{build_s * 1e3:7.1f} ms, test {test_s * 1e3:7.1f} ms, peak {peak:5.2f} GiB{mode}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
