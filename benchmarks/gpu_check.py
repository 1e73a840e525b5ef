#!/usr/bin/env python3
"""One-shot device check for serve-drift: capture overhead, native MMD speed, matmul rates.

Meant to be run ONCE on a lent GPU machine via ``bash benchmarks/gpu_check.sh`` (about one to two
minutes on an H100/H200), and on CPU here with ``--quick`` as a smoke test.

The GPU machine has PyTorch, torchvision and numpy, but not our venv: no Ray, OpenTelemetry or
alibi-detect, and maybe no pydantic. Importing the ``serve_drift`` package would run its
``__init__`` (pydantic config, Ray Serve deployment, telemetry), so this script never does.
Instead it registers bare stub packages ``serve_drift`` and ``serve_drift.detectors`` in
``sys.modules`` (with ``__path__`` pointing at the source folders, so their ``__init__.py`` never
runs) and loads the torch-only modules it needs by file path, in dependency order:
``messages`` -> ``detectors.base`` -> ``detectors.validate`` -> ``detectors.mmd_native`` (which
imports ``detectors.permutation`` and ``detectors.subset_sums``; numba only on the CPU) and
``capture``. None of them imports pydantic, Ray or OpenTelemetry; the script prints which of
those ended up imported, to prove it. ``build_detector`` is not used (its registry imports the
pydantic ``config``): :class:`NativeMMD` is built directly with the same keyword arguments.

Exit status: 0 when every check passed, 1 when a check failed or a section raised something
other than an out-of-memory error.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "serve_drift"
HEAVY_DEPENDENCIES = ("pydantic", "ray", "opentelemetry", "alibi_detect")

# Filled in as sections run; printed as the SUMMARY block at the end (also after a timeout).
SUMMARY: list[str] = []
FAILURES: list[str] = []
ERRORS: list[str] = []
START = time.perf_counter()


# --------------------------------------------------------------------------------------------
# Loading the torch-only modules without the package __init__
# --------------------------------------------------------------------------------------------


def _stub_package(name: str, path: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]  # submodules resolve from the source folder
    module.__package__ = name
    module.__file__ = None
    sys.modules[name] = module
    return module


def _load_by_path(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name} from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, leaf = name.rpartition(".")
    setattr(sys.modules[parent], leaf, module)
    return module


def load_torch_only_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """``(capture, detectors.mmd_native)`` loaded by file path under stub parent packages."""
    before = {name for name in HEAVY_DEPENDENCIES if sys.modules.get(name) is not None}
    root = _stub_package("serve_drift", PACKAGE_DIR)
    root.detectors = _stub_package("serve_drift.detectors", PACKAGE_DIR / "detectors")
    for name, relative in (
        ("serve_drift.messages", "messages.py"),
        ("serve_drift.detectors.base", "detectors/base.py"),
        ("serve_drift.detectors.mmd_native", "detectors/mmd_native.py"),
        ("serve_drift.capture", "capture.py"),
    ):
        _load_by_path(name, PACKAGE_DIR / relative)
    after = {name for name in HEAVY_DEPENDENCIES if sys.modules.get(name) is not None}
    pulled = sorted(after - before)
    print(
        "loaded serve_drift.capture and serve_drift.detectors.mmd_native by file path "
        f"(stub parent packages); heavy deps pulled in: {pulled or 'none'}"
    )
    if pulled:
        FAILURES.append(f"loading torch-only modules imported {pulled}")
    return sys.modules["serve_drift.capture"], sys.modules["serve_drift.detectors.mmd_native"]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def elapsed() -> float:
    return time.perf_counter() - START


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once_s(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_s(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(time_once_s(fn, device) for _ in range(repeats))


def check(ok: bool, label: str) -> bool:
    print(f"  [{'PASS' if ok else 'FAIL'}] {label}")
    if not ok:
        FAILURES.append(label)
    return ok


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def run_section(title: str, fn: Callable[[], None]) -> None:
    print(f"\n=== {title} (t={elapsed():.1f}s) ===", flush=True)
    try:
        fn()
    except Exception as error:  # report and go on with the next section
        traceback.print_exc()
        message = f"{title}: {type(error).__name__}: {error}"
        print(f"  [ERROR] {message}")
        ERRORS.append(message)
    finally:
        sys.stdout.flush()


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Section 1: embedding capture overhead
# --------------------------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    if precision == "fp32":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _build_model(device: torch.device) -> tuple[nn.Module, str]:
    try:
        import torchvision

        return torchvision.models.resnet50(weights=None).eval().to(device), "resnet50"
    except ImportError:  # torchvision missing: a small stand-in with the same head layout
        model = nn.Sequential()
        model.add_module("features", nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU()))
        model.add_module("pool", nn.AdaptiveAvgPool2d(1))
        model.add_module("flatten", nn.Flatten())
        model.add_module("fc", nn.Linear(64, 1000))
        return model.eval().to(device), "fallback-convnet (no torchvision)"


def _forward(
    model: nn.Module, x: torch.Tensor, *, device: torch.device, precision: str, hooks: Any
) -> None:
    """One no-grad forward pass, inside ``hooks.capture()`` unless ``hooks`` is None."""
    with torch.no_grad(), _autocast(device, precision):
        if hooks is None:
            model(x)
        else:
            with hooks.capture():
                model(x)


def section_capture(args: argparse.Namespace, device: torch.device, capture_mod: Any) -> None:
    embedding_capture = capture_mod.EmbeddingCapture
    torch.backends.cudnn.benchmark = True
    model, model_name = _build_model(device)
    size = 64 if args.quick else 224
    batches = (1, 2) if args.quick else (1, 8, 32)
    precisions = args.precisions.split(",") if args.precisions else ["fp32"]
    if not args.precisions and device.type == "cuda":
        precisions += ["bf16", "fp16"]
    warmup, repeats = (2, 3) if args.quick else (5, 25)
    print(
        f"model {model_name}, input {size}x{size}, eval + no_grad, median of {repeats} after "
        f"{warmup} warm-up; 'bare' = no hooks, 'idle' = hooks registered but no capture() "
        "active, 'capture' = inside capture()"
    )

    # Correctness: the captured embedding is the fc input (seen by an independent pre-hook),
    # on the model's device, and matches a forward pass of the trunk without the head.
    seen: dict[str, torch.Tensor] = {}
    head = model.fc
    pre = head.register_forward_pre_hook(lambda _m, inputs: seen.__setitem__("x", inputs[0]))
    post = head.register_forward_hook(lambda _m, _i, out: seen.__setitem__("y", out))
    hooks = embedding_capture(model)
    model_device = next(model.parameters()).device
    check_batch = 2 if args.quick else 8
    x = torch.randn(check_batch, 3, size, size, device=device)
    for precision in precisions:
        with torch.no_grad(), _autocast(device, precision), hooks.capture() as captured:
            model(x)
        emb = captured.embeddings
        print(
            f"  {precision}: layer={hooks.layer_name!r} error={captured.error!r} "
            f"embedding={None if emb is None else (tuple(emb.shape), str(emb.dtype))} "
            f"on {None if emb is None else emb.device} (model on {model_device})"
        )
        check(captured.error is None and emb is not None, f"{precision}: capture recorded")
        if emb is None:
            continue
        check(emb.device == model_device, f"{precision}: embedding on model device {emb.device}")
        check(
            torch.equal(emb, seen["x"].flatten(1)),
            f"{precision}: embedding == fc input (independent pre-hook)",
        )
        check(
            captured.logits is not None and torch.equal(captured.logits, seen["y"]),
            f"{precision}: logits == fc output",
        )
    pre.remove()
    post.remove()
    if model_name == "resnet50":
        trunk = nn.Sequential(*list(model.children())[:-1])
        with torch.no_grad(), hooks.capture() as captured:
            model(x)
            reference = trunk(x).flatten(1)
        diff = float((captured.embeddings - reference).abs().max())
        check(diff < 1e-3, f"fp32: embedding == trunk(x) recomputed (max |diff| {diff:.2e})")
    hooks.remove()

    print(
        f"\n  {'prec':5} {'batch':>5} {'bare ms':>9} {'idle ms':>9} {'capture ms':>10} {'added':>8}"
    )
    for precision in precisions:
        for batch in batches:
            if elapsed() > args.budget_s * 0.4:
                print(f"  skipped {precision} b{batch}: time guard ({elapsed():.0f}s)")
                continue
            x = torch.randn(batch, 3, size, size, device=device)
            times: dict[str, list[float]] = {"bare": [], "idle": [], "capture": []}
            run = partial(_forward, model, x, device=device, precision=precision)
            hooks = embedding_capture(model)
            for _ in range(warmup):
                run(hooks=None)
                run(hooks=hooks)
            # Interleave the three modes per repeat so clock drift hits all of them alike.
            for _ in range(repeats):
                hooks.remove()
                times["bare"].append(time_once_s(partial(run, hooks=None), device))
                hooks = embedding_capture(model)  # registered but idle: no capture() active
                times["idle"].append(time_once_s(partial(run, hooks=None), device))
                times["capture"].append(time_once_s(partial(run, hooks=hooks), device))
            hooks.remove()
            bare, idle, active = (statistics.median(times[k]) * 1e3 for k in times)
            added = 100.0 * (active - bare) / bare
            print(
                f"  {precision:5} {batch:>5} {bare:>9.3f} {idle:>9.3f} {active:>10.3f} "
                f"{added:>+7.1f}%"
            )
            SUMMARY.append(
                f"capture {model_name} {precision} b{batch} {size}px: bare {bare:.3f} ms, "
                f"hooks idle {idle:.3f} ms, capture {active:.3f} ms, added {added:+.1f}%"
            )
    model.cpu()
    free_device_memory(device)


# --------------------------------------------------------------------------------------------
# Section 2: matmul rates on the device
# --------------------------------------------------------------------------------------------


def section_matmul(args: argparse.Namespace, device: torch.device, rates: dict[str, float]) -> None:
    n = 512 if args.quick else 4096
    flops = 2.0 * n**3
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    variants = [
        ("fp64", torch.float64, False),
        ("fp32", torch.float32, False),
        ("tf32", torch.float32, True),
    ]
    if device.type == "cuda":
        variants.append(("bf16", torch.bfloat16, False))
    try:
        for label, dtype, tf32 in variants:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            seconds = median_s(lambda a=a, b=b: a @ b, device, warmup=2, repeats=10)
            rates[label] = flops / seconds
            print(f"  {n}^3 {label:5}: {seconds * 1e3:8.3f} ms  {rates[label] / 1e12:8.2f} TFLOP/s")
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    SUMMARY.append(
        f"matmul {n}^3 TFLOP/s: "
        + ", ".join(f"{label} {rate / 1e12:.2f}" for label, rate in rates.items())
    )
    free_device_memory(device)


# --------------------------------------------------------------------------------------------
# Section 3: native MMD drift test on the device
# --------------------------------------------------------------------------------------------


def section_mmd(
    args: argparse.Namespace, device: torch.device, mmd_mod: Any, rates: dict[str, float]
) -> None:
    native_mmd = mmd_mod.NativeMMD
    d, permutations = 512, args.permutations
    sizes = (
        [(200, 50), (600, 100)]
        if args.quick
        else [(1000, 200), (5000, 500), (10000, 1000), (10000, 10000)]
    )
    # The native backend computes in float64, so its floors use the measured fp64 matmul rate.
    rate = rates.get("fp64")
    print(
        f"d={d}, P={permutations} permutations, float64 compute; floor = flops / measured fp64 "
        f"matmul rate ({'%.2f TFLOP/s' % (rate / 1e12) if rate else 'not measured'}); "
        "full floor = 2 n^2 d + 2 P n^2 with n = N + M (build + one test: the whole kernel "
        "matrix, one quadratic form per permutation); per-window floor (issue 13) = "
        "2 d (NM + M^2) + 2 P (N^2 + NM + M^2) (one test on a built detector). The torch "
        "split-sum engine (CUDA) does exactly the per-window floor's products; the numba engine "
        "(CPU) skips the 2 P N^2 term and gathers P M(M-1)/2 elements instead, so there a "
        "ratio below 1x (marked *) means less work, not a faster machine"
    )
    same_p_values: list[float] = []
    header = (
        f"  {'N':>6} {'M':>6} {'engine':>6} {'build ms':>9} {'test ms':>9} {'peak MiB':>9} "
        f"{'full floor':>10} {'ratio':>7} {'window floor':>12} {'ratio':>7} "
        f"{'p_same':>7} {'p_shift':>8}"
    )
    print(header)
    for n_ref, m_win in sizes:
        if elapsed() > args.budget_s:
            print(f"  skipped N={n_ref} M={m_win}: time guard ({elapsed():.0f}s > {args.budget_s})")
            SUMMARY.append(f"mmd N={n_ref} M={m_win}: skipped (time guard)")
            continue
        try:
            row = _mmd_one_size(native_mmd, device, n_ref, m_win, d, permutations, rate, args)
        except Exception as error:
            free_device_memory(device)
            if is_oom(error):
                print(f"  N={n_ref} M={m_win}: out of memory: {str(error).splitlines()[0]}")
                SUMMARY.append(f"mmd N={n_ref} M={m_win}: out of device memory")
                continue
            traceback.print_exc()
            ERRORS.append(f"mmd N={n_ref} M={m_win}: {type(error).__name__}: {error}")
            print(f"  [ERROR] N={n_ref} M={m_win}: {type(error).__name__}: {error}")
            continue
        same_p_values.append(row["p_same"])
    if same_p_values:
        check(
            any(p > 0.05 for p in same_p_values),
            f"same-distribution window p > 0.05 at >= 1 size (p = {same_p_values})",
        )


def _mmd_one_size(
    native_mmd: Any,
    device: torch.device,
    n_ref: int,
    m_win: int,
    d: int,
    permutations: int,
    rate: float | None,
    args: argparse.Namespace,
) -> dict[str, float]:
    rng = np.random.default_rng(n_ref * 7919 + m_win)
    reference = rng.standard_normal((n_ref, d), dtype=np.float32)
    same = rng.standard_normal((m_win, d), dtype=np.float32)
    shifted = rng.standard_normal((m_win, d), dtype=np.float32) + np.float32(0.5)
    free_device_memory(device)
    base_bytes = 0
    if device.type == "cuda":
        base_bytes = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

    holder: dict[str, Any] = {}

    def build() -> None:
        holder["detector"] = native_mmd(
            reference, p_value_threshold=0.05, n_permutations=permutations, device=device, seed=0
        )

    build_s = time_once_s(build, device)
    detector = holder["detector"]
    engine = detector.engine
    result_same = detector.test(same)  # first call doubles as warm-up
    result_shift = detector.test(shifted)
    repeats = 3 if args.quick else 5
    test_s = median_s(partial(detector.test, same), device, warmup=1, repeats=repeats)
    peak_mib = float("nan")
    if device.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated(device) - base_bytes) / 2**20
    holder.clear()
    del detector
    free_device_memory(device)

    n = n_ref + m_win
    full_flops = 2.0 * n * n * d + 2.0 * permutations * n * n
    test_flops = 2.0 * d * (n_ref * m_win + m_win**2) + 2.0 * permutations * (
        n_ref**2 + n_ref * m_win + m_win**2
    )
    full_floor = full_flops / rate if rate else float("nan")
    test_floor = test_flops / rate if rate else float("nan")
    full_ratio = (build_s + test_s) / full_floor if rate else float("nan")
    test_ratio = test_s / test_floor if rate else float("nan")
    p_same, p_shift = result_same.p_value, result_shift.p_value
    print(
        f"  {n_ref:>6} {m_win:>6} {engine:>6} {build_s * 1e3:>9.2f} {test_s * 1e3:>9.2f} "
        f"{peak_mib:>9.1f} {full_floor * 1e3:>8.3f}ms {_ratio(full_ratio):>7} "
        f"{test_floor * 1e3:>10.3f}ms {_ratio(test_ratio):>7} {p_same:>7.3f} {p_shift:>8.4f}",
        flush=True,
    )
    label = f"N={n_ref} M={m_win}"
    check(0 < p_same <= 1 and 0 < p_shift <= 1, f"mmd {label}: p-values in (0, 1]")
    check(
        p_shift == 1 / (permutations + 1),
        f"mmd {label}: shifted window (+0.5) p = 1/(P+1) (got {p_shift:.5f})",
    )
    check(
        math.isfinite(result_same.distance) and result_shift.distance > result_same.distance,
        f"mmd {label}: MMD2 shifted {result_shift.distance:.3e} > same {result_same.distance:.3e}",
    )
    SUMMARY.append(
        f"mmd {label} d={d} P={permutations} ({engine} engine): test {test_s * 1e3:.2f} ms, "
        f"build {build_s * 1e3:.2f} ms, peak {peak_mib:.0f} MiB, full floor "
        f"{full_floor * 1e3:.3f} ms ({_ratio(full_ratio)}), per-window floor "
        f"{test_floor * 1e3:.3f} ms ({_ratio(test_ratio)}), p_same {p_same:.3f}, "
        f"p_shift {p_shift:.4f}"
    )
    return {"p_same": p_same, "p_shift": p_shift, "test_s": test_s}


def _ratio(ratio: float) -> str:
    """``1.7x``; a ratio below 1 is starred (the floor counts work the engine skips)."""
    return f"{ratio:.1f}x" + ("*" if ratio < 1 else "")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when available, else cpu)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU smoke test")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=240.0,
        help="after this many seconds skip the remaining MMD sizes (capture stops at 40%%)",
    )
    parser.add_argument(
        "--precisions",
        default="",
        help="capture-section precisions, comma-separated from fp32,bf16,fp16 "
        "(default: all three on cuda, fp32 elsewhere)",
    )
    parser.add_argument("--permutations", type=int, default=100, help="MMD permutations P")
    return parser.parse_args(argv)


def print_environment(device: torch.device) -> str:
    name = platform.processor() or platform.machine() or "cpu"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        memory_gib = props.total_memory / 2**30
        name = f"{props.name} ({memory_gib:.1f} GiB, {props.multi_processor_count} SMs)"
    print(
        f"python {platform.python_version()} at {sys.executable}\n"
        f"torch {torch.__version__} (cuda {torch.version.cuda}, cudnn "
        f"{torch.backends.cudnn.version()}), numpy {np.__version__}\n"
        f"device {device}: {name}; torch threads {torch.get_num_threads()}"
    )
    return name


def print_summary() -> None:
    print("\nSUMMARY")
    for line in SUMMARY:
        print(line)
    print(f"checks: {'all PASS' if not FAILURES else 'FAILED: ' + '; '.join(FAILURES)}")
    print(f"errors: {'none' if not ERRORS else '; '.join(ERRORS)}")
    print(f"elapsed: {elapsed():.1f} s")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    name = print_environment(device)
    SUMMARY.append(f"device: {device} {name}; torch {torch.__version__}, cuda {torch.version.cuda}")
    capture_mod, mmd_mod = load_torch_only_modules()
    rates: dict[str, float] = {}
    try:
        run_section(
            "1. embedding capture overhead", lambda: section_capture(args, device, capture_mod)
        )
        run_section("2. matmul rate", lambda: section_matmul(args, device, rates))
        run_section("3. native MMD drift test", lambda: section_mmd(args, device, mmd_mod, rates))
    except KeyboardInterrupt:  # SIGINT from the shell wrapper's timeout: keep what we have
        ERRORS.append(f"interrupted at {elapsed():.0f}s")
    print_summary()
    return 1 if FAILURES or ERRORS else 0


if __name__ == "__main__":
    sys.exit(main())
