"""Native MMD from split sums: equal to the obvious statistic, and to the former algorithm.

Three references: the obvious statistic (the pooled kernel matrix built whole, every split's
three block sums taken by indexing), a frozen copy of the quadratic-form algorithm it replaced
(``frozen_mmd``: same seed, same permutations, so the same p-values), and brute-force block
sums for the engines of ``subset_sums``. Seeded and hypothesis-driven; no Ray here.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_drift.detectors import mmd_native, subset_sums
from serve_drift.detectors import permutation as perm
from serve_drift.detectors.combined import CombinedDetector, _mmd_statistics
from serve_drift.detectors.mmd_native import NativeMMD
from serve_drift.detectors.subset_sums import Sides
from tests.unit.detectors import frozen_mmd

CPU = torch.device("cpu")


def _data(seed: int, *, n: int, m: int, dim: int, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (rng.normal(size=(m, dim)) + shift).astype(np.float32)
    return x, y


def obvious_mmd2(x: np.ndarray, y: np.ndarray, sides: torch.Tensor, *, sigma: float) -> np.ndarray:
    """alibi's unbiased MMD² of every split, from the whole pooled kernel matrix."""
    pooled = np.vstack([x, y]).astype(np.float64)
    dist = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(axis=-1)
    kernel = np.exp(-dist / (2.0 * sigma**2))
    np.fill_diagonal(kernel, 0.0)
    n_total, m = len(pooled), int(sides.shape[1])
    n = n_total - m
    values = []
    for side in sides.numpy():
        rest = np.setdiff1d(np.arange(n_total), side)
        values.append(
            kernel[np.ix_(rest, rest)].sum() / (n * (n - 1))
            + kernel[np.ix_(side, side)].sum() / (m * (m - 1))
            - 2.0 * kernel[np.ix_(rest, side)].sum() / (n * m)
        )
    return np.array(values)


@contextlib.contextmanager
def using(engine: str) -> Iterator[None]:
    """Run with one engine: ``torch`` by hiding the numba kernels, ``numba`` gathering every
    block (by default it gathers only where that beats the torch products)."""
    with pytest.MonkeyPatch.context() as patch:
        if engine == "torch":
            patch.setattr(subset_sums, "_kernels", lambda: None)
        else:
            patch.setattr(subset_sums, "_GATHER_FLOPS", 0.0)
        yield


ENGINES = [e for e in subset_sums.ENGINES if e == "torch" or subset_sums._kernels() is not None]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    with using(request.param):
        yield request.param


def _sides(seed: int, *, splits: int, n: int, m: int) -> torch.Tensor:
    generator = perm.make_generator(seed=seed, device=CPU)
    return perm.window_sides(splits, n=n, m=m, generator=generator, device=CPU)


# --- subset_sums: the block sums of every engine ------------------------------------------


def _symmetric_kernel(seed: int, size: int) -> torch.Tensor:
    values = torch.rand(
        size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return (values + values.T).fill_diagonal_(0.0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_total=st.integers(4, 60),
    data=st.data(),
)
def test_block_sums_equal_brute_force_sums(seed: int, n_total: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(1, n_total - 1))
    upper = data.draw(st.booleans())
    row_start = data.draw(st.integers(0, n_total - 1))
    rows = data.draw(st.integers(1, n_total - row_start))
    col_start = row_start if upper else data.draw(st.integers(0, n_total - 1))
    min_cols = rows if upper else 1  # an upper block holds its whole diagonal square
    cols = data.draw(st.integers(min(min_cols, n_total - col_start), n_total - col_start))
    kernel = _symmetric_kernel(seed, n_total)
    block = kernel[row_start : row_start + rows, col_start : col_start + cols].contiguous()
    indices = _sides(seed, splits=7, n=n_total - m, m=m)
    expected = []
    for side in indices.tolist():
        members = set(side)
        expected.append(
            sum(
                float(kernel[i, j])
                for i in range(row_start, row_start + rows)
                for j in range(col_start, col_start + cols)
                if i in members and j in members and (j > i or not upper)
            )
        )
    for engine in ENGINES:
        with using(engine):
            sides = Sides.from_indices(indices, n_total=n_total, engine=engine)
            sums = sides.block_sums(block, row_start=row_start, col_start=col_start, upper=upper)
        assert sums.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12), engine


def test_an_upper_block_must_start_on_the_diagonal() -> None:
    sides = Sides.from_indices(torch.tensor([[0, 1]]), n_total=4, engine="torch")
    with pytest.raises(ValueError, match="diagonal"):
        sides.block_sums(
            torch.zeros(2, 2, dtype=torch.float64), row_start=0, col_start=2, upper=True
        )


def test_unknown_engines_are_refused() -> None:
    with pytest.raises(ValueError, match="numba, torch"):
        Sides.from_indices(torch.tensor([[0]]), n_total=2, engine="cuda")


