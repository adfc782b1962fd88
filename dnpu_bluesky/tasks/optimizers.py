"""First-order optimizers that keep the control voltages inside their ranges.

Every step is projected onto the box ``bounds`` (clipped per parameter), so no update can ask
an electrode for a voltage outside its range. A non-finite gradient is refused rather than
applied: it means a broken measurement, and the controls must not move on it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Optimizer(Protocol):
    """An optimizer: it updates parameters from a gradient of the loss, within bounds."""

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Return the new parameters after one step, clipped into the bounds.

        Parameters
        ----------
        params : numpy.ndarray
            The parameters now, ``(n_params,)``.
        grad : numpy.ndarray
            The loss gradient at ``params``, ``(n_params,)``; it must be finite.

        Returns
        -------
        numpy.ndarray
            The new parameters.
        """
        ...

    def reset(self) -> None:
        """Forget all state (moments, step count), e.g. on a restart."""
        ...

    def describe(self) -> dict[str, Any]:
        """Return the kind and settings, JSON-serialisable."""
        ...


#: Default learning rate of the training plans, volts per step.
DEFAULT_LR = 0.15


def _check_bounds(bounds: np.ndarray) -> np.ndarray:
    bounds = np.array(bounds, dtype=float)
    if bounds.ndim != 2 or bounds.shape[1] != 2:
        raise ValueError(f"bounds must have shape (n_params, 2), got {bounds.shape}")
    if not np.all(np.isfinite(bounds)) or np.any(bounds[:, 0] > bounds[:, 1]):
        raise ValueError(f"bounds must be finite [min, max] rows with min <= max, got {bounds}")
    return bounds


def _check_lr(lr: float) -> float:
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be positive and finite, got {lr}")
    return float(lr)


def _check_step_inputs(
    bounds: np.ndarray, params: np.ndarray, grad: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    params = np.asarray(params, dtype=float)
    grad = np.asarray(grad, dtype=float)
    n_params = bounds.shape[0]
    if params.shape != (n_params,) or grad.shape != (n_params,):
        raise ValueError(
            f"params and grad must have shape ({n_params},) like the bounds, got "
            f"{params.shape} and {grad.shape}"
        )
    if not np.all(np.isfinite(grad)):
        raise ValueError(f"gradient is not finite: {grad}")
    if not np.all(np.isfinite(params)):
        raise ValueError(f"parameters are not finite: {params}")
    return params, grad


class GradientDescent:
    """Plain projected gradient descent: ``p <- clip(p - lr * grad, bounds)``.

    Parameters
    ----------
    lr : float
        Step size, parameter units per gradient unit (e.g. V per (dL/dV)).
    bounds : numpy.ndarray
        ``(n_params, 2)`` array of ``[min, max]`` per parameter.
    """

    def __init__(self, lr: float, bounds: np.ndarray) -> None:
        self.lr = _check_lr(lr)
        self.bounds = _check_bounds(bounds)

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Take one descent step, clipped into the bounds."""
        params, grad = _check_step_inputs(self.bounds, params, grad)
        return np.clip(params - self.lr * grad, self.bounds[:, 0], self.bounds[:, 1])

    def reset(self) -> None:
        """Forget nothing: plain descent has no state."""

    def describe(self) -> dict[str, Any]:
        """Describe kind, learning rate and bounds."""
        return {"kind": "gd", "lr": self.lr, "bounds": self.bounds.tolist()}


class Adam:
    """Adam (Kingma & Ba, 2015) with bias-corrected moments, projected onto the bounds.

    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``, and with ``t`` the step count
    ``p <- clip(p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), bounds)``. Each
    parameter therefore moves by at most about ``lr`` per step whatever the gradient's scale,
    which suits gradients measured in nA/V on one electrode and tens of nA/V on another.

    Parameters
    ----------
    lr : float
        Step size in parameter units (V for control voltages).
    bounds : numpy.ndarray
        ``(n_params, 2)`` array of ``[min, max]`` per parameter.
    beta1 : float
        Decay of the first-moment (mean) estimate.
    beta2 : float
        Decay of the second-moment (uncentred variance) estimate.
    eps : float
        Added to the root of the second moment against division by zero.
    """

    def __init__(
        self,
        lr: float,
        bounds: np.ndarray,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        self.lr = _check_lr(lr)
        self.bounds = _check_bounds(bounds)
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{label} must be in [0, 1), got {beta}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.reset()

    @property
    def step_count(self) -> int:
        """Steps taken since construction or the last :meth:`reset`."""
        return self._t

    def reset(self) -> None:
        """Zero both moments and the step count."""
        self._t = 0
        self._m = np.zeros(self.bounds.shape[0])
        self._v = np.zeros(self.bounds.shape[0])

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Take one Adam step, clipped into the bounds."""
        params, grad = _check_step_inputs(self.bounds, params, grad)
        self._t += 1
        self._m = self.beta1 * self._m + (1.0 - self.beta1) * grad
        self._v = self.beta2 * self._v + (1.0 - self.beta2) * grad**2
        m_hat = self._m / (1.0 - self.beta1**self._t)
        v_hat = self._v / (1.0 - self.beta2**self._t)
        new = params - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return np.clip(new, self.bounds[:, 0], self.bounds[:, 1])

    def describe(self) -> dict[str, Any]:
        """Describe kind, hyperparameters and bounds."""
        return {
            "kind": "adam",
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "bounds": self.bounds.tolist(),
        }


_OPTIMIZERS: dict[str, type[GradientDescent] | type[Adam]] = {"gd": GradientDescent, "adam": Adam}


def make_optimizer(kind: str, lr: float, bounds: np.ndarray, **kwargs: float) -> Optimizer:
    """Build an optimizer by name: ``"adam"`` or ``"gd"`` (case-insensitive).

    Parameters
    ----------
    kind : str
        Optimizer name.
    lr : float
        Learning rate.
    bounds : numpy.ndarray
        ``(n_params, 2)`` array of ``[min, max]`` per parameter.
    **kwargs : float
        Further settings (Adam: ``beta1``, ``beta2``, ``eps``).

    Raises
    ------
    ValueError
        For an unknown name or a setting the optimizer does not take.
    """
    cls = _OPTIMIZERS.get(kind.lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {kind!r}: use one of {', '.join(_OPTIMIZERS)}")
    try:
        return cls(lr, bounds, **kwargs)
    except TypeError as err:
        raise ValueError(f"optimizer {kind!r}: {err}") from None
