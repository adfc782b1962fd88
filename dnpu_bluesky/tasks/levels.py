"""Input levels as trainable parameters: the voltages that encode a task's inputs.

A task gives each case's inputs as *unit inputs* ``u`` in [0, 1] (a Boolean gate's bits, a
sphere point's position along each axis of its cube). Input electrode ``i`` then carries

    V_i = levels[i, 0] + (levels[i, 1] - levels[i, 0]) * u_i

so ``levels[i]`` holds the voltage of a logical 0 and of a logical 1 (the two ends of the input
range for continuous inputs). Both ends are parameters: by the chain rule, with ``dI_k/dV_i``
measured at each case ``k``,

    dL/dlevels[i, 0] = sum_k dL/dI_k * dI_k/dV_i * (1 - u_ki)
    dL/dlevels[i, 1] = sum_k dL/dI_k * dI_k/dV_i * u_ki

which for a gate is the sum over the cases in which that input is 0 (or 1)
(:func:`level_jacobian` gives the per-case derivatives). The levels stay
inside each electrode's bounds and at least ``min_swing_v`` apart, so that the two logical
values remain distinct. Either may be the higher voltage: an input whose logical 1 sits below
its logical 0 computes the same gate, and leaving the polarity free doubles the settings a
descent can reach.
"""

from __future__ import annotations

import numpy as np

#: Default smallest |V(1) - V(0)| of a trained input, volts.
DEFAULT_MIN_SWING_V = 0.3

#: Default device seconds a training may spend screening which electrodes are the inputs.
DEFAULT_SCREEN_BUDGET_S = 60.0

__all__ = [
    "DEFAULT_MIN_SWING_V",
    "DEFAULT_SCREEN_BUDGET_S",
    "apply_levels",
    "check_level_bounds",
    "full_swing_levels",
    "level_jacobian",
    "project_levels",
]


def apply_levels(unit_inputs: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Return the input voltages of each case from unit inputs and levels.

    Parameters
    ----------
    unit_inputs : numpy.ndarray
        ``(n_cases, n_inputs)`` values in [0, 1].
    levels : numpy.ndarray
        ``(n_inputs, 2)``: the voltage of a logical 0 and of a logical 1 per input.

    Returns
    -------
    numpy.ndarray
        ``(n_cases, n_inputs)`` volts.
    """
    unit = np.asarray(unit_inputs, dtype=float)
    levels = np.asarray(levels, dtype=float)
    # This form gives a level exactly at u = 0 and u = 1 (no rounding past a limit).
    return levels[:, 0] * (1.0 - unit) + levels[:, 1] * unit


def level_jacobian(input_slopes: np.ndarray, unit_inputs: np.ndarray) -> np.ndarray:
    """Return dI_k/dlevels by the chain rule: each case's slope on an input, split over its levels.

    Parameters
    ----------
    input_slopes : numpy.ndarray
        ``(n_cases, n_inputs)`` measured dI_k/dV_i on each input electrode.
    unit_inputs : numpy.ndarray
        ``(n_cases, n_inputs)`` the cases' unit inputs.

    Returns
    -------
    numpy.ndarray
        ``(n_cases, 2 * n_inputs)``: columns ``2 i`` and ``2 i + 1`` are the derivatives with
        respect to input ``i``'s logical-0 and logical-1 voltage (``levels.ravel()`` order).
        ``dL/dlevels = dL/dI @ level_jacobian(...)``.
    """
    unit = np.asarray(unit_inputs, dtype=float)
    slopes = np.asarray(input_slopes, dtype=float)
    return np.stack([slopes * (1.0 - unit), slopes * unit], axis=2).reshape(len(slopes), -1)


def check_level_bounds(bounds: np.ndarray, min_swing_v: float) -> np.ndarray:
    """Refuse bounds that cannot hold two levels ``min_swing_v`` apart.

    Parameters
    ----------
    bounds : numpy.ndarray
        ``(n_inputs, 2)`` ``[min, max]`` volts per input electrode.
    min_swing_v : float
        Smallest distance between an input's two levels.

    Returns
    -------
    numpy.ndarray
        The bounds as a float array.

    Raises
    ------
    ValueError
        For a non-positive swing, or an electrode range narrower than the swing.
    """
    bounds = np.asarray(bounds, dtype=float)
    if not (np.isfinite(min_swing_v) and min_swing_v > 0):
        raise ValueError(f"min_swing_v must be a positive number of volts, got {min_swing_v}")
    widths = bounds[:, 1] - bounds[:, 0]
    if np.any(widths < min_swing_v):
        narrow = ", ".join(f"{w:.3f}" for w in widths[widths < min_swing_v])
        raise ValueError(
            f"an input electrode's usable range ({narrow} V) is narrower than the minimum "
            f"swing {min_swing_v:g} V between logical 0 and 1"
        )
    return bounds


def project_levels(levels: np.ndarray, bounds: np.ndarray, min_swing_v: float) -> np.ndarray:
    """Return the nearest levels inside ``bounds`` with ``|V(1) - V(0)| >= min_swing_v``.

    Each input keeps its polarity (which level is the higher one); levels closer than the swing
    are pushed apart about their midpoint, the midpoint moved in as far as the bounds need.

    Parameters
    ----------
    levels : numpy.ndarray
        ``(n_inputs, 2)`` logical-0 and logical-1 volts.
    bounds : numpy.ndarray
        ``(n_inputs, 2)`` ``[min, max]`` per input electrode, each at least the swing wide.
    min_swing_v : float
        Smallest distance between the two levels.

    Returns
    -------
    numpy.ndarray
        The projected ``(n_inputs, 2)`` levels.
    """
    levels = np.array(levels, dtype=float)
    bounds = np.asarray(bounds, dtype=float)
    low, high = bounds[:, 0], bounds[:, 1]
    levels = np.clip(levels, low[:, np.newaxis], high[:, np.newaxis])
    swing = levels[:, 1] - levels[:, 0]
    narrow = np.abs(swing) < min_swing_v
    if np.any(narrow):
        sign = np.where(swing >= 0, 1.0, -1.0)
        half = 0.5 * min_swing_v
        middle = np.clip(levels.mean(axis=1), low + half, high - half)
        pushed = np.stack([middle - sign * half, middle + sign * half], axis=1)
        levels[narrow] = pushed[narrow]
    return levels


def full_swing_levels(bounds: np.ndarray, descending: np.ndarray) -> np.ndarray:
    """Return levels at the two ends of each input's bounds: the widest swing.

    It is a start that lets the descent move every input by its whole range.

    Parameters
    ----------
    bounds : numpy.ndarray
        ``(n_inputs, 2)`` ``[min, max]`` per input electrode.
    descending : numpy.ndarray
        ``(n_inputs,)`` booleans: True puts an input's logical 1 at its lower end.

    Returns
    -------
    numpy.ndarray
        ``(n_inputs, 2)`` logical-0 and logical-1 volts.
    """
    levels = np.array(bounds, dtype=float)
    flip = np.asarray(descending, dtype=bool)
    levels[flip] = levels[flip, ::-1]
    return levels
