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
        """Return the voltages on the input electrodes, shape ``(n_cases, n_inputs)``.

        Parameters
        ----------
        split : str
            One of :data:`SPLITS`.

        Returns
        -------
        numpy.ndarray
            One row of input voltages per case.
        """
        ...

    def unit_inputs(self, split: str = "train") -> np.ndarray:
        """Return each case's inputs in [0, 1], shape ``(n_cases, n_inputs)``.

        0 is an input's low level (a logical 0), 1 its high level (see
        :mod:`dnpu_bluesky.tasks.levels`).

        Parameters
        ----------
        split : str
            One of :data:`SPLITS`.

        Returns
        -------
        numpy.ndarray
            One row of unit inputs per case.
        """
        ...

    def input_levels(self) -> np.ndarray:
        """Return the task's own levels, ``(n_inputs, 2)``: the voltages of unit inputs 0 and 1."""
        ...

    def targets(self, split: str = "train") -> np.ndarray:
        """Return the 0/1 label per case, shape ``(n_cases,)``.

        Parameters
        ----------
        split : str
            One of :data:`SPLITS`.

        Returns
        -------
        numpy.ndarray
            The labels, in the order of :meth:`input_voltages`.
        """
        ...

    def minibatch(self, rng: np.random.Generator) -> np.ndarray:
        """Return sorted indices into the training split for one step.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of the draw.

        Returns
        -------
        numpy.ndarray
            Indices of the step's training cases; all of them when ``batch_size`` is None.
        """
        ...

    def loss(
        self,
        outputs_na: np.ndarray,
        split: str = "train",
        *,
        indices: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray]:
        """Return the loss of the measured outputs and its gradient dL/dI.

        Parameters
        ----------
        outputs_na : numpy.ndarray
            Measured output currents in nA, one per case of ``split``, or per ``indices`` case.
        split : str
            One of :data:`SPLITS`.
        indices : numpy.ndarray, optional
            The training cases of a minibatch (see :meth:`minibatch`); None for all cases.

        Returns
        -------
        tuple of (float, numpy.ndarray)
            ``(loss, dL/dI)``, the gradient with the shape of ``outputs_na``.
        """
        ...

    def evaluate(
        self,
        outputs_na: np.ndarray,
        split: str = "train",
        *,
        indices: np.ndarray | None = None,
        threshold_na: float | None = None,
    ) -> TaskScore:
        """Score the outputs: accuracy and separation margin.

        Parameters
        ----------
        outputs_na : numpy.ndarray
            Measured output currents in nA, one per case of ``split``, or per ``indices`` case.
        split : str
            One of :data:`SPLITS`.
        indices : numpy.ndarray, optional
            The training cases of a minibatch; None for all cases.
        threshold_na : float, optional
            Classify at this threshold (e.g. one chosen on another split); None picks the best
            one for these outputs.

        Returns
        -------
        TaskScore
            Accuracy, threshold and margin.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Return a JSON-serialisable description for a run's start document."""
        ...
