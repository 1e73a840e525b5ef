"""The native MMD's numba paths against the torch ones they replace: the same numbers.

The split selection (``top_subsets``) against ``topk``, the one-pass pooled sums against the
torch engine's block sums, the reference block computed above its diagonal only against the
whole one, and the median's threaded band pass against the serial one. No Ray here.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from serve_drift.detectors import compiled, mmd_native, subset_sums
from serve_drift.detectors import permutation as perm
from serve_drift.detectors.mmd_native import NativeMMD
from serve_drift.detectors.subset_sums import KernelBlocks, Sides

pytestmark = pytest.mark.skipif(compiled.kernels() is None, reason="numba is not installed")

CPU = torch.device("cpu")


@pytest.fixture(params=[1, 2, 3])
def threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A thread budget, with the call sizes lowered so that small jobs split into many calls."""
    monkeypatch.setattr(subset_sums, "_CHUNK_GATHERS", 1)
    monkeypatch.setattr(subset_sums, "_CHUNK_KEYS", 1)
    monkeypatch.setattr(mmd_native, "_CHUNK_ENTRIES", 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(previous)


def _topk_sides(keys: torch.Tensor, m: int) -> np.ndarray:
    return np.sort(keys.topk(m, dim=1, sorted=False).indices.numpy(), axis=1)


# --- the split selection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_total", "m"), [(1200, 200), (5500, 500), (170, 20), (110, 50), (4, 1), (10, 10), (9, 8)]
)
def test_top_subsets_selects_the_topk_subsets_in_column_order(n_total: int, m: int) -> None:
    keys = perm.random_keys(64, n_total=n_total, generator=torch.Generator().manual_seed(m))
    out = np.full((64, m), -2, dtype=np.int64)
    subset_sums._top_subsets(keys.numpy(), m=m, out=out)
    assert np.array_equal(out, _topk_sides(keys, m))


def test_top_subsets_outside_the_band_selects_among_all_keys() -> None:
    # Keys that are not uniform put the m-th largest far from 1 - m/n: the band misses it.
    keys = perm.random_keys(20, n_total=300, generator=torch.Generator().manual_seed(1)) ** 8
    out = np.empty((20, 30), dtype=np.int64)
    subset_sums._top_subsets(keys.numpy(), m=30, out=out)
    assert np.array_equal(out, _topk_sides(keys, 30))


def test_top_subsets_breaks_ties_at_the_cut_by_lowest_column() -> None:
    keys = np.floor(np.random.default_rng(0).random((40, 60)) * 6) / 6  # many equal keys
    out = np.empty((40, 25), dtype=np.int64)
    subset_sums._top_subsets(keys, m=25, out=out)
    for row, chosen in zip(keys, out, strict=True):
        assert np.all(np.diff(chosen) > 0)  # distinct, increasing columns
        cut = row[chosen].min()
        assert np.all(np.delete(row, chosen) <= cut)  # nothing left out is larger
        assert np.all(row[chosen] >= cut)
        left_out_ties = np.setdiff1d(np.flatnonzero(row == cut), chosen)
        assert left_out_ties.size == 0 or left_out_ties.min() > chosen[row[chosen] == cut].max()


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_numba_draw_gives_the_torch_engines_splits(chunk: int, threads: int) -> None:
    draws = {}
    for engine in subset_sums.ENGINES:
        generator = torch.Generator().manual_seed(5)
        sides = Sides.draw(30, n=400, m=60, generator=generator, engine=engine, chunk=chunk)
        draws[engine] = np.sort(sides.indices.numpy(), axis=1)
        draws[engine + " next"] = torch.rand(3, generator=generator).numpy()
    assert np.array_equal(draws["numba"], draws["torch"])
    assert np.array_equal(draws["numba next"], draws["torch next"])  # same stream consumed


# --- the pooled sums ---------------------------------------------------------------------


