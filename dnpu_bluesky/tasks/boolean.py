"""Two-input Boolean gates: four input cases, one output current each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dnpu_bluesky.tasks._labelled import (
    LabelledTask,
    check_loss,
    check_split,
    json_params,
)

GATES: tuple[str, ...] = ("AND", "OR", "NAND", "NOR", "XOR", "XNOR")

#: Output label per case, cases in the order 00, 01, 10, 11.
_TRUTH_TABLES: dict[str, tuple[int, int, int, int]] = {
    "AND": (0, 0, 0, 1),
    "OR": (0, 1, 1, 1),
    "NAND": (1, 1, 1, 0),
    "NOR": (1, 0, 0, 0),
    "XOR": (0, 1, 1, 0),
    "XNOR": (1, 0, 0, 1),
}

#: The cases' logical inputs (first input, second input), order 00, 01, 10, 11.
_BITS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])

#: Default input levels (V): the two ends of a typical input electrode's range, -0.7..0.3 V.
DEFAULT_INPUT_LOW_V = -0.7
DEFAULT_INPUT_HIGH_V = 0.3


@dataclass(frozen=True)
class BooleanGate(LabelledTask):
    """A two-input Boolean gate realised by thresholding the output current.

    Cases are presented in the order 00, 01, 10, 11 (first input, second input); a logical 0
    is ``input_low_v`` and a 1 is ``input_high_v`` on the corresponding input electrode. Gates
    have no held-out data (``has_test_split`` is False) and no minibatches (``batch_size`` is
    None): every split returns the same four cases, and every step presents them all.

    Attributes
    ----------
    gate : str
        One of :data:`GATES`, any case (stored upper-case).
    input_low_v : float
        Voltage of a logical 0 on an input electrode.
    input_high_v : float
        Voltage of a logical 1 on an input electrode.
    loss_name : str
        Key of :data:`dnpu_bluesky.tasks.losses.LOSSES` ("corrsig", "margin", ...).
    loss_params : dict of {str: float}
        Keyword arguments of that loss (e.g. ``{"target_margin_na": 20.0}``).

    Raises
    ------
    ValueError
        For an unknown gate (the message lists :data:`GATES`), input levels not
        ordered, an unknown loss or parameters the loss does not take.
    """

    gate: str
    input_low_v: float = DEFAULT_INPUT_LOW_V
    input_high_v: float = DEFAULT_INPUT_HIGH_V
    loss_name: str = "corrsig"
    loss_params: dict[str, float] = field(default_factory=dict, hash=False)

    n_inputs = 2
    has_test_split = False
    batch_size = None

    def __post_init__(self) -> None:
        gate = str(self.gate).upper()
        if gate not in GATES:
            raise ValueError(f"unknown gate {self.gate!r}: use one of {', '.join(GATES)}")
        object.__setattr__(self, "gate", gate)
        if not self.input_low_v < self.input_high_v:
            raise ValueError(
                f"input_low_v ({self.input_low_v} V) must be below input_high_v "
                f"({self.input_high_v} V)"
            )
        object.__setattr__(self, "loss_params", dict(self.loss_params))
        check_loss(self.loss_name, self.loss_params)

    @property
    def name(self) -> str:
        """``"boolean:<GATE>"``, e.g. ``"boolean:XOR"``."""
        return f"boolean:{self.gate}"

    def input_voltages(self, split: str = "train") -> np.ndarray:
        """Return the four cases' input voltages, shape ``(4, 2)``, order 00, 01, 10, 11."""
        check_split(split)
        levels = np.array([self.input_low_v, self.input_high_v])
        return levels[_BITS]

    def unit_inputs(self, split: str = "train") -> np.ndarray:
        """Return the four cases' logical inputs as 0.0/1.0, shape ``(4, 2)``, order 00 .. 11."""
        check_split(split)
        return _BITS.astype(float)

    def input_levels(self) -> np.ndarray:
        """Return ``(2, 2)``: the voltage of a logical 0 and of a logical 1, per input."""
        return np.array([[self.input_low_v, self.input_high_v]] * self.n_inputs, dtype=float)

    def targets(self, split: str = "train") -> np.ndarray:
        """Return the gate's truth table as 0/1 integers, order 00, 01, 10, 11."""
        check_split(split)
        return np.array(_TRUTH_TABLES[self.gate])

    def minibatch(self, rng: np.random.Generator) -> np.ndarray:
        """Return all four cases: a gate trains on every case at every step.

        Parameters
        ----------
        rng : numpy.random.Generator
            Not drawn from.

        Returns
        -------
        numpy.ndarray
            ``[0, 1, 2, 3]``.
        """
        return np.arange(len(_BITS))

    def describe(self) -> dict[str, Any]:
        """Describe gate, input levels, truth table and loss, JSON-serialisable."""
        return {
            "task": "boolean_gate",
            "name": self.name,
            "gate": self.gate,
            "n_inputs": self.n_inputs,
            "input_low_v": float(self.input_low_v),
            "input_high_v": float(self.input_high_v),
            "case_order": ["00", "01", "10", "11"],
            "targets": [int(t) for t in self.targets()],
            "loss": self.loss_name,
            "loss_params": json_params(self.loss_params),
        }
