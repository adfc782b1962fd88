"""Harmonics and intermodulation products of a set of tones, on the window's bin grid.

Internal to :mod:`dnpu_bluesky.hge`: the frequency plan keeps tones off these products and the
lock-in excludes them from its noise estimate.
"""

import functools
import itertools

import numpy as np


@functools.lru_cache(maxsize=64)
def product_matrix(n_tones: int, order: int) -> np.ndarray:
    """Net coefficient vectors ``m`` of all products with ``2 <= sum |m| <= order``.

    One of each ``+-m`` pair is kept (first nonzero coefficient positive): only ``|m . f|``
    matters.

    Parameters
    ----------
    n_tones : int
        Number of tones.
    order : int
        Highest order ``sum |m|`` counted.

    Returns
    -------
    numpy.ndarray
        ``(n_products, n_tones)`` integer coefficients, read-only.
    """
    rows: set[tuple[int, ...]] = set()
    for k in range(2, order + 1):
        for combo in itertools.combinations_with_replacement(range(2 * n_tones), k):
            m = [0] * n_tones
            for c in combo:
                m[c % n_tones] += 1 if c < n_tones else -1
            # A combination whose terms cancel is a lower-order product, generated there.
            if sum(abs(v) for v in m) != k:
                continue
            if next(v for v in m if v) < 0:
                m = [-v for v in m]
            rows.add(tuple(m))
    matrix = np.array(sorted(rows), dtype=np.int64).reshape(-1, n_tones)
    matrix.setflags(write=False)
    return matrix


def fold(products: np.ndarray, n_samples: int | None) -> np.ndarray:
    """Bin each product appears at after sampling: ``|p|`` folded about Nyquist.

    Parameters
    ----------
    products : numpy.ndarray
        Products' bins, signed.
    n_samples : int or None
        Samples per window; None: no sampling, nothing folds.

    Returns
    -------
    numpy.ndarray
        The bins the products appear at.
    """
    products = np.abs(products)
    if n_samples is None:
        return products
    residue = products % n_samples
    return np.minimum(residue, n_samples - residue)
