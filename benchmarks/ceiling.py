"""How hard the Boolean gates are on a device model: random settings and the oracle ceiling.

Run ``python -m benchmarks.ceiling`` (virtual DNPUs seeds 0, 1, 2 and, when the file is there,
the measured-device surrogate ``../shared/devices/measured-dnpu-b.pt``; about 2 minutes) or
``--quick`` (fewer draws and starts, well under a minute). ``--model PATH`` measures that
brains-py surrogate instead of the default file; ``--max-current-na X`` builds the virtual
DNPUs with that current scale. Prints a table and ends with one line ``RESULT {json}``;
``docs/virtual-dnpu.md`` ("How hard the gates are") holds the table of the full run.

Figures, per device (noiseless model throughout):

* ``scale``: median and 99th percentile of ``|I|`` over settings drawn uniformly within all
  seven electrode ranges.
* ``random_default``: per gate, the fraction of random control settings (the five electrodes
  that are not inputs, uniform within their ranges) that separate the gate by at least 2, 10
  and 20 nA, inputs on the device's default pair at its default levels (:func:`default_inputs`:
  e3 and e4, logical 0 and 1 at the ends of the range both cover, as ``dnpu-bluesky --model``
  sets them; for the virtual DNPU that is -0.7 and +0.3 V).
* ``random_free``: the same with the input pair drawn from all 21 pairs and each input's two
  levels drawn uniformly within its range with ``high - low >= 0.3 V``.
* ``ceiling``: per gate, the best separation margin found by optimising the exact model over
  the controls, both inputs' levels (same constraints) and the pair (:func:`gate_ceilings`),
  with the pair and levels that give it and the number of pairs reaching 20 nA.
* ``ceiling_default``: the same with the inputs fixed at the default pair and levels.

The separation margin of a gate is ``min(I_high) - max(I_low)`` over its four cases
(``dnpu_bluesky.tasks.metrics.separation_margin``); a gate "succeeds" at X nA when the margin
is at least X nA.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dnpu_bluesky.sim import DeviceModel, VirtualDNPU
from dnpu_bluesky.tasks import GATES, BooleanGate, SphereClassification, accuracy_and_threshold

#: Where the measured-device surrogate lives beside the repository (GPL data: read, not copied).
DEFAULT_SURROGATE = Path(__file__).resolve().parents[1].parent / "shared" / "devices"
DEFAULT_SURROGATE = DEFAULT_SURROGATE / "measured-dnpu-b.pt"
#: Margins (nA) at which a random setting counts as solving a gate.
MARGINS_NA: tuple[float, ...] = (2.0, 10.0, 20.0)
#: Smallest difference between an input's logical 1 and logical 0 (V).
MIN_SWING_V = 0.3
#: The device's default input electrodes (first and second input).
DEFAULT_PAIR: tuple[int, int] = (3, 4)
#: Case order 00, 01, 10, 11: the bit of the first and second input per case.
BITS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
VIRTUAL_SEEDS: tuple[int, ...] = (0, 1, 2)


def _flipped(gate: str, flip_a: int, flip_b: int) -> tuple[int, ...]:
    """The gate's truth table with the first and/or second input's polarity reversed."""
    table = BooleanGate(gate).targets()
    return tuple(int(table[2 * (a ^ flip_a) + (b ^ flip_b)]) for a, b in BITS)


#: Every truth table a gate becomes when an input's logical 1 lies below its logical 0, by
#: name ``GATE`` (as is), ``GATE~a``, ``GATE~b``, ``GATE~ab`` (inputs reversed).
VARIANTS: dict[str, tuple[int, ...]] = {
    gate + suffix: _flipped(gate, fa, fb)
    for gate in GATES
    for suffix, (fa, fb) in (("", (0, 0)), ("~a", (1, 0)), ("~b", (0, 1)), ("~ab", (1, 1)))
}
#: The truth tables the search knows, in the order of its gate indices.
TABLES: tuple[str, ...] = tuple(VARIANTS)


def targets(gate: str) -> np.ndarray:
    """The truth table of a gate or variant (:data:`VARIANTS`), cases 00, 01, 10, 11."""
    return np.array(VARIANTS[gate])


def margins(currents: np.ndarray, gate: str) -> np.ndarray:
    """Separation margin ``min(I_high) - max(I_low)`` of currents ``(..., 4)`` -> ``(...)``."""
    t = targets(gate) == 1
    return currents[..., t].min(axis=-1) - currents[..., ~t].max(axis=-1)


def smooth_margin(
    currents: np.ndarray, gate: str, tau_na: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth lower bound on :func:`margins` and its derivative with respect to each case.

    ``softmin_tau(I_high) - softmax_tau(I_low)`` with ``softmax_tau(x) = tau log sum exp(x /
    tau)``; it approaches the margin from below as ``tau`` goes to 0 (within ``tau log 3``).

    Returns:
        ``(value (...), d value / d I (..., 4))``.
    """
    t = targets(gate) == 1
    tau = np.asarray(tau_na, dtype=float)[..., None]
    z = np.where(t, -currents, currents) / tau
    grad = np.zeros_like(currents)
    value = np.zeros(currents.shape[:-1])
    for cls, sign in ((t, -1.0), (~t, 1.0)):
        zc = z[..., cls]
        top = zc.max(axis=-1, keepdims=True)
        weight = np.exp(zc - top)
        total = weight.sum(axis=-1, keepdims=True)
        soft = tau[..., 0] * (top[..., 0] + np.log(total[..., 0]))  # softmax of +-I
        value -= soft  # -softmax(-I_high) = softmin(I_high); -softmax(I_low)
        grad[..., cls] = -sign * weight / total  # +w on the high cases, -w on the low
    return value, grad


def sample_levels(
    rng: np.random.Generator, ranges: np.ndarray, size: tuple[int, ...], min_swing_v: float
) -> tuple[np.ndarray, np.ndarray]:
    """Logical 0 and 1 levels ``(*size, n)`` per electrode, uniform on the allowed region.

    The region ``{low >= min, high <= max, high - low >= min_swing_v}`` is a triangle; two
    sorted uniform draws on ``[0, width - min_swing_v]`` map onto it with unit Jacobian.
    """
    low, high = ranges[:, 0], ranges[:, 1]
    room = np.maximum(high - low - min_swing_v, 0.0)
    u = rng.uniform(0.0, 1.0, (2, *size, len(low))) * room
    return low + u.min(axis=0), low + min_swing_v + u.max(axis=0)


