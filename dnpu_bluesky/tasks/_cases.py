"""Checking measured outputs against their labels, as the losses and the metrics need them.

Internal to :mod:`dnpu_bluesky.tasks`.
"""

from __future__ import annotations

import numpy as np


def as_cases(
    outputs_na: np.ndarray, targets: np.ndarray, *, need_both: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Check that outputs and 0/1 targets describe the same cases, and return them.

    Parameters
    ----------
    outputs_na : numpy.ndarray
        One output current per case, nA.
    targets : numpy.ndarray
        One 0/1 label per case.
    need_both : bool
        Refuse targets of a single class.

    Returns
    -------
    tuple of numpy.ndarray
        The outputs as floats and the labels as 0.0/1.0.

    Raises
    ------
    ValueError
        For shapes that differ or are not 1-D, non-finite outputs, labels other than 0 and 1,
        or (with ``need_both``) a single class.
    """
    outputs = np.asarray(outputs_na, dtype=float)
    labels = np.asarray(targets)
    if outputs.ndim != 1 or outputs.shape != labels.shape:
        raise ValueError(
            f"outputs and targets must be 1-D of equal length, got {outputs.shape} "
            f"and {labels.shape}"
        )
    if not np.all(np.isfinite(outputs)):
        raise ValueError(f"outputs must be finite, got {outputs}")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"targets must be 0 or 1, got {np.unique(labels)}")
    labels = labels.astype(float)
    if need_both and not (labels.any() and not labels.all()):
        raise ValueError("targets must contain both classes (at least one 0 and one 1)")
    return outputs, labels
