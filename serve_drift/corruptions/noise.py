"""Sensor noise: read noise (Gaussian), photon noise (Poisson), dead and hot pixels (impulse).

Levels follow ImageNet-C's on a 0..1 scale.
"""

from __future__ import annotations

import numpy as np


def gaussian_noise(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Add independent Gaussian noise of standard deviation ``level`` (share of full scale)."""
    return add_gaussian(image, std=255.0 * level, rng=rng)


def add_gaussian(values: np.ndarray, *, std: float, rng: np.random.Generator) -> np.ndarray:
    """``values`` plus N(0, ``std``) noise of the same shape (any shape: one image or a batch)."""
    return values + rng.normal(0.0, std, size=values.shape)


def shot_noise(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Photon noise: each pixel a Poisson count with mean ``level`` photons at full scale."""
    return rng.poisson(image / 255.0 * level) / level * 255.0


def impulse_noise(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: a share ``level`` of pixel values set to 0 or 255, half each."""
    out = image.copy()
    hit = rng.random(image.shape) < level
    salt = rng.random(image.shape) < 0.5
    out[hit & salt] = 255.0
    out[hit & ~salt] = 0.0
    return out