def project_levels(
    low_v: np.ndarray, high_v: np.ndarray, ranges: np.ndarray, min_swing_v: float
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean projection of ``(low, high)`` per electrode onto the allowed triangle.

    Feasible points stay; others go to the nearest point of the triangle's three edges
    (``low = min``, ``high = max``, ``high - low = min_swing_v``).
    """
    a, b, s = ranges[:, 0], ranges[:, 1], min_swing_v
    lo, hi = np.broadcast_arrays(low_v, high_v)
    mid = np.clip(0.5 * (lo + hi), a + s / 2, b - s / 2)
    candidates = [
        (np.broadcast_to(a, lo.shape), np.clip(hi, a + s, b)),
        (np.clip(lo, a, b - s), np.broadcast_to(b, hi.shape)),
        (mid - s / 2, mid + s / 2),
    ]
    dist = np.stack([(c_lo - lo) ** 2 + (c_hi - hi) ** 2 for c_lo, c_hi in candidates])
    pick = np.argmin(dist, axis=0)
    new_lo = np.choose(pick, [c[0] for c in candidates])
    new_hi = np.choose(pick, [c[1] for c in candidates])
    feasible = (lo >= a) & (hi <= b) & (hi - lo >= s)
    return np.where(feasible, lo, new_lo), np.where(feasible, hi, new_hi)


def eligible_pairs(ranges: np.ndarray, min_swing_v: float = MIN_SWING_V) -> list[tuple[int, int]]:
    """All electrode pairs whose ranges allow the minimum swing (21 for 7 electrodes)."""
    ok = [i for i in range(len(ranges)) if ranges[i, 1] - ranges[i, 0] >= min_swing_v]
    return list(itertools.combinations(ok, 2))


def default_inputs(model: DeviceModel) -> tuple[tuple[int, int], tuple[float, float]]:
    """The default input pair and levels: e3, e4 at the ends of the range both cover.

    This is what ``dnpu-bluesky --model`` uses for a surrogate; for the virtual DNPU (e3 and
    e4 both -0.7 .. 0.3 V) it equals the gates' defaults -0.7 / +0.3 V.
    """
    ranges = model.voltage_ranges[list(DEFAULT_PAIR)]
    return DEFAULT_PAIR, (float(ranges[:, 0].max()), float(ranges[:, 1].min()))


def _masks(pairs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One-hot ``(..., n)`` masks of the first and second input electrode."""
    eye = np.eye(n)
    return eye[pairs[..., 0]], eye[pairs[..., 1]]


def case_volts(
    controls: np.ndarray, low_v: np.ndarray, high_v: np.ndarray, pairs: np.ndarray
) -> np.ndarray:
    """Electrode voltages ``(..., 4, n)`` of the four cases.

    Args:
        controls: ``(..., n)`` voltages; the entries of the input electrodes are ignored.
        low_v, high_v: ``(..., n)`` logical 0 and 1 per electrode (only the inputs' are used).
        pairs: ``(..., 2)`` integer indices of the first and second input.
    """
    ma, mb = _masks(pairs, controls.shape[-1])
    rest = (1.0 - ma - mb) * controls
    level = np.stack([low_v, high_v])  # (2, ..., n)
    return np.stack(
        [rest + ma * level[bit_a] + mb * level[bit_b] for bit_a, bit_b in BITS], axis=-2
    )


def current_scale(model: DeviceModel, n_settings: int = 100_000, seed: int = 0) -> dict[str, float]:
    """Median and 99th percentile of ``|I|`` (nA) over uniform random settings of all inputs."""
    rng = np.random.default_rng(seed)
    r = model.voltage_ranges
    current = model.current(rng.uniform(r[:, 0], r[:, 1], (n_settings, len(r))))
    return {
        "median_abs_na": float(np.median(np.abs(current))),
        "p99_abs_na": float(np.percentile(np.abs(current), 99)),
        "negative_fraction": float(np.mean(current < 0)),
    }


def random_success(
    model: DeviceModel,
    n_settings: int,
    *,
    pair: tuple[int, int] | None = None,
    levels: tuple[float, float] | None = None,
    margins_na: tuple[float, ...] = MARGINS_NA,
    min_swing_v: float = MIN_SWING_V,
    seed: int = 0,
) -> dict[str, Any]:
    """Fraction of random settings that separate each gate by at least each margin.

    Controls (every electrode that is not an input) are uniform within their ranges. With
    ``pair`` None the pair is drawn uniformly from :func:`eligible_pairs` per setting; with
    ``levels`` None each input's two levels are drawn by :func:`sample_levels` and, with even
    odds, logical 1 is the lower of the two.

    Returns:
        ``{"fractions": {gate: {margin: fraction}}, "best_na": {gate: best margin seen}}``.
    """
    rng = np.random.default_rng(seed)
    r = model.voltage_ranges
    n = len(r)
    controls = rng.uniform(r[:, 0], r[:, 1], (n_settings, n))
    if pair is None:
        choices = np.array(eligible_pairs(r, min_swing_v))
        pairs = choices[rng.integers(len(choices), size=n_settings)]
    else:
        pairs = np.broadcast_to(np.array(pair), (n_settings, 2))
    if levels is None:
        low, high = sample_levels(rng, r, (n_settings,), min_swing_v)
        # Either level may be the higher one, as in training.
        reverse = rng.random(low.shape) < 0.5
        low, high = np.where(reverse, high, low), np.where(reverse, low, high)
    else:
        low = np.full((n_settings, n), float(levels[0]))
        high = np.full((n_settings, n), float(levels[1]))
    current = model.current(case_volts(controls, low, high, pairs))
    fractions, best = {}, {}
    for gate in GATES:
        m = margins(current, gate)
        fractions[gate] = {float(x): float(np.mean(m >= x)) for x in margins_na}
        best[gate] = float(m.max())
    return {"fractions": fractions, "best_na": best}


@dataclass
class Ceiling:
    """The best separation found for one gate.

    Attributes:
        gate: The gate.
        margin_na: Best exact margin (nA) over every start and pair.
        pair: Electrodes of the first and second input where it was found.
        low_v, high_v: Logical 0 and 1 of the first and second input (V).
        controls_v: All electrode voltages (inputs' entries meaningless) of that setting.
        per_pair_na: Best margin per pair, keyed ``"i,j"``.
    """

    gate: str
    margin_na: float
    pair: tuple[int, int]
    low_v: tuple[float, float]
    high_v: tuple[float, float]
    controls_v: list[float]
    per_pair_na: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "margin_na": round(self.margin_na, 3),
            "pair": list(self.pair),
            "low_v": [round(v, 4) for v in self.low_v],
            "high_v": [round(v, 4) for v in self.high_v],
            "controls_v": [round(v, 4) for v in self.controls_v],
            "pairs_at_20na": sum(m >= 20.0 for m in self.per_pair_na.values()),
            "per_pair_na": {k: round(v, 2) for k, v in self.per_pair_na.items()},
        }