def test_torch_engine_chunks_give_the_same_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = _symmetric_kernel(3, 50)
    sides = Sides.from_indices(_sides(3, splits=20, n=40, m=10), n_total=50, engine="torch")
    whole = sides.block_sums(kernel, row_start=0, col_start=0, upper=True)
    monkeypatch.setattr(subset_sums, "_CHUNK_BYTES", 1)  # one split per chunk
    chunked = sides.block_sums(kernel, row_start=0, col_start=0, upper=True)
    assert torch.allclose(whole, chunked, rtol=1e-14, atol=0)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_numba_row_ranges_cover_every_row_once(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "numba" not in ENGINES:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(subset_sums, "_CHUNK_GATHERS", 1)  # split even this small block
    kernel = _symmetric_kernel(5, 700)
    indices = _sides(5, splits=30, n=600, m=100)
    sides = Sides.from_indices(indices, n_total=700, engine="numba")
    assert sides.host is not None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ranges = sides.host._row_ranges(0, 700, col_start=0, cols=700, upper=True)
        with using("numba"):
            sums = sides.block_sums(kernel, row_start=0, col_start=0, upper=True)
    finally:
        torch.set_num_threads(previous)
    assert ranges[0][0] == 0 and ranges[-1][1] == 700
    assert len(ranges) == subset_sums.chunk_count(1e9)  # as many calls on any thread count
    assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(ranges))
    assert len({hi - lo for lo, hi in ranges}) > 1  # balanced by work, not rows
    torch_sides = Sides.from_indices(indices, n_total=700, engine="torch")
    expected = torch_sides.block_sums(kernel, row_start=0, col_start=0, upper=True)
    assert torch.allclose(sums, expected, rtol=1e-12, atol=0)
    torch.set_num_threads(1)
    try:
        with using("numba"):
            serial = sides.block_sums(kernel, row_start=0, col_start=0, upper=True)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(sums, serial)  # the thread count changes no bit


def test_without_numba_the_cpu_uses_the_torch_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # ``import numba`` now fails
    subset_sums._kernels.cache_clear()
    try:
        assert subset_sums._kernels() is None
        assert subset_sums.engine_for(CPU) == "torch"
        detector = NativeMMD(_data(0, n=40, m=10, dim=3)[0], device="cpu")
        assert detector.engine == "torch"
        assert 0 < detector.test(_data(1, n=40, m=15, dim=3)[1]).p_value <= 1
    finally:
        subset_sums._kernels.cache_clear()


def test_cuda_always_uses_the_torch_engine() -> None:
    assert subset_sums.engine_for(torch.device("cuda")) == "torch"


@pytest.mark.parametrize(
    ("n", "m", "gathers"), [(5000, 500, True), (1000, 100, True), (1000, 1000, False)]
)
def test_numba_gathers_only_where_it_beats_the_products(n: int, m: int, gathers: bool) -> None:
    if "numba" not in ENGINES:
        pytest.skip("numba is not installed")
    sides = Sides.from_indices(_sides(0, splits=3, n=n, m=m), n_total=n + m, engine="numba")
    assert sides._gathering_pays(torch.Size([n, n]), upper=True) is gathers


# --- the statistic of every split ----------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(10, 40),
    m=st.integers(2, 25),
    dim=st.integers(1, 6),
    shift=st.sampled_from([0.0, 0.3, 2.0]),
    blockwise=st.booleans(),
)
def test_split_mmd2_equals_the_obvious_statistic(
    seed: int, n: int, m: int, dim: int, shift: float, blockwise: bool
) -> None:
    x, y = _data(seed, n=n, m=m, dim=dim, shift=shift)
    sides = _sides(seed, splits=12, n=n, m=m)
    expected = obvious_mmd2(x, y, sides, sigma=1.7)
    for engine in ENGINES:
        with using(engine):
            detector = NativeMMD(
                x, sigma=1.7, device="cpu", max_cached_rows=0 if blockwise else None
            )
            assert detector.engine == engine
            y_t = torch.as_tensor(y, dtype=torch.float64)
            mmd2 = detector.split_mmd2(y_t, detector.sides(sides, m=m)).numpy()
        assert mmd2 == pytest.approx(expected, rel=1e-9, abs=1e-13), engine


