"""How well a set of measured outputs solves a task: accuracy at the best threshold, margin.

A case is classified 1 when its output current is above the threshold. The polarity is fixed
(high current means 1): an inverted AND is a NAND, not an AND.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dnpu_bluesky.tasks._cases import as_cases

#: Distance (nA) outside the outputs' range of a threshold that puts every case in one class.
_END_THRESHOLD_OFFSET_NA = 1.0


@dataclass(frozen=True)
class TaskScore:
    """The evaluation of one set of outputs.

    Attributes
    ----------
    accuracy : float
        Fraction of cases classified correctly at ``threshold_na``.
    margin_na : float
        ``min(I_high) - max(I_low)`` in nA; negative when the classes overlap.
    threshold_na : float
        The threshold (nA) that gives ``accuracy``.
    solved : bool
        True when every case is classified correctly (accuracy 1).
    """

    accuracy: float
    margin_na: float
    threshold_na: float
    solved: bool

    def to_dict(self) -> dict[str, float | bool]:
        """Return a plain-float dict, e.g. for an event document."""
        return {
            key: (value if isinstance(value, bool) else float(value))
            for key, value in asdict(self).items()
        }


def separation_margin(outputs_na: np.ndarray, targets: np.ndarray) -> float:
    """Return ``min(I_high) - max(I_low)`` in nA: positive when a threshold separates the classes.

    Parameters
    ----------
    outputs_na : numpy.ndarray
        Output current per case, nA.
    targets : numpy.ndarray
        0/1 label per case, both classes present.

    Returns
    -------
    float
        The margin in nA (negative means the classes overlap by that much).
    """
    outputs, labels = as_cases(outputs_na, targets)
    return float(outputs[labels == 1].min() - outputs[labels == 0].max())


def accuracy_and_threshold(outputs_na: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Return the best accuracy any threshold reaches, and that threshold.

    Thresholds lie midway between consecutive distinct outputs; among those giving the best
    accuracy the one in the widest gap wins, so a separable set gets the midpoint between
    ``max(I_low)`` and ``min(I_high)``. A threshold putting every case in one class lies 1 nA
    outside the outputs' range and is chosen only if nothing inside does better.

    Parameters
    ----------
    outputs_na : numpy.ndarray
        Output current per case, nA.
    targets : numpy.ndarray
        0/1 label per case, both classes present.

    Returns
    -------
    tuple of (float, float)
        ``(accuracy, threshold_na)``; a case counts as 1 when its output is above the threshold.
    """
    outputs, labels = as_cases(outputs_na, targets)
    order = np.argsort(outputs, kind="stable")
    values = outputs[order]
    sorted_labels = labels[order]
    # Split i puts the i lowest outputs in class 0 and the rest in class 1.
    lows_below = np.concatenate(([0.0], np.cumsum(1.0 - sorted_labels)))
    highs_below = np.concatenate(([0.0], np.cumsum(sorted_labels)))
    correct = lows_below + (labels.sum() - highs_below)
    gaps = np.concatenate(([0.0], np.diff(values), [0.0]))
    # A split between equal outputs cannot be realised by any threshold.
    valid = np.ones(values.size + 1, dtype=bool)
    valid[1:-1] = gaps[1:-1] > 0
    correct = np.where(valid, correct, -1.0)
    best = np.flatnonzero(correct == correct.max())
    split = best[np.argmax(gaps[best])]
    if split == 0:
        threshold = values[0] - _END_THRESHOLD_OFFSET_NA
    elif split == values.size:
        threshold = values[-1] + _END_THRESHOLD_OFFSET_NA
    else:
        threshold = 0.5 * (values[split - 1] + values[split])
    return float(correct[split] / values.size), float(threshold)


def score(
    outputs_na: np.ndarray, targets: np.ndarray, threshold_na: float | None = None
) -> TaskScore:
    """Score one set of outputs: accuracy, threshold and margin as a :class:`TaskScore`.

    Parameters
    ----------
    outputs_na : numpy.ndarray
        Output current per case, nA.
    targets : numpy.ndarray
        0/1 label per case, both classes present.
    threshold_na : float, optional
        Classify at this threshold, e.g. one chosen on the training split when
        scoring held-out data; None picks the best threshold for these outputs.
    """
    if threshold_na is None:
        accuracy, threshold = accuracy_and_threshold(outputs_na, targets)
    else:
        outputs, labels = as_cases(outputs_na, targets)
        threshold = float(threshold_na)
        accuracy = float(np.mean((outputs > threshold) == (labels == 1)))
    return TaskScore(
        accuracy=accuracy,
        margin_na=separation_margin(outputs_na, targets),
        threshold_na=threshold,
        solved=accuracy == 1.0,
    )
