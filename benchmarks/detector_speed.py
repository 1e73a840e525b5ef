"""Time per MMD permutation test: native vs alibi-detect, against the compute floor, in one run.

For each size (N reference rows, M window rows, d dimensions, P = 100 permutations) it prints:

- native, warm: a test on a detector already built (the reference-reference kernel block is
  cached at construction, as in the monitor);
- native, cold: construction plus one test (everything computed from scratch);
- native, blockwise: a warm test with the reference block forced out of the cache, so the
  pooled kernel matrix is computed 64 MiB of rows at a time on every test;
- alibi-detect ``MMDDrift`` (PyTorch backend): one ``predict``;
- the compute floor: 2·n²·d + 2·P·n² floating-point operations (n = N + M: the pooled kernel
  matrix, then one quadratic form per permutation) at this machine's measured matrix-multiply
  rate, in float32 (the faster, so the stricter floor) and float64 (what native computes in).

Targets (issue 4): native >= 50x faster than alibi-detect at the larger size and within 3x of
the floor. No assertions: this prints figures.

    python benchmarks/detector_speed.py [--repeats 5] [--alibi-repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from serve_drift.detectors import mmd_native
from serve_drift.detectors.mmd_alibi import AlibiMMD
from serve_drift.detectors.mmd_native import NativeMMD

SIZES = ((1000, 200, 512), (5000, 500, 512))
PERMUTATIONS = 100


@dataclass(frozen=True)
class Row:
    n_ref: int
    m: int
    dim: int
    native_warm_s: float
    native_cold_s: float
    native_blockwise_s: float
    alibi_s: float
    floor32_s: float
    floor64_s: float


def matmul_rate(dtype: torch.dtype, *, size: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a (size x size) @ (size x size) product in ``dtype``."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: thread pool, allocator
    return 2 * size**3 / median_time(lambda: a @ b, repeats=repeats)


def median_time(run: Callable[[], object], *, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def floor_flops(n_ref: int, m: int, dim: int) -> float:
    n = n_ref + m
    return 2 * n * n * dim + 2 * PERMUTATIONS * n * n


def measure(
    n_ref: int, m: int, dim: int, *, repeats: int, alibi_repeats: int, rates: tuple[float, float]
) -> Row:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(n_ref, dim)).astype(np.float32)
    window = (rng.normal(size=(m, dim)) + 0.05).astype(np.float32)
    native = NativeMMD(reference, n_permutations=PERMUTATIONS, device="cpu")
    native.test(window)  # warm-up
    warm = median_time(lambda: native.test(window), repeats=repeats)
    cold = median_time(
        lambda: NativeMMD(reference, n_permutations=PERMUTATIONS, device="cpu").test(window),
        repeats=max(1, repeats // 2),
    )
    blockwise_detector = NativeMMD(
        reference,
        n_permutations=PERMUTATIONS,
        device="cpu",
        max_cached_rows=0,
        sigma=native.sigma,
    )
    blockwise = median_time(lambda: blockwise_detector.test(window), repeats=max(1, repeats // 2))
    alibi = AlibiMMD(reference, n_permutations=PERMUTATIONS, device="cpu")
    alibi.test(window[: min(m, 50)])  # warm-up (its first call sets up the kernel)
    alibi_s = median_time(lambda: alibi.test(window), repeats=alibi_repeats)
    flops = floor_flops(n_ref, m, dim)
    return Row(n_ref, m, dim, warm, cold, blockwise, alibi_s, flops / rates[0], flops / rates[1])


def print_table(rows: list[Row], *, rates: tuple[float, float], threads: int) -> None:
    print(
        f"CPU, {threads} torch threads; matmul rate float32 {rates[0] / 1e9:.0f} GFLOP/s, "
        f"float64 {rates[1] / 1e9:.0f} GFLOP/s; P = {PERMUTATIONS} permutations\n"
    )
    header = (
        f"{'N':>5} {'M':>4} {'d':>4} | {'native warm':>11} {'cold':>8} {'blockwise':>9} | "
        f"{'alibi':>8} | {'floor f32':>9} {'floor f64':>9} | {'alibi/native':>12} "
        f"{'native/floor32':>14} {'cold/floor32':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.n_ref:>5} {r.m:>4} {r.dim:>4} | {_ms(r.native_warm_s):>11} "
            f"{_ms(r.native_cold_s):>8} {_ms(r.native_blockwise_s):>9} | {_ms(r.alibi_s):>8} | "
            f"{_ms(r.floor32_s):>9} {_ms(r.floor64_s):>9} | "
            f"{r.alibi_s / r.native_warm_s:>11.0f}x {r.native_warm_s / r.floor32_s:>13.2f}x "
            f"{r.native_cold_s / r.floor32_s:>11.2f}x"
        )
    big = rows[-1]
    speedup = big.alibi_s / big.native_warm_s
    print(
        f"\ntargets at N={big.n_ref}, M={big.m}: native >= 50x faster than alibi-detect: "
        f"{speedup:.0f}x ({'met' if speedup >= 50 else 'NOT met'}); within 3x of the float32 "
        f"floor: warm {big.native_warm_s / big.floor32_s:.2f}x "
        f"({'met' if big.native_warm_s <= 3 * big.floor32_s else 'NOT met'}), cold "
        f"{big.native_cold_s / big.floor32_s:.2f}x "
        f"({'met' if big.native_cold_s <= 3 * big.floor32_s else 'NOT met'})"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--alibi-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rates = (matmul_rate(torch.float32), matmul_rate(torch.float64))
    rows = [
        measure(n, m, d, repeats=args.repeats, alibi_repeats=args.alibi_repeats, rates=rates)
        for n, m, d in SIZES
    ]
    print_table(rows, rates=rates, threads=args.threads)
    print(
        f"(blockwise: {mmd_native._BLOCK_BYTES // 2**20} MiB kernel blocks; cached reference "
        f"blocks up to {mmd_native._CACHE_BYTES // 2**20} MiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
