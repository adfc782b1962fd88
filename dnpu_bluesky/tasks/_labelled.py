"""What the tasks share: checks of their settings, and the loss and score of labelled cases.

Internal to :mod:`dnpu_bluesky.tasks`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from dnpu_bluesky.tasks.base import SPLITS
from dnpu_bluesky.tasks.losses import LOSSES
from dnpu_bluesky.tasks.metrics import TaskScore, score


def check_split(split: str) -> None:
    """Refuse a split that is not one of :data:`~dnpu_bluesky.tasks.base.SPLITS`.

    Parameters
    ----------
    split : str
        The split asked for.

    Raises
    ------
    ValueError
        Naming the splits there are.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def check_loss(loss_name: str, loss_params: Mapping[str, float]) -> None:
    """Refuse an unknown loss or parameters its function does not take, before training.

    Parameters
    ----------
    loss_name : str
        Key of :data:`~dnpu_bluesky.tasks.losses.LOSSES`.
    loss_params : mapping
        Keyword arguments for that loss.

    Raises
    ------
    ValueError
        For an unknown loss (the message lists them) or parameters it does not take.
    """
    if loss_name not in LOSSES:
        raise ValueError(f"unknown loss {loss_name!r}: use one of {', '.join(LOSSES)}")
    try:
        inspect.signature(LOSSES[loss_name]).bind(np.zeros(2), np.zeros(2), **loss_params)
    except TypeError as err:
        raise ValueError(f"loss {loss_name!r}: {err}") from None


def json_params(params: Mapping[str, Any]) -> dict[str, float | None]:
    """Return a loss's parameters as a task's description holds them.

    Parameters
    ----------
    params : mapping
        The loss's keyword arguments.

    Returns
    -------
    dict
        Each value as a float (None stays None).
    """
    return {key: None if value is None else float(value) for key, value in params.items()}


def _select_cases(
    targets: np.ndarray, outputs_na: np.ndarray, indices: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Targets of the measured cases (all, or the minibatch ``indices``) and checked outputs."""
    if indices is not None:
        targets = targets[np.asarray(indices, dtype=int)]
    outputs = np.asarray(outputs_na, dtype=float)
    if outputs.shape != targets.shape:
        raise ValueError(
            f"expected {targets.size} outputs (one per case), got shape {outputs.shape}"
        )
    return targets, outputs


class LabelledTask:
    """Loss and evaluation shared by tasks whose cases carry 0/1 labels.

    Subclasses provide ``targets(split)``, ``loss_name`` and ``loss_params``.
    """

    loss_name: str
    loss_params: Mapping[str, float]

    def targets(self, split: str = "train") -> np.ndarray:
        raise NotImplementedError

    def loss(
        self,
        outputs_na: np.ndarray,
        split: str = "train",
        *,
        indices: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray]:
        """Loss and dL/dI of the measured outputs (one per case, or per ``indices`` case)."""
        targets, outputs = _select_cases(self.targets(split), outputs_na, indices)
        return LOSSES[self.loss_name](outputs, targets, **self.loss_params)

    def evaluate(
        self,
        outputs_na: np.ndarray,
        split: str = "train",
        *,
        indices: np.ndarray | None = None,
        threshold_na: float | None = None,
    ) -> TaskScore:
        """Score the outputs: accuracy, threshold and separation margin.

        The threshold is ``threshold_na`` (one chosen on another split) or, when None, the best
        one for these outputs.
        """
        targets, outputs = _select_cases(self.targets(split), outputs_na, indices)
        return score(outputs, targets, threshold_na)