def _ascend(
    model: DeviceModel,
    gate_index: np.ndarray,
    pairs: np.ndarray,
    x: np.ndarray,
    *,
    free_levels: bool,
    iterations: int,
    lr_v: tuple[float, float],
    tau_na: tuple[float, float],
    min_swing_v: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Projected Adam ascent of the smooth margin from every start at once.

    ``x`` is ``(starts, 3, n)``: controls, logical 0 levels, logical 1 levels; ``gate_index``
    and ``pairs`` give each start's gate and input pair. Learning rate and temperature fall
    geometrically between the two ends of ``lr_v`` and ``tau_na``. Every iterate is feasible;
    the best exact margin seen per start is returned with its point.
    """
    r = model.voltage_ranges
    ma, mb = _masks(pairs, r.shape[0])
    rest = 1.0 - ma - mb
    is_high = np.array([targets(g) == 1 for g in TABLES])[gate_index]  # (starts, 4)
    a_bits, b_bits = BITS[:, 0][:, None], BITS[:, 1][:, None]  # (4, 1)
    x = x.copy()
    best_m = np.full(len(x), -np.inf)
    best_x = x.copy()
    m1, m2 = np.zeros_like(x), np.zeros_like(x)
    beta1, beta2 = 0.9, 0.999
    for step in range(iterations):
        frac = step / max(iterations - 1, 1)
        lr = lr_v[0] * (lr_v[1] / lr_v[0]) ** frac
        tau = tau_na[0] * (tau_na[1] / tau_na[0]) ** frac
        volts = case_volts(x[:, 0], x[:, 1], x[:, 2], pairs)
        current = model.current(volts)
        exact = np.where(is_high, current, np.inf).min(-1) - np.where(
            is_high, -np.inf, current
        ).max(-1)
        better = exact > best_m
        best_m[better], best_x[better] = exact[better], x[better]
        if step == iterations - 1:
            break
        grad_i = np.empty_like(current)
        for g, gate in enumerate(TABLES):
            sel = gate_index == g
            if sel.any():
                grad_i[sel] = smooth_margin(current[sel], gate, tau)[1]
        weighted = grad_i[..., None] * model.jacobian(volts)  # (starts, 4, n)
        grad = np.empty_like(x)
        grad[:, 0] = weighted.sum(axis=1) * rest
        if free_levels:
            on_a, on_b = weighted * ma[:, None], weighted * mb[:, None]
            grad[:, 1] = ((1 - a_bits) * on_a + (1 - b_bits) * on_b).sum(axis=1)
            grad[:, 2] = (a_bits * on_a + b_bits * on_b).sum(axis=1)
        else:
            grad[:, 1:] = 0.0
        m1 = beta1 * m1 + (1 - beta1) * grad
        m2 = beta2 * m2 + (1 - beta2) * grad * grad
        m1_hat = m1 / (1 - beta1 ** (step + 1))
        m2_hat = m2 / (1 - beta2 ** (step + 1))
        x += lr * m1_hat / (np.sqrt(m2_hat) + 1e-12)  # ascent
        x[:, 0] = np.clip(x[:, 0], r[:, 0], r[:, 1])
        if free_levels:
            x[:, 1], x[:, 2] = project_levels(x[:, 1], x[:, 2], r, min_swing_v)
    return best_m, best_x


def gate_ceilings(
    model: DeviceModel,
    *,
    pairs: list[tuple[int, int]] | None = None,
    levels: tuple[float, float] | None = None,
    gates: tuple[str, ...] = GATES,
    starts_per_pair: int = 48,
    iterations: int = 300,
    polish_iterations: int = 400,
    polish_starts: int = 3,
    min_swing_v: float = MIN_SWING_V,
    seed: int = 0,
    polarity_free: bool = True,
) -> dict[str, Ceiling]:
    """Best separation margin per gate: the oracle ceiling of the exact, noiseless model.

    Multi-start projected Adam on :func:`smooth_margin` (exact ``dI/dV`` from
    ``model.jacobian``) over the controls and, with ``levels`` None, both inputs' logical 0
    and 1 (inside the electrode range, ``high - low >= min_swing_v``), from
    ``starts_per_pair`` random starts on each pair of ``pairs`` (default: all eligible
    pairs); then the ``polish_starts`` best starts of every pair are polished with a smaller
    step and a colder softmin. Every evaluated point is feasible; the best exact margin seen
    is kept. A local optimiser from many starts: a lower bound on the true ceiling.

    Another benchmark can report what training reached as a fraction of the ceiling at the
    same inputs, e.g. ``margin / gate_ceilings(model, pairs=[(3, 4)], levels=(-0.7, 0.3),
    gates=("XOR",))["XOR"].margin_na``.

    Args:
        model: Anything with ``current``, ``jacobian`` and ``voltage_ranges``.
        pairs: Input pairs (first, second input) to search; default all eligible pairs.
        levels: Fixed ``(logical 0, logical 1)`` for both inputs instead of free levels.
        gates: Gates to optimise.
        starts_per_pair: Random starts per gate and pair.
        iterations, polish_iterations: Adam steps of the search and of the polish.
        polish_starts: Starts per gate and pair polished.
        min_swing_v: Minimum ``|high - low|`` of an input's levels.
        seed: Seeds the starts.
        polarity_free: Let either level of an input be the higher one, as training does
            (``low_v``/``high_v`` of the result are logical 0 and 1, in either order).

    Returns:
        ``{gate: Ceiling}``.
    """
    r = np.asarray(model.voltage_ranges, dtype=float)
    n = r.shape[0]
    pairs = eligible_pairs(r, min_swing_v) if pairs is None else [tuple(p) for p in pairs]
    if not pairs:
        raise ValueError(f"no electrode pair allows a swing of {min_swing_v} V")
    if levels is not None:
        used = r[sorted({e for p in pairs for e in p})]
        if not (np.all(used[:, 0] <= levels[0]) and np.all(levels[1] <= used[:, 1])):
            raise ValueError(f"input levels {levels} V leave the inputs' ranges {used.tolist()}")
    rng = np.random.default_rng(seed)
    # Either level of an input may be the higher one: a reversed input is the gate's variant
    # with that input's bit flipped, searched with the levels in order and read back reversed.
    polarity_free = polarity_free and levels is None
    variants = {
        gate: [gate + suffix for suffix in (("", "~a", "~b", "~ab") if polarity_free else ("",))]
        for gate in gates
    }
    gate_ids = [TABLES.index(v) for gate in gates for v in variants[gate]]
    combos = [(g, p) for g in gate_ids for p in range(len(pairs))]
    gate_index = np.repeat([g for g, _ in combos], starts_per_pair)
    pair_index = np.repeat([p for _, p in combos], starts_per_pair)
    pair_arr = np.array(pairs)[pair_index]
    count = len(gate_index)
    x = np.empty((count, 3, n))
    x[:, 0] = rng.uniform(r[:, 0], r[:, 1], (count, n))
    if levels is None:
        x[:, 1], x[:, 2] = sample_levels(rng, r, (count,), min_swing_v)
    else:
        x[:, 1], x[:, 2] = levels
    scale = current_scale(model, 20_000, seed)["p99_abs_na"]
    common = {"free_levels": levels is None, "min_swing_v": min_swing_v}
    found, x = _ascend(
        model,
        gate_index,
        pair_arr,
        x,
        iterations=iterations,
        lr_v=(0.05, 0.005),
        tau_na=(0.05 * scale, 0.005 * scale),
        **common,
    )
    # Polish the best few starts of every gate and pair.
    keep = min(polish_starts, starts_per_pair)
    found = found.reshape(len(combos), starts_per_pair)
    top = np.argsort(-found, axis=1)[:, :keep]
    pick = (np.arange(len(combos))[:, None] * starts_per_pair + top).ravel()
    polished, px = _ascend(
        model,
        gate_index[pick],
        pair_arr[pick],
        x[pick],
        iterations=polish_iterations,
        lr_v=(0.01, 0.0005),
        tau_na=(0.005 * scale, 0.0005 * scale),
        **common,
    )
    # The best polished start of every gate and pair.
    polished = polished.reshape(len(combos), keep)
    best_of = np.arange(len(combos)) * keep + polished.argmax(axis=1)
    polished, px = polished.max(axis=1), px[best_of]
    result = {}
    for gate in gates:
        ids = [TABLES.index(v) for v in variants[gate]]
        rows = [k for k, (gg, _) in enumerate(combos) if gg in ids]
        best = max(rows, key=lambda k: polished[k])
        p = pairs[combos[best][1]]
        variant = TABLES[combos[best][0]]
        low = [float(px[best, 1, p[0]]), float(px[best, 1, p[1]])]
        high = [float(px[best, 2, p[0]]), float(px[best, 2, p[1]])]
        for i, name in enumerate("ab"):
            if "~" in variant and name in variant.split("~")[1]:
                low[i], high[i] = high[i], low[i]
        per_pair: dict[str, float] = {}
        for k in rows:
            key = f"{pairs[combos[k][1]][0]},{pairs[combos[k][1]][1]}"
            per_pair[key] = max(per_pair.get(key, -np.inf), float(polished[k]))
        result[gate] = Ceiling(
            gate=gate,
            margin_na=float(polished[best]),
            pair=(int(p[0]), int(p[1])),
            low_v=(low[0], low[1]),
            high_v=(high[0], high[1]),
            controls_v=[float(v) for v in px[best, 0]],
            per_pair_na=per_pair,
        )
    return result


# -- sphere classification -------------------------------------------------------------------

#: Input electrodes of the sphere task, as ``dnpu-bluesky train --task sphere`` uses them.
SPHERE_INPUTS: tuple[int, int, int] = (1, 2, 4)

#: Electrode ranges ``(7, 2)`` of a device, fixed or per input triple (a setup may give inputs
#: and controls different ranges, as the virtual DNPU's built-in setup does).
Ranges = np.ndarray | Callable[[tuple[int, ...]], np.ndarray] | None


def _ranges_for(model: DeviceModel, ranges: Ranges, triple: tuple[int, ...]) -> np.ndarray:
    """The ``(n, 2)`` electrode ranges of ``model`` with ``triple`` as its inputs."""
    if ranges is None:
        return np.asarray(model.voltage_ranges, dtype=float)
    if callable(ranges):
        return np.asarray(ranges(tuple(triple)), dtype=float)
    return np.asarray(ranges, dtype=float)


def common_range(ranges: np.ndarray, triple: tuple[int, ...]) -> tuple[float, float]:
    """The voltage range every electrode of ``triple`` covers (the sphere's fixed cube).

    Parameters
    ----------
    ranges : numpy.ndarray
        ``(n, 2)`` ``[min, max]`` volts per electrode.
    triple : tuple of int
        The input electrodes.

    Returns
    -------
    tuple of float
        ``(low, high)``; ``low >= high`` when the ranges do not overlap.
    """
    used = np.asarray(ranges, dtype=float)[list(triple)]
    return float(used[:, 0].max()), float(used[:, 1].min())


def sphere_task(
    n_points: int = 120, data_seed: int = 0, input_range_v: tuple[float, float] | None = None
) -> SphereClassification:
    """The sphere task whose points the ceiling classifies (the package's default geometry).

    Parameters
    ----------
    n_points : int
        Points, train and test together.
    data_seed : int
        Seed of the points and of the split.
    input_range_v : tuple of float, optional
        The cube ``(low, high)``; the unit inputs hardly depend on it (only through rounding).

    Returns
    -------
    SphereClassification
        The task.
    """
    options = {} if input_range_v is None else {"input_range_v": input_range_v}
    return SphereClassification(n_points=n_points, seed=data_seed, **options)


def best_accuracies(currents: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best threshold accuracy of many sets of outputs at once, and that threshold's gap.

    The vectorised counterpart of :func:`dnpu_bluesky.tasks.accuracy_and_threshold` (class 1
    above the threshold; a split between equal outputs is not allowed).

    Parameters
    ----------
    currents : numpy.ndarray
        ``(..., n_cases)`` output currents, nA.
    labels : numpy.ndarray
        ``(n_cases,)`` 0/1 labels.

    Returns
    -------
    accuracy : numpy.ndarray
        ``(...)`` the best fraction of cases classified correctly.
    gap : numpy.ndarray
        ``(...)`` the widest gap (between consecutive sorted outputs) among the splits giving
        that accuracy, over the outputs' spread ``max - min`` (0 for an end threshold).
    """
    currents = np.asarray(currents, dtype=float)
    labels = np.asarray(labels, dtype=float)
    order = np.argsort(currents, axis=-1, kind="stable")
    values = np.take_along_axis(currents, order, axis=-1)
    ordered = labels[order]
    zeros = np.zeros((*currents.shape[:-1], 1))
    lows_below = np.concatenate([zeros, np.cumsum(1.0 - ordered, axis=-1)], axis=-1)
    highs_below = np.concatenate([zeros, np.cumsum(ordered, axis=-1)], axis=-1)
    correct = lows_below + labels.sum() - highs_below
    gaps = np.concatenate([zeros, np.diff(values, axis=-1), zeros], axis=-1)
    valid = np.ones(gaps.shape, dtype=bool)
    valid[..., 1:-1] = gaps[..., 1:-1] > 0
    correct = np.where(valid, correct, -1.0)
    best = correct.max(axis=-1)
    spread = np.maximum(values[..., -1] - values[..., 0], 1e-300)
    gap = np.where(correct == best[..., None], gaps, -1.0).max(axis=-1) / spread
    return best / labels.size, gap


def _sphere_voltages(
    controls: np.ndarray, levels: np.ndarray, masks: np.ndarray, unit: np.ndarray
) -> np.ndarray:
    """Electrode voltages ``(starts, n_cases, n)`` of every case.

    ``controls (starts, n)``, ``levels (starts, 3, 2)`` (logical 0 and 1 per input), ``masks
    (starts, 3, n)`` one-hot input electrodes, ``unit (n_cases, 3)`` unit inputs.
    """
    rest = 1.0 - masks.sum(axis=1)  # (starts, n)
    inputs = levels[:, None, :, 0] * (1.0 - unit) + levels[:, None, :, 1] * unit
    return (controls * rest)[:, None, :] + np.einsum("ski,sin->skn", inputs, masks)


def _project_sphere_levels(
    levels: np.ndarray, bounds: np.ndarray, min_swing_v: float
) -> np.ndarray:
    """:func:`dnpu_bluesky.tasks.levels.project_levels` on ``(starts, 3, 2)`` levels at once."""
    from dnpu_bluesky.tasks.levels import project_levels as project_task_levels

    shape = levels.shape
    flat = project_task_levels(levels.reshape(-1, 2), bounds.reshape(-1, 2), min_swing_v)
    return flat.reshape(shape)


def _sphere_descend(
    model: DeviceModel,
    unit: np.ndarray,
    labels: np.ndarray,
    state: dict[str, np.ndarray],
    *,
    free_levels: bool,
    iterations: int,
    lr: tuple[float, float],
    temperature: tuple[float, float],
    min_swing_v: float,
    min_spread_na: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Projected Adam descent of a logistic classification loss from every start at once.

    ``state`` holds per start: ``triples (S, 3)``, ``ranges (S, n, 2)``, ``controls (S, n)``,
    ``levels (S, 3, 2)`` and ``threshold (S,)``. The loss is scale-free: with the currents
    standardised over the cases, ``z = (I - mean I) / std I``, it is the class-balanced mean of
    ``softplus(-(2 y - 1) (z - threshold) / T)``, the threshold a free parameter (in units of
    the standard deviation) and the temperature ``T`` falling geometrically between the ends
    of ``temperature``, the learning rate likewise between the ends of ``lr`` (volts, and
    standard deviations for the threshold, per step). The gradient includes the
    standardisation. Every iterate is feasible; the best exact training accuracy seen per
    start (ties: the wider relative gap of :func:`best_accuracies`) is returned with its point;
    iterates whose training currents span less than ``min_spread_na`` do not count.
    """
    n = state["controls"].shape[1]
    masks = np.eye(n)[state["triples"]]  # (S, 3, n)
    rest = 1.0 - masks.sum(axis=1)
    ranges = state["ranges"]
    bounds = np.take_along_axis(ranges, state["triples"][..., None], axis=1)  # (S, 3, 2)
    y = labels.astype(float)
    sign = 2.0 * y - 1.0
    weight = np.where(y == 1, 0.5 / y.sum(), 0.5 / (1 - y).sum())  # class-balanced mean
    params = {k: state[k].copy() for k in ("controls", "levels", "threshold")}
    best = {k: v.copy() for k, v in params.items()}
    best_acc = np.full(len(params["controls"]), -np.inf)
    best_gap = np.full(len(params["controls"]), -np.inf)
    m1 = {k: np.zeros_like(v) for k, v in params.items()}
    m2 = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2 = 0.9, 0.999
    for step in range(iterations):
        frac = step / max(iterations - 1, 1)
        rate = lr[0] * (lr[1] / lr[0]) ** frac
        temp = temperature[0] * (temperature[1] / temperature[0]) ** frac
        volts = _sphere_voltages(params["controls"], params["levels"], masks, unit)
        current = model.current(volts)  # (S, K)
        acc, gap = best_accuracies(current, labels)
        if min_spread_na > 0:
            acc = np.where(np.ptp(current, axis=1) >= min_spread_na, acc, -np.inf)
        better = (acc > best_acc) | ((acc == best_acc) & (gap > best_gap))
        best_acc[better], best_gap[better] = acc[better], gap[better]
        for key, value in params.items():
            best[key][better] = value[better]
        if step == iterations - 1:
            break
        std = np.maximum(current.std(axis=1, keepdims=True), 1e-12)
        standard = (current - current.mean(axis=1, keepdims=True)) / std
        z = sign * (standard - params["threshold"][:, None]) / temp
        d_loss_d_z = -weight * sign * _expit(-z) / temp  # d softplus(-z) / d standard
        # Through the standardisation: dL/dI = (g - mean g - s mean(g s)) / std.
        d_loss_d_i = (
            d_loss_d_z
            - d_loss_d_z.mean(axis=1, keepdims=True)
            - standard * (d_loss_d_z * standard).mean(axis=1, keepdims=True)
        ) / std
        jac = model.jacobian(volts)  # (S, K, n)
        weighted = d_loss_d_i[..., None] * jac
        grads = {
            "controls": weighted.sum(axis=1) * rest,
            "threshold": -d_loss_d_z.sum(axis=1),
        }
        if free_levels:
            on_inputs = np.einsum("skn,sin->ski", weighted, masks)  # dL/dV_in per case
            grads["levels"] = np.stack(
                [(on_inputs * (1.0 - unit)).sum(axis=1), (on_inputs * unit).sum(axis=1)], axis=-1
            )
        else:
            grads["levels"] = np.zeros_like(params["levels"])
        for key, grad in grads.items():
            m1[key] = beta1 * m1[key] + (1 - beta1) * grad
            m2[key] = beta2 * m2[key] + (1 - beta2) * grad * grad
            m1_hat = m1[key] / (1 - beta1 ** (step + 1))
            m2_hat = m2[key] / (1 - beta2 ** (step + 1))
            params[key] = params[key] - rate * m1_hat / (np.sqrt(m2_hat) + 1e-12)
        params["controls"] = np.clip(params["controls"], ranges[..., 0], ranges[..., 1])
        if free_levels:
            params["levels"] = _project_sphere_levels(params["levels"], bounds, min_swing_v)
    out = dict(state)
    out.update(best)
    return best_acc, best_gap, out


def _expit(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _sphere_starts(
    model: DeviceModel,
    ranges: Ranges,
    triples: list[tuple[int, int, int]],
    count: int,
    rng: np.random.Generator,
    *,
    free_levels: bool,
    min_swing_v: float,
) -> dict[str, np.ndarray]:
    """``count`` random starts on each triple: controls uniform in range, levels (free: uniform
    on the allowed region, either polarity; fixed: the triple's common range, ascending)."""
    per_triple = {t: _ranges_for(model, ranges, t) for t in triples}
    trip = np.repeat(np.array(triples, dtype=int), count, axis=0)
    r = np.stack([per_triple[t] for t in triples for _ in range(count)])
    total = len(trip)
    controls = rng.uniform(r[..., 0], r[..., 1])
    bounds = np.take_along_axis(r, trip[..., None], axis=1)  # (S, 3, 2)
    if free_levels:
        low, high = sample_levels(rng, bounds.reshape(-1, 2), (), min_swing_v)
        levels = np.stack([low, high], axis=-1).reshape(total, 3, 2)
        flip = rng.random((total, 3)) < 0.5
        levels[flip] = levels[flip][:, ::-1]
    else:
        levels = np.empty((total, 3, 2))
        for k, t in enumerate(trip):
            levels[k] = common_range(per_triple[tuple(t)], tuple(t))
    return {"triples": trip, "ranges": r, "controls": controls, "levels": levels}


#: Search and polish schedules of the sphere ceiling: learning rate (V per step) and
#: temperature (standard deviations of the current), each falling geometrically.
SPHERE_SEARCH = {"lr": (0.05, 0.005), "temperature": (1.0, 0.03)}
SPHERE_POLISH = {"lr": (0.01, 0.0005), "temperature": (0.1, 0.01)}


def _sphere_search(
    model: DeviceModel,
    unit: np.ndarray,
    labels: np.ndarray,
    state: dict[str, np.ndarray],
    *,
    free_levels: bool,
    iterations: int,
    polish_iterations: int,
    polish_starts: int,
    group: np.ndarray,
    min_swing_v: float,
    min_spread_na: float,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Search from every start, then polish the ``polish_starts`` best of each ``group``."""
    state = dict(state, threshold=np.zeros(len(state["controls"])))
    common = {
        "free_levels": free_levels,
        "min_swing_v": min_swing_v,
        "min_spread_na": min_spread_na,
    }
    acc, gap, state = _sphere_descend(
        model, unit, labels, state, iterations=iterations, **SPHERE_SEARCH, **common
    )
    pick = []
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        order = np.lexsort((-gap[members], -acc[members]))
        pick.extend(members[order[:polish_starts]])
    pick = np.array(pick)
    state = {k: v[pick] for k, v in state.items()}
    if polish_iterations > 0:
        acc, gap, state = _sphere_descend(
            model, unit, labels, state, iterations=polish_iterations, **SPHERE_POLISH, **common
        )
    else:
        acc, gap = acc[pick], gap[pick]
    return acc, gap, state


def _sphere_result(
    model: DeviceModel,
    task: Any,
    state: dict[str, np.ndarray],
    k: int,
    free_levels: bool,
) -> dict[str, Any]:
    """Train and test accuracy (threshold from train) of start ``k`` of ``state``."""
    triple = state["triples"][k]
    masks = np.eye(state["controls"].shape[1])[triple][None]
    currents = {}
    for split in ("train", "test"):
        volts = _sphere_voltages(
            state["controls"][k : k + 1], state["levels"][k : k + 1], masks, task.unit_inputs(split)
        )
        currents[split] = model.current(volts)[0]
    train_accuracy, threshold = accuracy_and_threshold(currents["train"], task.targets("train"))
    gap = best_accuracies(currents["train"], task.targets("train"))[1]
    test_labels = task.targets("test")
    test_accuracy = float(np.mean((currents["test"] > threshold) == (test_labels == 1)))
    return {
        "inputs": [int(e) for e in triple],
        "free_levels": bool(free_levels),
        "train_accuracy": float(train_accuracy),
        "test_accuracy": test_accuracy,
        "threshold_na": float(threshold),
        "levels_v": [[float(a), float(b)] for a, b in state["levels"][k]],
        "controls_v": {
            f"e{j}": float(v) for j, v in enumerate(state["controls"][k]) if j not in triple
        },
        "current_range_na": [float(currents["train"].min()), float(currents["train"].max())],
        "relative_gap": float(gap),
        "n_train": len(currents["train"]),
        "n_test": len(currents["test"]),
    }


def sphere_ceiling(
    model: DeviceModel,
    inputs: tuple[int, int, int] = SPHERE_INPUTS,
    *,
    free_levels: bool = True,
    n_points: int = 120,
    data_seed: int = 0,
    starts: int = 64,
    seed: int = 0,
    iterations: int = 300,
    polish_iterations: int = 600,
    polish_starts: int = 6,
    min_swing_v: float = MIN_SWING_V,
    min_spread_na: float = 0.0,
    ranges: Ranges = None,
) -> dict[str, Any]:
    """Best sphere-classification accuracy on one input triple: the exact model's ceiling.

    Input ``i`` carries ``V = zero_i + (one_i - zero_i) * u`` with ``u`` the task's unit
    inputs; a point counts as inside when the current is above a threshold chosen on the
    training split (:func:`dnpu_bluesky.tasks.accuracy_and_threshold`), and the test split is
    classified at that threshold. Multi-start projected Adam (exact ``dI/dV`` from
    ``model.jacobian``) on a class-balanced logistic loss of ``(z - threshold) / T``, ``z`` the
    current standardised over the training points, the threshold a free parameter and ``T``
    annealed, over the controls and, with ``free_levels``, the six levels (inside each input's
    range, ``|one - zero| >= min_swing_v``, either polarity); then the ``polish_starts`` best
    starts are polished with a smaller step and a colder loss. The best exact training
    accuracy seen wins (ties: the wider gap at the threshold relative to the currents'
    spread). A local optimiser from many starts: a lower bound on the true ceiling.

    Parameters
    ----------
    model : DeviceModel
        Anything with ``current``, ``jacobian`` and ``voltage_ranges``.
    inputs : tuple of int
        The three input electrodes, in the task's axis order.
    free_levels : bool
        Optimise the levels; False fixes every input at the range all three cover (logical 0
        at its low end), as ``dnpu-bluesky train --task sphere`` without level training.
    n_points : int
        Points of the task, train and test together.
    data_seed : int
        Seed of the task's points and split.
    starts : int
        Random starts.
    seed : int
        Seeds the starts.
    iterations, polish_iterations : int
        Adam steps of the search and of the polish.
    polish_starts : int
        Starts polished.
    min_swing_v : float
        Smallest ``|one - zero|`` of a free input.
    min_spread_na : float
        Settings whose training currents span less than this (nA) do not count: the exact
        model separates points by currents no measurement resolves; 0 counts every setting.
    ranges : numpy.ndarray or callable, optional
        ``(n, 2)`` electrode ranges, or a function of the input triple giving them (a setup
        whose inputs have other ranges than its controls); default ``model.voltage_ranges``.

    Returns
    -------
    dict
        ``inputs``, ``free_levels``, ``train_accuracy``, ``test_accuracy``, ``threshold_na``,
        ``levels_v`` (``[zero, one]`` per input), ``controls_v`` (``{"eJ": V}``),
        ``current_range_na`` (train), ``relative_gap`` (:func:`best_accuracies`),
        ``n_train``, ``n_test``, ``min_spread_na``, ``meets_min_spread`` (False: no setting
        found spans ``min_spread_na``, the start reported is not a result), ``starts``,
        ``wall_s``.
    """
    started = time.perf_counter()
    triple = tuple(int(e) for e in inputs)
    if len(triple) != 3 or len(set(triple)) != 3:
        raise ValueError(f"inputs must be three distinct electrodes, got {inputs}")
    r = _ranges_for(model, ranges, triple)
    cube = common_range(r, triple)
    if not free_levels and cube[1] - cube[0] < min_swing_v:
        raise ValueError(f"inputs {triple} share no range of {min_swing_v} V: {cube}")
    task = sphere_task(n_points, data_seed, cube if cube[1] > cube[0] else None)
    rng = np.random.default_rng(seed)
    state = _sphere_starts(
        model, ranges, [triple], starts, rng, free_levels=free_levels, min_swing_v=min_swing_v
    )
    acc, gap, state = _sphere_search(
        model,
        task.unit_inputs("train"),
        task.targets("train"),
        state,
        free_levels=free_levels,
        iterations=iterations,
        polish_iterations=polish_iterations,
        polish_starts=min(polish_starts, starts),
        group=np.zeros(starts, dtype=int),
        min_swing_v=min_swing_v,
        min_spread_na=min_spread_na,
    )
    best = int(np.lexsort((-gap, -acc))[0])
    result = _sphere_result(model, task, state, best, free_levels)
    result.update(
        min_spread_na=float(min_spread_na),
        meets_min_spread=bool(np.isfinite(acc[best])),
        starts=int(starts),
        wall_s=round(time.perf_counter() - started, 2),
    )
    return result


def sphere_triples(
    model: DeviceModel,
    triples: list[tuple[int, int, int]] | None = None,
    *,
    n_points: int = 120,
    data_seed: int = 0,
    starts_per_triple: int = 4,
    best_triples: int = 4,
    starts: int = 64,
    seed: int = 0,
    iterations: int = 300,
    polish_iterations: int = 600,
    polish_starts: int = 6,
    min_swing_v: float = MIN_SWING_V,
    min_spread_na: float = 0.0,
    ranges: Ranges = None,
) -> dict[str, Any]:
    """Sphere ceiling with free levels over input triples: a quick look at every triple, then
    :func:`sphere_ceiling` on the most promising few.

    Every triple gets ``starts_per_triple`` starts (search and polish of the best one, as in
    :func:`sphere_ceiling`); the ``best_triples`` with the highest training accuracy (ties:
    the wider relative gap) then get ``starts`` starts each. Only training accuracy decides.

    Parameters
    ----------
    model : DeviceModel
        Anything with ``current``, ``jacobian`` and ``voltage_ranges``.
    triples : list of tuple of int, optional
        Input triples to search; default all 35 of 7 electrodes (those whose ranges allow the
        swing).
    n_points, data_seed : int
        The task's points and split (:func:`sphere_ceiling`).
    starts_per_triple : int
        Starts per triple in the first look.
    best_triples : int
        Triples given a full :func:`sphere_ceiling`.
    starts, seed, iterations, polish_iterations, polish_starts, min_swing_v, min_spread_na, ranges
        As in :func:`sphere_ceiling` (``starts`` for each of the best triples).

    Returns
    -------
    dict
        The best triple's :func:`sphere_ceiling` result, plus ``per_triple`` (``{"a,b,c":
        train accuracy}`` of the first look, improved by the full runs) and ``wall_s``.
    """
    started = time.perf_counter()
    n = np.asarray(model.voltage_ranges).shape[0]
    if triples is None:
        triples = [
            t
            for t in itertools.combinations(range(n), 3)
            if np.all(np.diff(_ranges_for(model, ranges, t)[list(t)], axis=1) >= min_swing_v)
        ]
    triples = [tuple(int(e) for e in t) for t in triples]
    task = sphere_task(n_points, data_seed)
    rng = np.random.default_rng(seed)
    state = _sphere_starts(
        model, ranges, triples, starts_per_triple, rng, free_levels=True, min_swing_v=min_swing_v
    )
    acc, gap, state = _sphere_search(
        model,
        task.unit_inputs("train"),
        task.targets("train"),
        state,
        free_levels=True,
        iterations=iterations,
        polish_iterations=polish_iterations,
        polish_starts=1,
        group=np.repeat(np.arange(len(triples)), starts_per_triple),
        min_swing_v=min_swing_v,
        min_spread_na=min_spread_na,
    )
    per_triple = {",".join(map(str, t)): float(a) for t, a in zip(triples, acc, strict=True)}
    ranked = np.lexsort((-gap, -acc))[:best_triples]
    results = []
    for k in ranked:
        row = sphere_ceiling(
            model,
            triples[k],
            n_points=n_points,
            data_seed=data_seed,
            starts=starts,
            seed=seed + 1,
            iterations=iterations,
            polish_iterations=polish_iterations,
            polish_starts=polish_starts,
            min_swing_v=min_swing_v,
            min_spread_na=min_spread_na,
            ranges=ranges,
        )
        key = ",".join(map(str, triples[k]))
        per_triple[key] = max(per_triple[key], row["train_accuracy"])
        results.append(row)
    best = max(results, key=lambda row: (row["train_accuracy"], row["relative_gap"]))
    return dict(best, per_triple=per_triple, wall_s=round(time.perf_counter() - started, 2))


@dataclass(frozen=True)
class Config:
    n_random: int
    starts_per_pair: int
    iterations: int
    polish_iterations: int
    quick: bool = False


FULL = Config(n_random=20_000, starts_per_pair=48, iterations=300, polish_iterations=400)
QUICK = Config(n_random=4_000, starts_per_pair=4, iterations=120, polish_iterations=120, quick=True)


def measure(model: DeviceModel, config: Config) -> dict[str, Any]:
    """Every figure of one device (see the module docstring)."""
    started = time.perf_counter()
    pair, levels = default_inputs(model)
    ceilings = gate_ceilings(
        model,
        starts_per_pair=config.starts_per_pair,
        iterations=config.iterations,
        polish_iterations=config.polish_iterations,
    )
    ceilings_default = gate_ceilings(
        model,
        pairs=[pair],
        levels=levels,
        starts_per_pair=4 * config.starts_per_pair,
        iterations=config.iterations,
        polish_iterations=config.polish_iterations,
    )
    random_default = random_success(model, config.n_random, pair=pair, levels=levels)
    random_free = random_success(model, config.n_random, seed=1)
    # A local optimiser must at least match the best random draw of the same search space.
    for gate in GATES:
        for found, drawn in (
            (ceilings[gate].margin_na, random_free["best_na"][gate]),
            (ceilings_default[gate].margin_na, random_default["best_na"][gate]),
        ):
            if found < drawn - 1e-6:
                print(f"  warning: {gate}: optimiser {found:.1f} nA < random draw {drawn:.1f} nA")
    return {
        "device": model.describe().get("kind"),
        "seed": model.describe().get("seed"),
        "default_inputs": {"pair": list(pair), "levels_v": list(levels)},
        "scale": current_scale(model),
        "random_default": random_default,
        "random_free": random_free,
        "ceiling": {g: c.to_dict() for g, c in ceilings.items()},
        "ceiling_default": {g: round(c.margin_na, 3) for g, c in ceilings_default.items()},
        "wall_s": time.perf_counter() - started,
    }


def _fractions(row: dict[str, Any], gate: str) -> str:
    return "/".join(f"{100 * f:.3g}" for f in row["fractions"][gate].values())


def print_table(label: str, row: dict[str, Any]) -> None:
    scale = row["scale"]
    pair, levels = row["default_inputs"]["pair"], row["default_inputs"]["levels_v"]
    print(
        f"\n{label}: |I| median {scale['median_abs_na']:.1f} nA, 99th percentile "
        f"{scale['p99_abs_na']:.1f} nA; default inputs e{pair[0]},e{pair[1]} at "
        f"{levels[0]:g}/{levels[1]:g} V ({row['wall_s']:.1f} s)"
    )
    print(
        f"  {'gate':5s} {'random % default (2/10/20 nA)':>30s} {'random % free':>22s}"
        f" {'ceiling default':>16s} {'ceiling free':>13s}  pair  levels (0/1, V)  pairs>=20"
    )
    for gate in GATES:
        c = row["ceiling"][gate]
        lv = ", ".join(
            f"{lo:+.2f}/{hi:+.2f}" for lo, hi in zip(c["low_v"], c["high_v"], strict=True)
        )
        print(
            f"  {gate:5s} {_fractions(row['random_default'], gate):>30s}"
            f" {_fractions(row['random_free'], gate):>22s}"
            f" {row['ceiling_default'][gate]:>16.1f} {c['margin_na']:>13.1f}"
            f"  e{c['pair'][0]},e{c['pair'][1]}  {lv}  {c['pairs_at_20na']}"
        )


def virtual_setup_ranges(triple: tuple[int, ...]) -> np.ndarray:
    """Electrode ranges of the built-in simulated setup with ``triple`` as inputs.

    Parameters
    ----------
    triple : tuple of int
        The input electrodes.

    Returns
    -------
    numpy.ndarray
        ``(7, 2)`` volts: inputs -0.7 .. 0.3 V, controls -1.2 .. 0.6 V, as
        ``dnpu-bluesky train --task sphere`` sets up the virtual DNPU.
    """
    from dnpu_bluesky.config import default_sim_profile

    return np.asarray(default_sim_profile(inputs=tuple(triple)).limits_v, dtype=float)


def measure_sphere(
    model: DeviceModel, *, quick: bool = False, ranges: Ranges = None, min_spread_na: float = 0.0
) -> dict[str, Any]:
    """The sphere ceilings of one device: fixed and free levels on e1, e2, e4, best triple.

    Parameters
    ----------
    model : DeviceModel
        The device model.
    quick : bool
        Fewer starts and steps.
    ranges : numpy.ndarray or callable, optional
        Electrode ranges (:func:`sphere_ceiling`).
    min_spread_na : float
        Smallest span of the training currents that counts (:func:`sphere_ceiling`).

    Returns
    -------
    dict
        ``fixed``, ``free`` (:func:`sphere_ceiling` on :data:`SPHERE_INPUTS`) and
        ``best_triple`` (:func:`sphere_triples`), and ``wall_s``.
    """
    started = time.perf_counter()
    steps = (
        {"starts": 16, "iterations": 150, "polish_iterations": 200}
        if quick
        else {"starts": 64, "iterations": 300, "polish_iterations": 600}
    )
    common = {"ranges": ranges, "min_spread_na": min_spread_na, **steps}
    row = {
        "fixed": sphere_ceiling(model, SPHERE_INPUTS, free_levels=False, **common),
        "free": sphere_ceiling(model, SPHERE_INPUTS, **common),
        "best_triple": sphere_triples(
            model, starts_per_triple=2 if quick else 4, best_triples=2 if quick else 4, **common
        ),
    }
    row["wall_s"] = round(time.perf_counter() - started, 1)
    return row


def print_sphere_table(label: str, row: dict[str, Any]) -> None:
    """Print one device's sphere ceilings (:func:`measure_sphere`)."""
    print(f"\n{label} ({row['wall_s']:.1f} s)")
    print(
        f"  {'setting':24s} {'inputs':9s} {'train':>6s} {'test':>6s} {'I range (nA)':>18s}"
        "  levels (0 -> 1, V)"
    )
    names = {
        "fixed": "fixed levels, e1,e2,e4",
        "free": "free levels, e1,e2,e4",
        "best_triple": "free levels, best triple",
    }
    for key, name in names.items():
        c = row[key]
        lv = ", ".join(f"{a:+.2f}->{b:+.2f}" for a, b in c["levels_v"])
        span = f"{c['current_range_na'][0]:.2f}..{c['current_range_na'][1]:.2f}"
        flag = "" if c["meets_min_spread"] else "  (no setting spans the minimum)"
        print(
            f"  {name:24s} {'e' + ',e'.join(map(str, c['inputs'])):9s}"
            f" {100 * c['train_accuracy']:5.1f}% {100 * c['test_accuracy']:5.1f}%"
            f" {span:>18s}  {lv}{flag}"
        )
    per = sorted(row["best_triple"]["per_triple"].items(), key=lambda kv: -kv[1])[:5]
    print(
        "  best triples (train): " + ", ".join(f"e{k.replace(',', ',e')} {v:.3f}" for k, v in per)
    )


def sphere_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """``--sphere``: the sphere-classification ceilings of the surrogate and virtual DNPUs."""
    started = time.perf_counter()
    print(
        f"Sphere ceiling benchmark ({'quick' if args.quick else 'full'}): exact model, train "
        f"accuracy maximised, test at the train threshold; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    devices: dict[str, tuple[DeviceModel, Ranges]] = {}
    path = args.model if args.model is not None else DEFAULT_SURROGATE
    if args.no_model:
        pass
    elif path.is_file():
        from dnpu_bluesky.sim import load_brainspy_surrogate

        devices[path.stem] = (load_brainspy_surrogate(path), None)
    elif args.model is not None:
        parser.error(f"--model: no such file: {path}")
    else:
        print(f"  {path} is absent: measured-device surrogate skipped (virtual DNPUs only)")
    options = {} if args.max_current_na is None else {"max_current_na": args.max_current_na}
    seeds = [0] if args.seeds is None else args.seeds
    for seed in seeds:
        devices[f"virtual-{seed}"] = (VirtualDNPU(seed, **options), virtual_setup_ranges)
    rows = {}
    for label, (model, ranges) in devices.items():
        rows[label] = measure_sphere(
            model, quick=args.quick, ranges=ranges, min_spread_na=args.min_spread_na
        )
        print_sphere_table(label, rows[label])
    keys = ("inputs", "train_accuracy", "test_accuracy", "threshold_na", "levels_v", "controls_v")
    result = {
        "task": "sphere",
        "quick": args.quick,
        "virtual_options": options,
        "min_spread_na": args.min_spread_na,
        "devices": {
            label: {
                **{
                    name: {k: row[name][k] for k in (*keys, "current_range_na")}
                    for name in ("fixed", "free", "best_triple")
                },
                "per_triple_train": row["best_triple"]["per_triple"],
                "wall_s": row["wall_s"],
            }
            for label, row in rows.items()
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print("RESULT " + json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer draws and starts")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"brains-py surrogate to measure beside the virtual DNPUs (default "
        f"{DEFAULT_SURROGATE}, skipped when absent)",
    )
    parser.add_argument("--no-model", action="store_true", help="virtual DNPUs only: no surrogate")
    parser.add_argument(
        "--max-current-na",
        type=float,
        default=None,
        help="build the virtual DNPUs with this max_current_na instead of the default",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=None,
        help=f"virtual DNPU seeds (default {list(VIRTUAL_SEEDS)}; with --sphere 0)",
    )
    parser.add_argument(
        "--sphere",
        action="store_true",
        help="sphere-classification ceilings (fixed and free levels on e1,e2,e4, best triple) "
        "instead of the gates",
    )
    parser.add_argument(
        "--min-spread-na",
        type=float,
        default=0.0,
        help="--sphere: settings whose training currents span less than this (nA) do not count",
    )
    args = parser.parse_args(argv)
    if args.sphere:
        return sphere_main(args, parser)
    if args.seeds is None:
        args.seeds = list(VIRTUAL_SEEDS)
    config = QUICK if args.quick else FULL
    started = time.perf_counter()
    print(
        f"Ceiling benchmark ({'quick' if config.quick else 'full'}): {config.n_random} random "
        f"settings, {config.starts_per_pair} starts per gate and pair; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    options = {} if args.max_current_na is None else {"max_current_na": args.max_current_na}
    devices: dict[str, DeviceModel] = {
        f"virtual-{seed}": VirtualDNPU(seed, **options) for seed in args.seeds
    }
    path = args.model if args.model is not None else DEFAULT_SURROGATE
    if args.no_model:
        pass
    elif path.is_file():
        from dnpu_bluesky.sim import load_brainspy_surrogate

        devices[path.stem] = load_brainspy_surrogate(path)
    elif args.model is not None:
        parser.error(f"--model: no such file: {path}")
    else:
        print(f"  {path} is absent: measured-device surrogate skipped (virtual DNPUs only)")
    rows = {}
    for label, model in devices.items():
        rows[label] = measure(model, config)
        print_table(label, rows[label])
    result = {
        "quick": config.quick,
        "virtual_options": options,
        "devices": {
            label: {
                "scale": row["scale"],
                "random_default": row["random_default"]["fractions"],
                "random_free": row["random_free"]["fractions"],
                "ceiling_na": {g: c["margin_na"] for g, c in row["ceiling"].items()},
                "ceiling_pair": {g: c["pair"] for g, c in row["ceiling"].items()},
                "ceiling_levels_v": {
                    g: [c["low_v"], c["high_v"]] for g, c in row["ceiling"].items()
                },
                "ceiling_pairs_at_20na": {g: c["pairs_at_20na"] for g, c in row["ceiling"].items()},
                "ceiling_default_na": row["ceiling_default"],
            }
            for label, row in rows.items()
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