def test_blockwise_with_small_blocks_equals_the_obvious_statistic(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _data(11, n=90, m=30, dim=4, shift=0.2)
    sides = _sides(11, splits=15, n=90, m=30)
    monkeypatch.setattr(mmd_native, "_BLOCK_BYTES", 7 * 120 * 8)  # 7-row blocks
    detector = NativeMMD(x, sigma=2.0, device="cpu", max_cached_rows=10)
    assert detector.blockwise and detector.engine == engine
    mmd2 = detector.split_mmd2(torch.as_tensor(y, dtype=torch.float64), detector.sides(sides, m=30))
    assert mmd2.numpy() == pytest.approx(obvious_mmd2(x, y, sides, sigma=2.0), rel=1e-9, abs=1e-13)


# --- unchanged p-values: the frozen former algorithm --------------------------------------


WINDOWS = [(seed, rows, shift) for seed in range(12) for rows, shift in ((20, 0.0), (45, 0.15))]


@pytest.mark.parametrize("path", ["cached", "blockwise"])
def test_p_values_are_unchanged_against_the_former_algorithm(
    path: str, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same seed, same permutations: the same p-value and threshold on every window."""
    reference, _ = _data(100, n=160, m=1, dim=5)
    blockwise = path == "blockwise"
    if blockwise:
        monkeypatch.setattr(mmd_native, "_BLOCK_BYTES", 16 * 205 * 8)
    ours = NativeMMD(
        reference,
        n_permutations=99,
        seed=4,
        device="cpu",
        max_cached_rows=50 if blockwise else None,
    )
    before = frozen_mmd.FrozenNativeMMD(
        reference, n_permutations=99, seed=4, blockwise=blockwise, block_bytes=16 * 205 * 8
    )
    assert ours.sigma == before.sigma  # the bandwidth rule is untouched, to the bit
    p_values = []
    for seed, rows, shift in WINDOWS:
        window = _data(seed, n=1, m=rows, dim=5, shift=shift)[1]
        new, old = ours.test(window), before.test(window)
        assert new.p_value == old.p_value
        assert new.distance == pytest.approx(old.distance, rel=1e-10, abs=1e-15)
        assert new.distance_threshold == pytest.approx(old.distance_threshold, rel=1e-10, abs=1e-15)
        p_values.append(new.p_value)
    assert len(set(p_values)) > 5  # the windows exercise many different p-values


def test_draw_chunking_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    reference, window = _data(7, n=120, m=40, dim=4, shift=0.1)
    whole = NativeMMD(reference, device="cpu").test(window)
    monkeypatch.setattr(mmd_native, "_CHUNK_BYTES", 1)  # one permutation per draw
    chunked = NativeMMD(reference, device="cpu").test(window)
    assert chunked == whole


def test_combined_mmd_statistics_are_unchanged_against_the_former_algorithm(engine: str) -> None:
    reference, _ = _data(200, n=120, m=1, dim=4)
    mmd = NativeMMD(reference, n_permutations=1, device="cpu")
    before = frozen_mmd.FrozenNativeMMD(reference, n_permutations=1)
    for seed in range(6):
        window = _data(seed, n=1, m=30, dim=4, shift=0.1 * seed)[1]
        sides = _sides(seed, splits=150, n=120, m=30)
        new = _mmd_statistics(mmd, torch.as_tensor(window, dtype=torch.float64), sides)
        old = frozen_mmd.combined_mmd_statistics(before, window, sides)
        assert torch.allclose(new, old, rtol=1e-10, atol=1e-15)
        assert torch.equal(perm.exceed_counts(new), perm.exceed_counts(old))


def test_combined_detector_with_mmd_gives_the_former_p_values() -> None:
    reference, _ = _data(300, n=100, m=1, dim=4)
    before = frozen_mmd.FrozenNativeMMD(reference, n_permutations=1)
    for seed in range(5):
        window = _data(seed, n=1, m=25, dim=4, shift=0.15)[1]
        detector = CombinedDetector(
            reference, components=("mmd",), n_permutations=99, seed=seed, device="cpu"
        )
        result = detector.test(window)
        sides = _sides(seed, splits=99, n=100, m=25)  # the detector's own draws
        old = frozen_mmd.combined_mmd_statistics(before, window, sides)
        assert result.p_value == float(perm.exceed_counts(old)[0]) / old.numel()


# --- the bandwidth's median, selected from a band -----------------------------------------


@pytest.mark.parametrize("kind", ["distinct", "mostly-ties", "few-values"])
@pytest.mark.parametrize("n", [301, 400])  # odd and even numbers of upper-triangle entries
def test_banded_median_is_the_exact_lower_median(
    kind: str, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "numba" not in ENGINES:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(mmd_native, "_BAND_MIN_ENTRIES", 1000)
    monkeypatch.setattr(mmd_native, "_BAND_SAMPLE", 2000)
    generator = torch.Generator().manual_seed(n)
    values = torch.rand(n, n, generator=generator, dtype=torch.float64)
    if kind == "mostly-ties":  # the band holds nearly everything: it overflows, then falls back
        values = torch.where(values < 0.9, torch.ones_like(values), values)
    elif kind == "few-values":
        values = torch.floor(values * 7)
    upper = torch.ones(n, n, dtype=torch.bool).triu_(diagonal=1)
    expected = float(values[upper].median())
    assert mmd_native._upper_median(values) == expected
    if kind == "distinct":  # the band path itself, not its fallback, found it
        selected = mmd_native._banded_median(
            values.numpy(), rank=(int(upper.sum()) - 1) // 2, kernels=subset_sums._kernels()
        )
        assert selected == expected
