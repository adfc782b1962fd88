"""The gradient methods of training, each a step plan, in one registry; finite differences.

Internal to :mod:`dnpu_bluesky.plans`. A step plan measures, at a point the trainer has
already applied, the loss of the task's cases (all, or a minibatch's ``indices``) and its
gradient with respect to the point, and returns a :class:`Step`. :data:`METHODS` maps each
name :func:`dnpu_bluesky.plans.train` accepts to its :class:`GradientMethod`.
:func:`finite_differences` is the one central-difference loop, used by the ``"fd"`` step and
by :func:`dnpu_bluesky.plans.validate_gradients`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
from bluesky import plan_stubs as bps

from ..tasks.levels import level_jacobian
from ._common import check_choice
from .stubs import Plan, record_gradient

if TYPE_CHECKING:
    from ._training import Trainer


@dataclass
class Step:
    """One measured step.

    Attributes
    ----------
    outputs : numpy.ndarray
        Output current per case, nA.
    loss : float
        The task's loss of the outputs.
    gradient : numpy.ndarray
        The loss's gradient with respect to the point.
    measurements : int
        Streams the step played.
    jacobian : numpy.ndarray or None
        Each output's derivatives, ``(n_cases, n_params)``, where the method measures them
        (HGE, finite differences).
    """

    outputs: np.ndarray
    loss: float
    gradient: np.ndarray
    measurements: int
    jacobian: np.ndarray | None = None


#: A step plan: ``step(trainer, point, indices)`` yields messages and returns a :class:`Step`.
StepPlan = Callable[["Trainer", np.ndarray, "np.ndarray | None"], Plan]


@dataclass(frozen=True)
class GradientMethod:
    """A gradient method of training.

    Attributes
    ----------
    step : StepPlan
        Its step plan.
    tones : bool
        Whether it measures with tones on the electrodes (the device's ``"parallel"`` mode);
        otherwise the device plays no tones (``"off"``).
    """

    step: StepPlan
    tones: bool

    @property
    def mode(self) -> str:
        """The device's mode while this method trains: ``"parallel"`` or ``"off"``."""
        return "parallel" if self.tones else "off"


def finite_differences(
    point: np.ndarray, step_v: float, outputs_at: Callable[[np.ndarray], Plan]
) -> Plan:
    """Central differences of the outputs with respect to each coordinate of ``point``.

    Measures ``outputs_at(point + step_v e_j)`` and ``outputs_at(point - step_v e_j)`` for
    each coordinate ``j`` in turn (2 evaluations each), and does not move back to ``point``.

    Parameters
    ----------
    point : numpy.ndarray
        Where the derivatives are taken.
    step_v : float
        The step, volts.
    outputs_at : callable
        ``outputs_at(shifted)`` is a plan that applies ``shifted`` and returns the outputs
        measured there (a number, or one per case).

    Returns
    -------
    tuple
        The derivatives, ``(n_outputs, n_params)`` (``(n_params,)`` for a single number), and
        the list of every evaluation's outputs in the order measured.

    Yields
    ------
    Msg
        The plan's messages.
    """
    columns, evaluated = [], []
    for j in range(point.size):
        pair = []
        for sign in (+1.0, -1.0):
            shifted = point.copy()
            shifted[j] += sign * step_v
            pair.append((yield from outputs_at(shifted)))
        columns.append((pair[0] - pair[1]) / (2 * step_v))
        evaluated += pair
    return np.array(columns).T, evaluated


def hge_step(trainer: Trainer, point: np.ndarray, indices: np.ndarray | None) -> Plan:
    """Homodyne gradient extraction: one stream with a tone on each trained electrode.

    Parameters
    ----------
    trainer : Trainer
        The device's trainer.
    point : numpy.ndarray
        The point, already applied.
    indices : numpy.ndarray or None
        The minibatch's cases, or None for all.

    Returns
    -------
    Step
        With the measured Jacobian.

    Yields
    ------
    Msg
        The plan's messages (and a measurement request).
    """
    dnpu = trainer.dnpu
    yield from bps.mv(dnpu.mode, "parallel")
    yield from trainer.measure("hge_raw")
    result = yield from record_gradient(trainer.lockin, trainer.gradient_record, "hge")
    outputs = result.gradient.current
    loss, d_loss = trainer.loss_of(outputs, indices)
    slopes = np.zeros((outputs.size, len(dnpu.electrodes)))
    slopes[:, list(result.tones)] = result.gradient.gradient
    jacobian = [slopes[:, trainer.controls]]
    if trainer.learn_levels:
        unit = trainer.task.unit_inputs()
        unit = unit if indices is None else unit[indices]
        jacobian.append(level_jacobian(slopes[:, trainer.inputs], unit))
    jacobian = np.concatenate(jacobian, axis=1)
    return Step(outputs, loss, d_loss @ jacobian, 1, jacobian)


def fd_step(trainer: Trainer, point: np.ndarray, indices: np.ndarray | None) -> Plan:
    """Central finite differences: 2 streams per parameter, without tones.

    Parameters
    ----------
    trainer : Trainer
        The device's trainer; ``settings["fd_step_v"]`` is the step.
    point : numpy.ndarray
        The point, already applied (and applied again at the end).
    indices : numpy.ndarray or None
        The minibatch's cases, or None for all.

    Returns
    -------
    Step
        Outputs averaged over the evaluations, with the measured Jacobian.

    Yields
    ------
    Msg
        The plan's messages (and measurement requests).
    """

    def outputs_at(shifted: np.ndarray) -> Plan:
        yield from trainer.apply(shifted, indices)
        return (yield from trainer.evaluate_outputs("fd_raw"))

    jacobian, evaluated = yield from finite_differences(
        point, trainer.settings["fd_step_v"], outputs_at
    )
    yield from trainer.apply(point, indices)
    outputs = np.mean(evaluated, axis=0)
    loss, d_loss = trainer.loss_of(outputs, indices)
    return Step(outputs, loss, d_loss @ jacobian, 2 * point.size, jacobian)


def spsa_step(trainer: Trainer, point: np.ndarray, indices: np.ndarray | None) -> Plan:
    """Simultaneous perturbation: 2 streams along a random +-1 direction, whatever the size.

    Parameters
    ----------
    trainer : Trainer
        The device's trainer; ``settings["spsa_step_v"]`` is the perturbation and its
        ``rng`` draws the direction.
    point : numpy.ndarray
        The point, already applied (and applied again at the end).
    indices : numpy.ndarray or None
        The minibatch's cases, or None for all.

    Returns
    -------
    Step
        Outputs averaged over the two evaluations; no Jacobian.

    Yields
    ------
    Msg
        The plan's messages (and measurement requests).
    """
    c = trainer.settings["spsa_step_v"]
    delta = trainer.rng.choice([-1.0, 1.0], size=point.size)
    losses, pair = [], []
    for sign in (+1.0, -1.0):
        yield from trainer.apply(point + sign * c * delta, indices)
        outputs = yield from trainer.evaluate_outputs("spsa_raw")
        pair.append(outputs)
        losses.append(trainer.loss_of(outputs, indices)[0])
    yield from trainer.apply(point, indices)
    outputs = np.mean(pair, axis=0)
    loss = trainer.loss_of(outputs, indices)[0]
    return Step(outputs, loss, (losses[0] - losses[1]) / (2 * c) * delta, 2)


#: The gradient methods by name, in the order the documentation lists them.
METHODS: Mapping[str, GradientMethod] = MappingProxyType(
    {
        "hge": GradientMethod(hge_step, tones=True),
        "fd": GradientMethod(fd_step, tones=False),
        "spsa": GradientMethod(spsa_step, tones=False),
    }
)


def gradient_method(name: str) -> GradientMethod:
    """Return the gradient method called ``name``; refuse, before any voltage, if there is none.

    Parameters
    ----------
    name : str
        A key of :data:`METHODS`.

    Returns
    -------
    GradientMethod
        Its registry entry.

    Raises
    ------
    ValueError
        ``method must be one of (...), got ...``.
    """
    check_choice("method", name, tuple(METHODS))
    return METHODS[name]
