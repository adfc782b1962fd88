"""Plans whose arguments are plain values, so that the Bluesky queue server can run them.

A queue item carries JSON: device names, numbers, strings. :func:`train` takes a
:class:`~dnpu_bluesky.tasks.Task` object, so the queue server gets thin wrappers here that
build the task from its name and yield from the plan. Example queue item::

    {"name": "train_gate", "args": ["dnpu", "XOR"], "kwargs": {"method": "hge"}}

The plan modules do not use ``from __future__ import annotations``: the queue server reads
the signatures, and string annotations (``'DNPU'``) fail its parameter validation, while a
class it cannot name is treated as "any value", so ``"dnpu"`` in a queue item becomes the
device of that name.
"""

from typing import Any

from ..devices.dnpu import DNPU
from ..tasks import BooleanGate, SphereClassification
from ..tasks.optimizers import DEFAULT_LR
from ..tasks.training import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_METHOD,
    DEFAULT_OPTIMIZER,
    DEFAULT_PATIENCE,
    DEFAULT_TARGET_ACCURACY,
    DEFAULT_TARGET_MARGIN_NA,
)
from .stubs import Plan
from .train import train


def train_gate(
    dnpu: DNPU | list[DNPU],
    gate: str,
    method: str = DEFAULT_METHOD,
    *,
    optimizer: str = DEFAULT_OPTIMIZER,
    lr: float = DEFAULT_LR,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    patience: int = DEFAULT_PATIENCE,
    target_margin_na: float = DEFAULT_TARGET_MARGIN_NA,
    inputs: str | None = None,
    learn_levels: bool = True,
    seed: int = 0,
    md: dict | None = None,
) -> Plan:
    """Train ``dnpu`` as the Boolean gate ``gate`` ("AND", "XOR", ...); see :func:`train`.

    ``dnpu`` may be a list of devices (names in a queue item), trained side by side.
    ``inputs`` names the input electrodes (``"e3,e4"``); by default every pair is screened.
    ``learn_levels`` trains each input's logical 0 and 1.

    Returns:
        The :class:`~dnpu_bluesky.plans.train.TrainResult` of the run (a list for a list).
    """
    settings = _training_settings(locals(), "gate")
    return (yield from train(dnpu, BooleanGate(gate), **settings))


def train_sphere(
    dnpu: DNPU | list[DNPU],
    method: str = DEFAULT_METHOD,
    *,
    batch_size: int | None = None,
    n_points: int = 120,
    input_range_v: list[float] | None = None,
    data_seed: int | None = None,
    optimizer: str = DEFAULT_OPTIMIZER,
    lr: float = DEFAULT_LR,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    patience: int = DEFAULT_PATIENCE,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    learn_levels: bool = True,
    seed: int = 0,
    md: dict | None = None,
) -> Plan:
    """Train ``dnpu`` on the sphere classification task; see :func:`train`.

    ``n_points``, ``input_range_v`` (``[low, high]`` volts of each input) and ``batch_size``
    set the task (:class:`~dnpu_bluesky.tasks.SphereClassification`); its points and split are
    drawn from ``data_seed``, which is ``seed`` unless given, so that the same points can be
    trained from other random starts. ``learn_levels`` trains each input's range (its scale
    and offset). ``dnpu`` may be a list of devices, trained side by side.
    """
    settings = _training_settings(locals(), "batch_size", "n_points", "input_range_v", "data_seed")
    options = {} if input_range_v is None else {"input_range_v": tuple(input_range_v)}
    task = SphereClassification(
        n_points=n_points,
        seed=seed if data_seed is None else data_seed,
        batch_size=batch_size,
        **options,
    )
    return (yield from train(dnpu, task, **settings))


def _training_settings(arguments: dict[str, Any], *task_arguments: str) -> dict[str, Any]:
    """A wrapper's arguments that :func:`train` takes: all but the device and the task's."""
    return {k: v for k, v in arguments.items() if k != "dnpu" and k not in task_arguments}
