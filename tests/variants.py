"""Synthetic "other embedding models" made from real all-MiniLM vectors: the same
sentences, given the anisotropy other models have (issue 14). A variant is
    y = normalise(A x + s c)
where A stretches a few orthonormal directions (random ones, and optionally MiniLM's own
top principal directions) and c is a fixed unit combination of random offset
directions; s is solved so that the median cosine of random pairs reaches the variant's
level (MiniLM itself: about 0.07). Used by tests/test_calibration.py and
bench/calibration.py; every variant is made the same way, none is tuned to a result."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Variant(NamedTuple):
    name: str
    median: float  # the random-pair median cosine it is made to have (0: untransformed)
    seed: int
    offsets: tuple[float, ...] = ()  # weights of the random offset directions in c
    stretch: tuple[float, ...] = ()  # factors for random directions
    stretch_pcs: tuple[float, ...] = ()  # factors for MiniLM's own top principal directions


BASE = Variant("base", 0.0, 0)


def variants() -> list[Variant]:
    """The untransformed vectors and four kinds of variant at three levels: one offset;
    one offset and three stretched directions; two offsets with three random and three
    principal directions stretched; four offsets and twelve stretched directions (more
    than the calibration removes at 384 dims)."""
    found = [BASE]
    for level in (0.40, 0.55, 0.70):
        tag, seed = f"L{round(level * 100)}", round(level * 10_000)
        found += [
            Variant(f"{tag}-off1", level, seed + 1, (1.0,)),
            Variant(f"{tag}-off1-amp3", level, seed + 2, (1.0,), (6.0, 4.0, 3.0)),
            Variant(f"{tag}-off2-amp6", level, seed + 3, (1.0, 0.6), (6.0, 3.5, 2.0), (2.5, 2.0, 1.5)),
            Variant(f"{tag}-off4-amp12", level, seed + 4, (1.0, 0.8, 0.5, 0.3),
                    (4.0, 4.0, 3.5, 3.5, 3.0, 3.0, 3.0, 2.5, 2.5, 2.0, 2.0, 2.0)),
        ]
    return found


def by_name(name: str) -> Variant:
    return next(v for v in variants() if v.name == name)


class Transform:
    """One variant's map, fixed from a reference matrix of unit vectors (the data it is
    applied to, or a sample of it)."""

    def __init__(self, variant: Variant, reference: np.ndarray) -> None:
        self.variant = variant
        dims = reference.shape[1]
        rng = np.random.default_rng(variant.seed)
        directions: list[np.ndarray] = []
        if variant.stretch_pcs:
            centred = reference - reference.mean(axis=0)
            _, _, top = np.linalg.svd(centred[:4000], full_matrices=False)
            directions += list(top[:len(variant.stretch_pcs)])
        directions += [rng.standard_normal(dims) for _ in variant.stretch]
        if directions:  # orthonormal, the principal directions first so they stay themselves
            q, _ = np.linalg.qr(np.array(directions).T)
            self.axes = q.T[:len(directions)]
        else:
            self.axes = np.zeros((0, dims))
        self.factors = np.array(variant.stretch_pcs + variant.stretch, dtype=np.float64)
        offset = np.zeros(dims)
        for weight in variant.offsets:
            v = rng.standard_normal(dims)
            offset += weight * v / np.linalg.norm(v)
        self.offset = offset / np.linalg.norm(offset) if variant.offsets else offset
        self.scale = self._solve(reference, rng) if variant.offsets else 0.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        y = x + ((x @ self.axes.T) * (self.factors - 1)) @ self.axes + self.scale * self.offset
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    def _solve(self, reference: np.ndarray, rng: np.random.Generator) -> float:
        """The offset length at which random pairs of the reference have the target median."""
        sample = reference[rng.choice(len(reference), size=min(4000, len(reference)), replace=False)]
        first, second = rng.integers(0, len(sample), (2, 8000))
        keep = first != second
        first, second = first[keep], second[keep]
        low, high = 0.0, 64.0
        for _ in range(50):
            self.scale = (low + high) / 2
            y = self(sample)
            if np.median((y[first] * y[second]).sum(axis=1)) < self.variant.median:
                low = self.scale
            else:
                high = self.scale
        return (low + high) / 2


def median_cosine(matrix: np.ndarray, pairs: int = 20_000, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, len(matrix), (2, pairs))
    keep = first != second
    return float(np.median((matrix[first[keep]] * matrix[second[keep]]).sum(axis=1)))
