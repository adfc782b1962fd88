"""Plans whose arguments are plain values, so that the Bluesky queue server can run them.

A queue item carries JSON: device names, numbers, strings. :func:`train` takes a
:class:`~dnpu_bluesky.tasks.Task` object, so the queue server gets thin wrappers here that
build the task from its name and yield from the plan. Example queue item::

    {"name": "train_gate", "args": ["dnpu", "XOR"], "kwargs": {"method": "hge"}}

:func:`queue_parameters` says, in the queue server's parameter-annotation form, which names a
plan's device, electrode and gate parameters take, so that a queue item naming no device, a
component where a device is meant or an unknown gate is refused when it is submitted.
:data:`NOT_FOR_THE_QUEUE` names the plans whose arguments a queue item cannot carry (a
``Task``, a callback); the profile's ``user_group_permissions.yaml`` forbids them.

The plan modules do not use ``from __future__ import annotations``: the queue server reads
the other parameters' types from the signatures (``int``, ``str | None``, ...) and validates
them; it cannot read a string annotation such as ``'DNPU'``.
"""

import re
from collections.abc import Collection
from typing import Any

from ..devices.dnpu import DNPU
from ..tasks import GATES, BooleanGate, SphereClassification
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

__all__ = ["NOT_FOR_THE_QUEUE", "queue_parameters", "train_gate", "train_sphere"]

# A DNPU is a top-level device of the worker's namespace (not a component such as dnpu.e2);
# the queue server lists them when its environment opens or code is uploaded to it.
_DEVICES = {"DNPU": [":.+"]}
_ONE_DNPU = {"annotation": "DNPU", "devices": _DEVICES}
_DNPUS = {"annotation": "typing.Union[DNPU, typing.List[DNPU]]", "devices": _DEVICES}
_GATE = {"annotation": "Gate", "enums": {"Gate": list(GATES)}}


def queue_parameters(electrodes: Collection[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Return the parameters of the package's plans that take names, as the queue checks them.

    Parameters
    ----------
    electrodes : collection of str
        The electrodes' attribute names (``"e2"``) of the DNPUs a queue may name; an electrode
        parameter takes ``"<device>.<electrode>"``.

    Returns
    -------
    dict
        Per plan, the "parameters" entries of bluesky-queueserver's
        ``parameter_annotation_decorator``: the queue server refuses a queue item whose value
        is not one of the names when it is submitted.
    """
    names = "|".join(re.escape(name) for name in sorted(electrodes))
    electrode = {"annotation": "Electrode", "devices": {"Electrode": [f":-.+:^({names})$"]}}
    return {
        "train_gate": {"dnpu": _DNPUS, "gate": _GATE},
        "train_sphere": {"dnpu": _DNPUS},
        "train_boolean_gates": {
            "dnpu": _DNPUS,
            "gates": {
                "annotation": "typing.Union[Gate, typing.List[Gate]]",
                "enums": _GATE["enums"],
            },
        },
        "hge_gradient": {"dnpu": _ONE_DNPU},
        "calibrate_phase": {"dnpu": _ONE_DNPU},
        "validate_gradients": {"dnpu": _ONE_DNPU},
        "noise_spectrum": {"dnpu": _ONE_DNPU},
        "iv_sweep": {"dnpu": _ONE_DNPU, "electrode": electrode},
        "configure_hge": {"dnpu": _ONE_DNPU},
        "set_input_cases": {"dnpu": _ONE_DNPU},
    }


#: Plans whose arguments are objects a queue item cannot carry, with what the queue offers.
NOT_FOR_THE_QUEUE: dict[str, str] = {
    "train": "train_gate or train_sphere",
    "train_genetic": "a Task object has no queue form; run it in IPython",
    "evaluate_controls": "a Task object has no queue form; run it in IPython",
    "measure_gradient": "a building block of hge_gradient, which the queue runs",
}


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
    """Train a device as a Boolean gate, named by a string; see :func:`train`.

    Parameters
    ----------
    dnpu : DNPU or list of DNPU
        The device, or devices trained side by side (device names in a queue item).
    gate : str
        The gate: "AND", "OR", "NAND", "NOR", "XOR" or "XNOR".
    method : str
        Gradient method: "hge", "fd" or "spsa".
    optimizer : str
        "adam" or "gd".
    lr : float
        Learning rate, volts per step.
    max_iterations : int
        Steps per attempt.
    max_attempts : int
        Starts at most.
    patience : int
        Steps without improvement before an attempt is abandoned.
    target_margin_na : float
        Separation (nA) of the two classes at which the gate counts as trained.
    inputs : str, optional
        The input electrodes, e.g. "e3,e4"; by default every pair is screened first.
    learn_levels : bool
        Train each input's logical 0 and 1 too.
    seed : int
        Seed of the random starts.
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    TrainResult or list of TrainResult
        The result of the run (a list for a list of devices).

    Yields
    ------
    Msg
        The plan's messages.
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
    """Train a device on the sphere classification task; see :func:`train`.

    ``n_points``, ``input_range_v`` and ``batch_size`` set the task
    (:class:`~dnpu_bluesky.tasks.SphereClassification`); its points and split are drawn from
    ``data_seed``, so that the same points can be trained from other random starts.

    Parameters
    ----------
    dnpu : DNPU or list of DNPU
        The device, or devices trained side by side (device names in a queue item).
    method : str
        Gradient method: "hge", "fd" or "spsa".
    batch_size : int, optional
        Cases per step; None for all of the training split.
    n_points : int
        Number of points of the task.
    input_range_v : list of float, optional
        ``[low, high]`` volts of each input; None for the task's default.
    data_seed : int, optional
        Seed of the points and their split; None for ``seed``.
    optimizer : str
        "adam" or "gd".
    lr : float
        Learning rate, volts per step.
    max_iterations : int
        Steps per attempt.
    max_attempts : int
        Starts at most.
    patience : int
        Steps without improvement before an attempt is abandoned.
    target_accuracy : float
        Accuracy at which training stops, in (0, 1].
    learn_levels : bool
        Train each input's range (its scale and offset) too.
    seed : int
        Seed of the random starts.
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    TrainResult or list of TrainResult
        The result of the run (a list for a list of devices).

    Yields
    ------
    Msg
        The plan's messages.
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
    """Return a wrapper's arguments that :func:`train` takes: all but the device and the task's."""
    return {k: v for k, v in arguments.items() if k != "dnpu" and k not in task_arguments}
