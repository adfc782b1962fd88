"""The task protocol: the input cases a device is shown, their labels, loss and evaluation."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dnpu_bluesky.tasks.losses import LOSSES
from dnpu_bluesky.tasks.metrics import TaskScore, score

#: Splits every task accepts; tasks without held-out data return the same cases for all three.
SPLITS: tuple[str, ...] = ("train", "test", "all")


@runtime_checkable
class Task(Protocol):
    """A learning task for a device whose output current is read per input case."""

    @property
    def name(self) -> str:
        """Short identifier, accepted by :func:`dnpu_bluesky.tasks.make_task`."""
        ...

    @property
    def n_inputs(self) -> int:
        """Number of input electrodes."""
        ...

    def input_voltages(self, split: str = "train") -> np.ndarray:
        """Voltages on the input electrodes, shape ``(n_cases, n_inputs)``."""
        ...

    def unit_inputs(self, split: str = "train") -> np.ndarray:
        """Each case's inputs in [0, 1], shape ``(n_cases, n_inputs)``: 0 is an input's low
        level (a logical 0), 1 its high level (see :mod:`dnpu_bluesky.tasks.levels`)."""
        ...

    def input_levels(self) -> np.ndarray:
        """The task's own levels, ``(n_inputs, 2)``: the voltages of unit inputs 0 and 1."""
        ...

    def targets(self, split: str = "train") -> np.ndarray:
        """0/1 label per case, shape ``(n_cases,)``."""
        ...

    def loss(self, outputs_na: np.ndarray, split: str = "train") -> tuple[float, np.ndarray]:
        """Loss of the measured outputs (nA, one per case) and its gradient dL/dI."""
        ...

    def evaluate(
        self, outputs_na: np.ndarray, split: str = "train", *, threshold_na: float | None = None
    ) -> TaskScore:
        """Accuracy and separation margin of the outputs, at ``threshold_na`` or the best
        threshold."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description for a run's start document."""
        ...


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def _check_loss(loss_name: str, loss_params: Mapping[str, float]) -> None:
    """Refuse an unknown loss or parameters its function does not take, before training."""
    if loss_name not in LOSSES:
        raise ValueError(f"unknown loss {loss_name!r}: use one of {', '.join(LOSSES)}")
    try:
        inspect.signature(LOSSES[loss_name]).bind(np.zeros(2), np.zeros(2), **loss_params)
    except TypeError as err:
        raise ValueError(f"loss {loss_name!r}: {err}") from None


def _json_params(params: Mapping[str, Any]) -> dict[str, float | None]:
    return {key: None if value is None else float(value) for key, value in params.items()}


def _select(
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


class _LabelledTask:
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
        targets, outputs = _select(self.targets(split), outputs_na, indices)
        return LOSSES[self.loss_name](outputs, targets, **self.loss_params)

    def evaluate(
        self,
        outputs_na: np.ndarray,
        split: str = "train",
        *,
        indices: np.ndarray | None = None,
        threshold_na: float | None = None,
    ) -> TaskScore:
        """Accuracy, threshold and separation margin; the threshold is ``threshold_na`` (one
        chosen on another split) or, when None, the best one for these outputs."""
        targets, outputs = _select(self.targets(split), outputs_na, indices)
        return score(outputs, targets, threshold_na)