def _kernel_blocks(seed: int, *, n: int, m: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(n + m, n + m, generator=generator, dtype=torch.float64)
    kernel = (values + values.T).fill_diagonal_(0.0)
    k_xx, k_xy, k_yy = kernel[:n, :n], kernel[:n, n:], kernel[n:, n:]
    return k_xx.contiguous(), k_xx.sum(dim=1), k_xy.contiguous(), k_yy.contiguous()


@pytest.mark.parametrize(("n", "m"), [(300, 40), (90, 30), (50, 3)])
def test_pooled_sums_equal_the_torch_engines(n: int, m: int, threads: int) -> None:
    k_xx, k_xx_rows, k_xy, k_yy = _kernel_blocks(n, n=n, m=m)
    generator = perm.make_generator(seed=n, device=CPU)
    indices = perm.window_sides(25, n=n, m=m, generator=generator, device=CPU)
    torch_sides = Sides.from_indices(indices, n_total=n + m, engine="torch")
    numba_sides = Sides.from_indices(indices, n_total=n + m, engine="numba")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subset_sums, "_GATHER_FLOPS", 0.0)  # gather whatever the shares
        assert numba_sides.gathers_pooled()
        rows, upper = numba_sides.pooled_sums(
            KernelBlocks(k_xx=k_xx, k_xx_rows=k_xx_rows, k_xy=k_xy, k_yy=k_yy)
        )
    expected_rows, expected_upper = torch_sides.pooled_sums(
        KernelBlocks(k_xx=k_xx, k_xx_rows=k_xx_rows, k_xy=k_xy, k_yy=k_yy)
    )
    assert np.allclose(rows, expected_rows, rtol=1e-13, atol=0)
    assert np.allclose(upper, expected_upper, rtol=1e-13, atol=0)


def test_pooled_gathers_read_the_reference_block_above_its_diagonal_only() -> None:
    k_xx, k_xx_rows, k_xy, k_yy = _kernel_blocks(2, n=120, m=15)
    indices = perm.window_sides(
        20, n=120, m=15, generator=torch.Generator().manual_seed(2), device=CPU
    )
    sides = Sides.from_indices(indices, n_total=135, engine="numba")
    assert sides.gathers_pooled()
    clean = sides.pooled_sums(KernelBlocks(k_xx=k_xx, k_xx_rows=k_xx_rows, k_xy=k_xy, k_yy=k_yy))
    poisoned = k_xx.clone()
    lower = torch.ones(120, 120, dtype=torch.bool).tril_(diagonal=-1)
    poisoned[lower] = float("nan")
    dirty = sides.pooled_sums(
        KernelBlocks(k_xx=poisoned, k_xx_rows=k_xx_rows, k_xy=k_xy, k_yy=k_yy)
    )
    assert np.array_equal(clean[0], dirty[0]) and np.array_equal(clean[1], dirty[1])


def test_thread_count_changes_no_bit_of_a_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subset_sums, "_CHUNK_GATHERS", 1000)
    monkeypatch.setattr(subset_sums, "_CHUNK_KEYS", 1000)
    monkeypatch.setattr(mmd_native, "_CHUNK_ENTRIES", 1000)
    monkeypatch.setattr(mmd_native, "_BAND_MIN_ENTRIES", 1000)
    rng = np.random.default_rng(6)
    reference, window = rng.normal(size=(400, 8)), rng.normal(size=(40, 8)) + 0.1
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            detector = NativeMMD(reference, device="cpu", seed=2)
            results.append((detector.sigma, detector.test(window), detector.test(window)))
    finally:
        torch.set_num_threads(previous)
    assert results[0] == results[1] == results[2]


# --- the reference block above its diagonal -------------------------------------------------


