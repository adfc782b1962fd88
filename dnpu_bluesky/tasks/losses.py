"""Losses of the measured outputs, each returning the loss and its exact gradient dL/dI.

A training step measures one output current per input case, ``I_k`` in nA, and, by HGE, the
Jacobian ``dI_k/dV_j``. The loss is computed digitally here, so its gradient with respect to the
outputs is exact and the chain rule ``dL/dV_j = sum_k dL/dI_k dI_k/dV_j`` needs no numerical
differentiation. Every loss takes ``(outputs_na, targets)`` with 0/1 targets ("high" cases are the
ones labelled 1) and returns ``(loss, grad)`` with ``grad.shape == outputs_na.shape``.

``min``/``max`` are piecewise linear; where a loss uses them its gradient is the subgradient at
the first ``argmin``/``argmax``, which is exact wherever the outputs have no ties.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import expit, logsumexp, softmax

from dnpu_bluesky.tasks._cases import as_cases

LossFunction = Callable[..., tuple[float, np.ndarray]]

#: Standard-deviation floor (nA) in the correlation: far below the noise of one measured case,
#: so it changes a real Pearson coefficient by < 1e-4, but a flat output gets a finite gradient.
STD_FLOOR_NA = 1e-2


def _pearson(
    outputs: np.ndarray, labels: np.ndarray, std_floor_na: float
) -> tuple[float, np.ndarray]:
    """Pearson correlation with a variance floor on the outputs, and its gradient."""
    centred = outputs - outputs.mean()
    centred_labels = labels - labels.mean()
    spread = np.sqrt(centred @ centred + outputs.size * std_floor_na**2)
    label_spread = np.sqrt(centred_labels @ centred_labels)
    corr = float(centred @ centred_labels / (spread * label_spread))
    # Centring is a symmetric projection that leaves both centred vectors unchanged, so it
    # drops out of the gradient.
    grad = centred_labels / (spread * label_spread) - corr * centred / spread**2
    return corr, grad


def _hard_margin(outputs: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """``min(I_high) - max(I_low)`` and its subgradient."""
    high = np.flatnonzero(labels == 1)
    low = np.flatnonzero(labels == 0)
    lowest_high = high[np.argmin(outputs[high])]
    highest_low = low[np.argmax(outputs[low])]
    grad = np.zeros_like(outputs)
    grad[lowest_high] += 1.0
    grad[highest_low] -= 1.0
    return float(outputs[lowest_high] - outputs[highest_low]), grad


def _soft_margin(
    outputs: np.ndarray, labels: np.ndarray, softness_na: float
) -> tuple[float, np.ndarray]:
    """Soft ``min(I_high) - soft max(I_low)`` (log-sum-exp at temperature ``softness_na``)."""
    high = labels == 1
    low = ~high
    scaled_high = -outputs[high] / softness_na
    scaled_low = outputs[low] / softness_na
    soft_min = -softness_na * logsumexp(scaled_high)
    soft_max = softness_na * logsumexp(scaled_low)
    grad = np.zeros_like(outputs)
    grad[high] = softmax(scaled_high)
    grad[low] = -softmax(scaled_low)
    return float(soft_min - soft_max), grad


def corrsig_loss(
    outputs_na: np.ndarray,
    targets: np.ndarray,
    *,
    offset_na: float = 5.0,
    scale_na: float = 3.0,
    std_floor_na: float = STD_FLOOR_NA,
) -> tuple[float, np.ndarray]:
    """Compute the "corrsig" loss: correlation with the target over a sigmoid of the separation.

    ``L = (1.1 - corr(I, t)) / (sigmoid((min I_high - max I_low - offset) / scale) + 0.05)``
    with ``corr`` the Pearson correlation over the cases. ``L`` lies between about 0.095 (perfect
    correlation, wide separation) and 42 (anticorrelated, overlapping).

    The sigmoid saturates: once the classes overlap by more than a few ``scale_na`` its
    gradient vanishes and only the scale-free correlation drives the descent (see
    :func:`margin_loss`).

    Parameters
    ----------
    outputs_na : numpy.ndarray
        Output current per case, nA, shape ``(n_cases,)``.
    targets : numpy.ndarray
        0/1 label per case, both classes present.
    offset_na : float
        Separation (nA) at which the sigmoid is one half.
    scale_na : float
        Width (nA) of the sigmoid.
    std_floor_na : float
        Floor on the outputs' standard deviation inside the correlation, so that a
        flat output (zero variance) has a finite loss (corr = 0) and gradient.

    Returns
    -------
    tuple of (float, numpy.ndarray)
        ``(loss, dL/dI)``, the gradient in 1/nA with the shape of ``outputs_na``.

    Raises
    ------
    ValueError
        On mismatched shapes, non-finite outputs, non-0/1 or one-class targets.
    """
    outputs, labels = as_cases(outputs_na, targets)
    corr, corr_grad = _pearson(outputs, labels, std_floor_na)
    margin, margin_grad = _hard_margin(outputs, labels)
    gate = float(expit((margin - offset_na) / scale_na))
    denominator = gate + 0.05
    numerator = 1.1 - corr
    loss = numerator / denominator
    grad = -corr_grad / denominator
    grad -= numerator / denominator**2 * gate * (1.0 - gate) / scale_na * margin_grad
    return float(loss), grad


def margin_loss(
    outputs_na: np.ndarray,
    targets: np.ndarray,
    *,
    target_margin_na: float = 10.0,
    softness_na: float = 1.0,
    corr_weight_na: float = 5.0,
    std_floor_na: float = STD_FLOOR_NA,
) -> tuple[float, np.ndarray]:
    """Compute a non-saturating loss in nA: a soft hinge on the separation plus a correlation term.

    ``L = s * softplus((M - m_s) / s) + c * (1 - corr(I, t))`` where ``m_s`` is the separation
    ``min I_high - max I_low`` with min and max replaced by log-sum-exp at temperature ``s``
    (it underestimates the hard separation by at most ``s * log(n_cases)``), ``M`` the target
    margin and ``c`` the weight of the correlation.

    Why: corrsig's separation term is a sigmoid 3 nA wide. Its pull on the worst-placed cases
    peaks when the classes overlap by 5 nA and falls about fivefold with every further 5 nA
    (a thousandfold at 30 nA), which leaves the correlation alone to drive the descent. The
    correlation is blind to the current scale (shifting or scaling all outputs leaves it
    unchanged) and is already high for an unsolved gate (up to 0.58 for AND, 0.71 for XNOR with
    one case on the wrong side), so its gradient need not act on the case that breaks the gate.
    While the classes overlap this loss is about ``M - m_s`` nA: its gradient keeps unit size
    on the worst-placed high and low cases however far they are from separating. The hinge
    fades once the separation exceeds ``M``; the correlation term, worth ``c`` nA, then keeps
    the cases of each class together. Being smooth, it does not jump between cases as a hard
    argmin/argmax does.

    Parameters
    ----------
    outputs_na : numpy.ndarray
        Output current per case, nA, shape ``(n_cases,)``.
    targets : numpy.ndarray
        0/1 label per case, both classes present.
    target_margin_na : float
        Separation (nA) beyond which the hinge stops pushing.
    softness_na : float
        Temperature (nA) of the soft min/max and width of the hinge's knee.
    corr_weight_na : float
        Weight (nA) of ``1 - corr``.
    std_floor_na : float
        Floor on the outputs' standard deviation inside the correlation.

    Returns
    -------
    tuple of (float, numpy.ndarray)
        ``(loss in nA, dL/dI)``, the gradient dimensionless with the shape of ``outputs_na``.

    Raises
    ------
    ValueError
        On mismatched shapes, non-finite outputs, non-0/1 or one-class targets.
    """
    outputs, labels = as_cases(outputs_na, targets)
    if softness_na <= 0:
        raise ValueError(f"softness_na must be positive, got {softness_na}")
    margin, margin_grad = _soft_margin(outputs, labels, softness_na)
    corr, corr_grad = _pearson(outputs, labels, std_floor_na)
    shortfall = (target_margin_na - margin) / softness_na
    loss = softness_na * np.logaddexp(0.0, shortfall) + corr_weight_na * (1.0 - corr)
    grad = -expit(shortfall) * margin_grad - corr_weight_na * corr_grad
    return float(loss), grad


def mse_loss(
    outputs_na: np.ndarray, targets: np.ndarray, *, low_na: float, high_na: float
) -> tuple[float, np.ndarray]:
    """Compute the mean squared error to fixed target currents: ``mean((I - y)^2)``.

    ``y`` is ``low_na`` or ``high_na`` by label.

    Parameters
    ----------
    outputs_na : numpy.ndarray
        Output current per case, nA.
    targets : numpy.ndarray
        0/1 label per case (one class alone is allowed).
    low_na : float
        Target current (nA) of the cases labelled 0.
    high_na : float
        Target current (nA) of the cases labelled 1.

    Returns
    -------
    tuple of (float, numpy.ndarray)
        ``(loss in nA^2, dL/dI in nA)``.
    """
    outputs, labels = as_cases(outputs_na, targets, need_both=False)
    error = outputs - (low_na + labels * (high_na - low_na))
    return float(np.mean(error**2)), 2.0 * error / outputs.size


def sigmoid_classification_loss(
    outputs_na: np.ndarray,
    targets: np.ndarray,
    *,
    threshold_na: float | None = None,
    scale_na: float = 5.0,
) -> tuple[float, np.ndarray]:
    """Compute the binary cross-entropy of ``sigmoid((I - threshold) / scale)`` against the labels.

    With ``threshold_na=None`` the threshold is the midpoint of the two class means, a function
    of the outputs whose dependence is included in the gradient; the device then only has to
    order the classes, not reach fixed currents. A misclassified case contributes a gradient of
    nearly ``1 / (n scale)`` however wrong it is, so the loss does not saturate.

    Parameters
    ----------
    outputs_na : numpy.ndarray
        Output current per case, nA.
    targets : numpy.ndarray
        0/1 label per case, both classes present.
    threshold_na : float, optional
        Fixed decision threshold (nA), or None for the midpoint of class means.
    scale_na : float
        Width (nA) of the sigmoid: ``threshold + scale_na`` gives 73%.

    Returns
    -------
    tuple of (float, numpy.ndarray)
        ``(mean cross-entropy in nats, dL/dI in 1/nA)``.
    """
    outputs, labels = as_cases(outputs_na, targets)
    if scale_na <= 0:
        raise ValueError(f"scale_na must be positive, got {scale_na}")
    n_high = labels.sum()
    n_low = labels.size - n_high
    if threshold_na is None:
        threshold = 0.5 * (outputs @ labels / n_high + outputs @ (1 - labels) / n_low)
        threshold_grad = 0.5 * (labels / n_high + (1 - labels) / n_low)
    else:
        threshold = float(threshold_na)
        threshold_grad = np.zeros_like(outputs)
    logits = (outputs - threshold) / scale_na
    loss = np.mean(np.logaddexp(0.0, logits) - labels * logits)
    per_logit = (expit(logits) - labels) / outputs.size
    grad = (per_logit - per_logit.sum() * threshold_grad) / scale_na
    return float(loss), grad


#: Losses by the names tasks accept in ``loss_name``.
LOSSES: dict[str, LossFunction] = {
    "corrsig": corrsig_loss,
    "margin": margin_loss,
    "mse": mse_loss,
    "sigmoid": sigmoid_classification_loss,
}
