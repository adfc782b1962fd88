"""How promising a setting is, judged from one measurement: the margin a step could reach.

A screening step measures the outputs ``I_k`` and their derivatives ``dI_k/dp`` with respect
to every trained parameter (HGE gives them all from one stream). Linearised there, the device
reaches the separation

    max  min_{k high} (I_k + J_k . d) - max_{k low} (I_k + J_k . d)
    s.t. |d_j| <= radius, p + d inside the parameters' bounds

a small linear program. It says more about where a descent can go than the margin or the loss
measured now, which at a random start are mostly chance.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

#: How far (V) each parameter may move in the linearised look-ahead of :func:`reachable_margin`.
DEFAULT_REACH_V = 0.3

__all__ = ["DEFAULT_REACH_V", "reachable_margin"]


def reachable_margin(
    outputs_na: np.ndarray,
    jacobian: np.ndarray,
    targets: np.ndarray,
    point: np.ndarray,
    bounds: np.ndarray,
    reach_v: float = DEFAULT_REACH_V,
) -> float:
    """Return the separation (nA) the linearised device reaches within ``reach_v``.

    Every parameter moves at most ``reach_v``, inside its bounds.

    Parameters
    ----------
    outputs_na : numpy.ndarray
        ``(n_cases,)`` measured outputs.
    jacobian : numpy.ndarray
        ``(n_cases, n_params)`` measured dI_k/dp_j.
    targets : numpy.ndarray
        ``(n_cases,)`` 0/1 labels, both classes present.
    point : numpy.ndarray
        ``(n_params,)`` the parameters measured.
    bounds : numpy.ndarray
        ``(n_params, 2)`` ``[min, max]`` of each parameter.
    reach_v : float
        Largest move of one parameter, volts.

    Returns
    -------
    float
        The reachable margin; ``-inf`` if the program has no solution.
    """
    outputs = np.asarray(outputs_na, dtype=float)
    jac = np.asarray(jacobian, dtype=float)
    high = np.asarray(targets) == 1
    n_cases, n_params = jac.shape
    # Variables: the move d (n_params), then u (lowest high output) and w (highest low output).
    cost = np.zeros(n_params + 2)
    cost[n_params], cost[n_params + 1] = -1.0, 1.0  # maximise u - w
    a_ub = np.zeros((n_cases, n_params + 2))
    b_ub = np.where(high, outputs, -outputs)
    a_ub[high, :n_params] = -jac[high]  # u <= I_k + J_k d
    a_ub[high, n_params] = 1.0
    a_ub[~high, :n_params] = jac[~high]  # I_k + J_k d <= w
    a_ub[~high, n_params + 1] = -1.0
    room = np.asarray(bounds, dtype=float) - np.asarray(point, dtype=float)[:, np.newaxis]
    box = [(max(-reach_v, min(low, 0.0)), min(reach_v, max(high, 0.0))) for low, high in room]
    solved = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[*box, (None, None), (None, None)])
    return float(-solved.fun) if solved.status == 0 else -np.inf
