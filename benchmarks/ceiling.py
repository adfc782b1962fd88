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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dnpu_bluesky.sim import DeviceModel, VirtualDNPU
from dnpu_bluesky.tasks import GATES, BooleanGate

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
        "--seeds", type=int, nargs="*", default=list(VIRTUAL_SEEDS), help="virtual DNPU seeds"
    )
    args = parser.parse_args(argv)
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
