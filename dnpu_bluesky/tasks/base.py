"""The task protocol: the input cases a device is shown, their labels, loss and evaluation."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from dnpu_bluesky.tasks.metrics import TaskScore

#: Splits every task accepts; tasks without held-out data return the same cases for all three.
SPLITS: tuple[str, ...] = ("train", "test", "all")


@runtime_checkable
class Task(Protocol):
    """A learning task for a device whose output current is read per input case.

    ``indices`` (of :meth:`loss` and :meth:`evaluate`) select the cases of a minibatch: the
    outputs are then those of the training cases ``indices``, in that order.
    """

    #: True when the ``"test"`` split holds cases kept out of training (a gate's splits are
    #: all the same four cases); training then also classifies the test split at the end.
    has_test_split: bool

    #: Training cases presented per step, drawn by :meth:`minibatch`; None presents them all.
    batch_size: int | None

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

    def minibatch(self, rng: np.random.Generator) -> np.ndarray:
        """Sorted indices into the training split for one step (all of them when
        ``batch_size`` is None)."""
        ...

    def loss(
        self,
        outputs_na: np.ndarray,
        split: str = "train",
        *,
        indices: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray]:
        """Loss of the measured outputs (nA, one per case, or per ``indices`` case) and its
        gradient dL/dI."""
        ...

    def evaluate(
        self,
        outputs_na: np.ndarray,
        split: str = "train",
        *,
        indices: np.ndarray | None = None,
        threshold_na: float | None = None,
    ) -> TaskScore:
        """Accuracy and separation margin of the outputs (one per case, or per ``indices``
        case), at ``threshold_na`` or the best threshold."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description for a run's start document."""
        ...
