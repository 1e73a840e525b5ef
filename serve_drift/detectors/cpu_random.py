"""Uniform float64 keys from a torch CPU generator, bit for bit, about five times faster.

Every native permutation test draws its splits from ``torch.rand(..., dtype=float64)`` on a
seeded ``torch.Generator``: at N=1000, M=200 that is 120,000 doubles per test, and torch draws
them one at a time (about 3.5 ns each, a quarter of a warm test). :func:`uniform` draws the
same numbers from the generator's own mt19937 state with a numba kernel
(:func:`compiled.mt19937_uniform`) and writes the advanced state back, so the generator
continues exactly as if ``torch.rand`` had drawn them.

It relies on torch's layout of a CPU generator's state (``CPUGeneratorImplState``) and on its
algorithm, so the first call checks both against ``torch.rand`` on generators of its own
(sizes that cross the 624-word boundaries, and the state afterwards); if anything differs,
or numba is missing, :func:`uniform` is ``torch.rand`` itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from serve_drift.detectors.compiled import kernels

# torch's CPUGeneratorImplState: the legacy POD (seed, left, seeded, next, the 624 mt19937
# words as uint64, three doubles and a flag of the old normal sampler), then a float and a
# flag of the float normal sampler; C alignment.
_STATE = np.dtype(
    [
        ("seed", "<u8"),
        ("left", "<i4"),
        ("seeded", "<i4"),
        ("next", "<u8"),
        ("words", "<u8", (624,)),
        ("normal_x", "<f8"),
        ("normal_y", "<f8"),
        ("normal_rho", "<f8"),
        ("normal_is_valid", "<i4"),
        ("next_float_normal", "<f4"),
        ("float_normal_is_valid", "u1"),
    ],
    align=True,
)

Uniform = Callable[[torch.Generator, int], torch.Tensor]


def uniform(generator: torch.Generator, count: int) -> torch.Tensor:
    """``torch.rand(count, generator=generator, dtype=torch.float64)``, the same numbers.

    >>> a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    >>> torch.equal(uniform(a, 1000), torch.rand(1000, generator=b, dtype=torch.float64))
    True
    """
    if generator.device.type != "cpu":
        return _torch_uniform(generator, count)
    return _chosen()(generator, count)


def _torch_uniform(generator: torch.Generator, count: int) -> torch.Tensor:
    return torch.rand(count, generator=generator, dtype=torch.float64, device=generator.device)


def _numba_uniform(generator: torch.Generator, count: int) -> torch.Tensor:
    found = kernels()
    if found is None:  # numba hidden since the first call (as tests do)
        return _torch_uniform(generator, count)
    raw = generator.get_state().numpy().copy()
    record = raw.view(_STATE)
    words = record["words"][0].astype(np.uint32)
    out = np.empty(count)
    left, position = found.mt19937_uniform(
        words, int(record["left"][0]), int(record["next"][0]), out, np.empty(2 * count, np.uint32)
    )
    record["words"][0] = words
    record["left"][0] = left
    record["next"][0] = position
    generator.set_state(torch.from_numpy(raw))
    return torch.from_numpy(out)


@functools.cache
def _chosen() -> Uniform:
    """The numba draw if it reproduces ``torch.rand`` on this torch, else ``torch.rand``."""
    if kernels() is None or _state_size() != _STATE.itemsize:
        return _torch_uniform
    return _numba_uniform if _reproduces_torch() else _torch_uniform


def _state_size() -> int:
    return int(torch.Generator().get_state().numel())


def _reproduces_torch() -> bool:
    for seed, sizes in ((0, (1, 311, 312, 313, 5000)), (2**40 + 7, (624, 1, 623, 1250))):
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for size in sizes:
            if not torch.equal(_numba_uniform(ours, size), _torch_uniform(theirs, size)):
                return False
        if not torch.equal(ours.get_state(), theirs.get_state()):
            return False
    return True