def test_upper_reference_block_matches_the_whole_one(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mmd_native, "_UPPER_ROWS", 37)  # several blocks, one ragged
    x = torch.as_tensor(np.random.default_rng(3).normal(size=(150, 6)), dtype=torch.float64)
    x_sq = mmd_native._squared_norms(x)
    whole = mmd_native._squared_distances(x, x, x_sq=x_sq)
    upper = mmd_native._upper_squared_distances(x, x_sq=x_sq)
    above = torch.ones(150, 150, dtype=torch.bool).triu_(diagonal=1)
    assert torch.equal(upper[above], whole[above])
    assert mmd_native._upper_median(upper) == mmd_native._upper_median(whole)
    kernel = mmd_native._zero_diagonal(mmd_native._upper_exp_(upper, factor=-0.1))
    expected = mmd_native._zero_diagonal(torch.exp(whole * -0.1))
    assert torch.equal(kernel[above], expected[above])
    rows = mmd_native._upper_row_sums(kernel.numpy())
    symmetric = expected.triu(diagonal=1) + expected.triu(diagonal=1).T
    assert np.allclose(rows, symmetric.sum(dim=1).numpy(), rtol=1e-13, atol=0)
    mmd_native._mirror_upper(kernel)
    assert torch.equal(kernel, symmetric)


def test_detector_mirrors_its_reference_block_when_a_window_needs_all_of_it() -> None:
    rng = np.random.default_rng(4)
    reference, small, large = (
        rng.normal(size=(200, 5)),
        rng.normal(size=(20, 5)),
        rng.normal(size=(150, 5)),
    )
    detector = NativeMMD(reference, device="cpu", seed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subset_sums, "_kernels", lambda: None)  # the torch engine, whole K_xx
        whole = NativeMMD(reference, device="cpu", seed=1)
    assert detector.engine == "numba" and whole.engine == "torch"
    assert detector.sigma == whole.sigma
    for window in (small, large, small):  # the large window's share needs the products
        ours, theirs = detector.test(window), whole.test(window)
        assert ours.p_value == theirs.p_value
        assert ours.distance == pytest.approx(theirs.distance, rel=1e-10, abs=1e-15)
    assert detector._k_xx_whole  # mirrored once, for the large window


# --- the median's band pass on threads ---------------------------------------------------------


def test_threaded_band_pass_finds_the_serial_median(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mmd_native, "_BAND_MIN_ENTRIES", 1000)
    monkeypatch.setattr(mmd_native, "_BAND_SAMPLE", 2000)
    values = torch.rand(257, 257, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    upper = torch.ones(257, 257, dtype=torch.bool).triu_(diagonal=1)
    count = int(upper.sum())
    found = mmd_native._banded_median(
        values.numpy(), rank=(count - 1) // 2, kernels=compiled.require_kernels()
    )
    assert found == float(values[upper].median())


# --- the generator's uniforms ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 123456789, 2**63 - 1])
def test_cpu_uniforms_are_torch_rands_and_leave_the_same_state(seed: int) -> None:
    from serve_drift.detectors import cpu_random

    assert cpu_random._chosen() is cpu_random._numba_uniform  # the fast draw is in use here
    ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for size in (1, 2, 311, 312, 624, 1000, 120_000, 3):
        expected = torch.rand(size, generator=theirs, dtype=torch.float64)
        assert torch.equal(cpu_random.uniform(ours, size), expected)
    assert torch.equal(ours.get_state(), theirs.get_state())
    # The generator goes on as if torch had drawn them, for floats and normals too.
    assert torch.equal(torch.rand(5, generator=ours), torch.rand(5, generator=theirs))
    assert torch.equal(torch.randn(5, generator=ours), torch.randn(5, generator=theirs))


def test_random_keys_are_the_former_torch_rand_keys() -> None:
    ours, theirs = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    keys = perm.random_keys(7, n_total=333, generator=ours)
    expected = torch.rand(7, 333, generator=theirs, dtype=torch.float64)
    assert keys.shape == (7, 333) and torch.equal(keys, expected)


def test_cpu_uniforms_fall_back_to_torch_when_the_state_layout_differs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serve_drift.detectors import cpu_random

    monkeypatch.setattr(cpu_random, "_state_size", lambda: cpu_random._STATE.itemsize + 8)
    cpu_random._chosen.cache_clear()
    try:
        assert cpu_random._chosen() is cpu_random._torch_uniform
    finally:
        cpu_random._chosen.cache_clear()
