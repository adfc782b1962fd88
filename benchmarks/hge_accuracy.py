"""HGE accuracy on the virtual DNPU (issue 2).

Run ``python -m benchmarks.hge_accuracy`` (200 operating points, a few seconds to a minute)
or ``python -m benchmarks.hge_accuracy --quick`` (40 points, well under 60 s). The run
prints a table and ends with one line ``RESULT {json}``; ``docs/benchmarks.md`` explains
every figure.

Setting (the package defaults): controls on electrodes 0, 1, 2, 5, 6; inputs 3 and 4 held
at random values inside their ranges; window T = 0.1 s at 10 kS/s; tone amplitude a = 20 mV;
tones from ``plan_frequencies(5, 0.1, 10000, band_hz=2000, min_frequency_hz=150)`` (the DNPU
device's default); 10 ms settling, 5 ms ramps. Streams are built with ``hge_segments`` and
``synthesize_waveform``, played on ``SimulatedBackend`` (default ``Electronics``), converted from
volts to nA with the signed amplifier gain, demodulated over the waveform's windows with the
rectangular lock-in and turned into gradients by ``estimate_gradients`` (projection
estimator) with a ``PhaseCalibration.fit`` of each device on its own calibration points.

Figures:

* ``crb_ratio``: variance of the parallel estimate of each gradient component divided by the
  Cramer-Rao bound ``S(f_j) / (a^2 T)``, S the input-referred one-sided current-noise PSD
  (``Electronics.noise_psd``). The variance is the spread of 4 repeated measurements at each
  point (sample variance, ddof = 1, averaged over the points), so the deterministic curvature
  bias cancels; a noisy-minus-noiseless estimate is printed as a cross-check. Headline: the
  worst of the five components of the default (1/T) plan.
* ``stderr_ratio`` (not a headline): the gradient stderr ``estimate_gradients`` reports
  (from the lock-in's noise floor; rms over points and repeats) divided by the measured
  spread of the repeats, per tone; 1 when the reported uncertainty is honest. Also printed:
  the reported stderr^2 over the CRB, which has no sampling error from the repeats (the
  variance itself is within a few percent of the CRB, see ``crb_ratio``).
* ``cosine_median``: median cosine similarity of the parallel estimate with the exact
  Jacobian (``VirtualDNPU.jacobian``) over the controls.
* ``parallel_vs_sequential_r2``: squared Pearson correlation of parallel against sequential
  estimates, all components pooled, at tone spacing 1/T and 4/T.
* ``crosstalk``: noiseless bias in control j's channel when j carries no tone and a neighbour
  k is driven at 10 a, relative to the rms exact gradient at that point; median over points
  of the worst ordered pair (k, j), default plan (the 4/T plan is reported alongside).
* ``sim_speedup``: device seconds / wall seconds of ``SimulatedBackend.play_and_record`` on a 1 s,
  7-electrode HGE stream at 10 kS/s (median of repeated calls).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnpu_bluesky.hge import (
    GradientEstimate,
    LockInResult,
    PhaseCalibration,
    Segment,
    demodulate,
    estimate_gradients,
    hge_segments,
    plan_frequencies,
    synthesize_waveform,
)
from dnpu_bluesky.sim import Electronics, SimulatedBackend, VirtualDNPU

CONTROLS = np.array([0, 1, 2, 5, 6])
INPUTS = np.array([3, 4])
N_ELECTRODES = 7
WINDOW_S = 0.1
SAMPLE_RATE = 10_000.0
AMPLITUDE_V = 0.02
SETTLE_S = 0.01
BAND_HZ = 2000.0
MIN_FREQUENCY_HZ = 150.0
SPACINGS = (1, 4)  # tone spacing in bins of 1/T
SPACING_KEYS = {1: "1/T", 4: "4/T"}
CROSSTALK_FACTOR = 10.0  # the neighbour's amplitude, in units of a
CALIBRATION_POINTS = 8  # per device and plan, separate from the test points
SEGMENTS_PER_STREAM = 100  # longer lists are played as several streams
TARGETS = {"crb_ratio": 1.5, "crosstalk": 1e-3, "sim_speedup": 100.0}

#: The noiseless chain for bias measurements: no white or 1/f noise (white = 0 switches both
#: off) and a 32-bit ADC, so that quantisation does not masquerade as bias. Bandwidth, gain,
#: inversion and electrode capacitances are the defaults.
NOISELESS = Electronics(white_psd_na2_per_hz=0.0, adc_bits=32)


@dataclass(frozen=True)
class Config:
    """Sizes of one run."""

    quick: bool
    device_seeds: tuple[int, ...]
    points_per_seed: int
    crosstalk_points_per_seed: int
    repeats: int
    speed_repeats: int


QUICK = Config(
    quick=True,
    device_seeds=(0, 1, 2, 3),
    points_per_seed=10,
    crosstalk_points_per_seed=10,
    repeats=4,
    speed_repeats=30,
)
FULL = Config(
    quick=False,
    device_seeds=(0, 1, 2, 3),
    points_per_seed=50,
    crosstalk_points_per_seed=50,
    repeats=4,
    speed_repeats=200,
)


# -- measurement helpers -------------------------------------------------------------------


def tone_frequencies(spacing_bins: int) -> np.ndarray:
    """Per-electrode tone frequencies (0 on the inputs) of the default plan at a spacing."""
    plan = plan_frequencies(
        CONTROLS.size,
        WINDOW_S,
        SAMPLE_RATE,
        band_hz=BAND_HZ,
        min_frequency_hz=MIN_FREQUENCY_HZ,
        spacing_bins=spacing_bins,
    )
    freqs = np.zeros(N_ELECTRODES)
    freqs[CONTROLS] = plan.frequencies
    return freqs


def control_amplitudes(amplitude_v: float = AMPLITUDE_V) -> np.ndarray:
    amps = np.zeros(N_ELECTRODES)
    amps[CONTROLS] = amplitude_v
    return amps


def random_points(
    rng: np.random.Generator, ranges: np.ndarray, n: int, control_margin_v: float
) -> np.ndarray:
    """Uniform operating points; controls keep ``control_margin_v`` from their limits."""
    margin = np.zeros(N_ELECTRODES)
    margin[CONTROLS] = control_margin_v
    return rng.uniform(ranges[:, 0] + margin, ranges[:, 1] - margin, (n, N_ELECTRODES))


def signed_gain(electronics: Electronics) -> float:
    return -electronics.gain_v_per_na if electronics.inverting else electronics.gain_v_per_na


def record(daq: SimulatedBackend, segments: list[Segment], freqs: np.ndarray) -> LockInResult:
    """Play ``segments`` (in streams of at most SEGMENTS_PER_STREAM) and demodulate them."""
    tones = freqs[freqs > 0]
    parts = []
    for start in range(0, len(segments), SEGMENTS_PER_STREAM):
        chunk = segments[start : start + SEGMENTS_PER_STREAM]
        wf = synthesize_waveform(chunk, freqs, SAMPLE_RATE, WINDOW_S, settle_s=SETTLE_S)
        acq = daq.play_and_record(wf.voltages, SAMPLE_RATE)
        current_na = acq.ai_volts / signed_gain(daq.electronics)  # inverting amplifier
        parts.append(demodulate(current_na, tones, SAMPLE_RATE, windows=wf.windows))
    return LockInResult(
        frequencies=parts[0].frequencies,
        x=np.concatenate([p.x for p in parts]),
        y=np.concatenate([p.y for p in parts]),
        stderr=np.concatenate([p.stderr for p in parts]),
        dc=np.concatenate([p.dc for p in parts]),
    )


def measure(
    daq: SimulatedBackend,
    points: np.ndarray,
    freqs: np.ndarray,
    mode: str,
    calibration: PhaseCalibration,
) -> GradientEstimate:
    segments = hge_segments(points, control_amplitudes(), mode)
    return estimate_gradients(record(daq, segments, freqs), segments, calibration)


def projection(lockin: LockInResult, calibration: PhaseCalibration, amplitude_v: float):
    """Per-window projection estimate, scaled with a nominal amplitude (also for idle tones)."""
    lag = calibration.lag_rad[None, :]
    inphase = lockin.x * np.cos(lag) + lockin.y * np.sin(lag)
    return 2.0 * inphase / (calibration.gain[None, :] * amplitude_v)


def chain_response(electronics: Electronics, tones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact lag (rad) and gain of the simulated amplifier at the tones, in nA -> nA units."""
    h = electronics.transfer(tones, SAMPLE_RATE) / signed_gain(electronics)
    return np.angle(h), np.abs(h)


def window_voltages(segment: Segment, freqs: np.ndarray) -> np.ndarray:
    """The electrode voltages inside a segment's analysis window, as synthesised."""
    t = np.arange(round(WINDOW_S * SAMPLE_RATE)) / SAMPLE_RATE
    return segment.dc[None, :] + segment.amplitudes[None, :] * np.sin(
        2 * np.pi * freqs[None, :] * t[:, None]
    )


def rms(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    return np.sqrt(np.mean(np.square(values), axis=axis))


# -- the measurements ----------------------------------------------------------------------


def accuracy_runs(config: Config) -> dict[str, Any]:
    """Parallel (repeated), sequential, noiseless and crosstalk runs at both spacings."""
    data: dict[int, dict[str, list[np.ndarray]]] = {s: {} for s in SPACINGS}
    calibrations: list[dict[str, Any]] = []
    crosstalk: dict[int, dict[str, list[np.ndarray]]] = {s: {} for s in SPACINGS}
    reps = config.repeats
    for seed in config.device_seeds:
        model = VirtualDNPU(seed=seed)
        noisy = SimulatedBackend(model, Electronics(), seed=1000 + seed)
        clean = SimulatedBackend(model, NOISELESS, seed=2000 + seed)
        rng = np.random.default_rng([seed, 2])
        ranges = np.asarray(model.voltage_ranges)
        points = random_points(rng, ranges, config.points_per_seed, AMPLITUDE_V)
        cal_points = random_points(rng, ranges, CALIBRATION_POINTS, AMPLITUDE_V)
        xt_points = random_points(
            rng, ranges, config.crosstalk_points_per_seed, CROSSTALK_FACTOR * AMPLITUDE_V
        )
        exact = model.jacobian(points)[:, CONTROLS]
        for spacing in SPACINGS:
            freqs = tone_frequencies(spacing)
            tones = freqs[CONTROLS]
            cal_segments = hge_segments(cal_points, control_amplitudes(), "parallel")
            calibration = PhaseCalibration.fit([record(noisy, cal_segments, freqs)])
            true_lag, true_gain = chain_response(Electronics(), tones)
            calibrations.append(
                {
                    "seed": seed,
                    "spacing": spacing,
                    "cutoff_hz": calibration.cutoff_hz,
                    "lag_error_deg": np.rad2deg(calibration.lag_rad - true_lag),
                    "gain_error": calibration.gain / true_gain - 1.0,
                }
            )
            # The same points played `repeats` times, each pass one stream after the other.
            par = [measure(noisy, points, freqs, "parallel", calibration) for _ in range(reps)]
            seq = measure(noisy, points, freqs, "sequential", calibration)
            par_clean = measure(clean, points, freqs, "parallel", calibration)
            seq_clean = measure(clean, points, freqs, "sequential", calibration)
            for key, value in (
                ("exact", exact),
                ("par", np.stack([p.gradient for p in par], axis=1)),  # (n, repeats, 5)
                ("par_stderr", np.stack([p.stderr for p in par], axis=1)),
                ("seq", seq.gradient),
                ("par_clean", par_clean.gradient),
                ("seq_clean", seq_clean.gradient),
            ):
                data[spacing].setdefault(key, []).append(np.asarray(value))
            for key, value in crosstalk_run(model, clean, xt_points, freqs, calibration):
                crosstalk[spacing].setdefault(key, []).append(value)
    return {
        "data": {s: {k: np.concatenate(v) for k, v in d.items()} for s, d in data.items()},
        "calibrations": calibrations,
        "crosstalk": {
            s: {k: np.concatenate(v) for k, v in d.items()} for s, d in crosstalk.items()
        },
    }


def crosstalk_run(
    model: VirtualDNPU,
    clean: SimulatedBackend,
    points: np.ndarray,
    freqs: np.ndarray,
    calibration: PhaseCalibration,
) -> list[tuple[str, np.ndarray]]:
    """Noiseless readings with one control idle and/or one neighbour driven at 10 a.

    Per point 31 windows: all tones at a (base); control j idle (5); control k at 10 a (5);
    k at 10 a with j idle (20 ordered pairs). Readings of every tone are scaled with the
    nominal amplitude a, so an idle tone's reading is the bias it would add to a gradient.
    """
    n_c = CONTROLS.size
    segments: list[Segment] = []
    layout: list[tuple[int | None, int | None]] = []  # (idle j, driven k), control indices
    for p, dc in enumerate(points):
        for idle, driven in (
            [(None, None)]
            + [(j, None) for j in range(n_c)]
            + [(None, k) for k in range(n_c)]
            + [(j, k) for k in range(n_c) for j in range(n_c) if j != k]
        ):
            amps = control_amplitudes()
            if idle is not None:
                amps[CONTROLS[idle]] = 0.0
            if driven is not None:
                amps[CONTROLS[driven]] = CROSSTALK_FACTOR * AMPLITUDE_V
            segments.append(Segment(dc=dc, amplitudes=amps, case=p))
            layout.append((idle, driven))
    readings = projection(record(clean, segments, freqs), calibration, AMPLITUDE_V)
    per_point = len(layout) // len(points)
    readings = readings.reshape(len(points), per_point, n_c)
    layout = layout[:per_point]
    scale = rms(model.jacobian(points)[:, CONTROLS], axis=1)  # (n_points,)

    base = readings[:, 0, :]
    idle = np.full((len(points), n_c), np.nan)
    idle_driven = np.full((len(points), n_c, n_c), np.nan)  # [point, k, j]
    shift = np.full((len(points), n_c, n_c), np.nan)  # j's reading change when k goes to 10 a
    for i, (j, k) in enumerate(layout):
        if j is not None and k is None:
            idle[:, j] = readings[:, i, j]
        elif j is not None and k is not None:
            idle_driven[:, k, j] = readings[:, i, j]
        elif k is not None:
            shift[:, k, :] = readings[:, i, :] - base
    # What the device itself predicts for the shift: a small tone on j reads the time average
    # of dI/dV_j over the window, so the shift is the change of that average when k's
    # excursion grows (curvature of the device, all orders in k's amplitude).
    mean_jac = np.empty((len(points), 1 + n_c, n_c))
    for p in range(len(points)):
        for slot, i in enumerate([0, *range(1 + n_c, 1 + 2 * n_c)]):
            volts = window_voltages(segments[p * per_point + i], freqs)
            mean_jac[p, slot] = model.jacobian(volts).mean(axis=0)[CONTROLS]
    predicted = mean_jac[:, 1:, :] - mean_jac[:, :1, :]
    for k in range(n_c):
        shift[:, k, k] = np.nan
        predicted[:, k, k] = np.nan
    return [
        ("scale", scale),
        ("idle", np.abs(idle) / scale[:, None]),
        ("idle_driven", np.abs(idle_driven) / scale[:, None, None]),
        ("shift", shift / scale[:, None, None]),
        ("shift_residual", (shift - predicted) / scale[:, None, None]),
    ]


def speed_run(config: Config) -> dict[str, float]:
    """Wall time of play_and_record on a 1 s, 7-electrode stream at 10 kS/s."""
    n_samples = round(SAMPLE_RATE)  # 1 s
    model = VirtualDNPU(seed=0)
    daq = SimulatedBackend(model, Electronics(), seed=3)
    rng = np.random.default_rng(5)
    freqs = tone_frequencies(1)
    per_segment = round(SAMPLE_RATE * (WINDOW_S + SETTLE_S + 0.005))
    n_segments = (n_samples - 100) // per_segment
    points = random_points(rng, np.asarray(model.voltage_ranges), n_segments, AMPLITUDE_V)
    wf = synthesize_waveform(
        hge_segments(points, control_amplitudes()), freqs, SAMPLE_RATE, WINDOW_S, settle_s=SETTLE_S
    )
    stream = np.zeros((n_samples, N_ELECTRODES))
    stream[: wf.voltages.shape[0]] = wf.voltages  # HGE segments, then 0 V to the full second

    def timed(call) -> float:
        times = []
        for _ in range(3):  # warm-up
            call()
        for _ in range(config.speed_repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    device_s = daq.play_and_record(stream, SAMPLE_RATE).device_seconds
    wall = timed(lambda: daq.play_and_record(stream, SAMPLE_RATE))
    current = model.current(stream)
    model_s = timed(lambda: model.current(stream))
    electronics = Electronics()
    noise_rng = np.random.default_rng(6)
    state: dict[str, Any] = {}
    chain_s = timed(
        lambda: electronics.output_volts(current, stream, SAMPLE_RATE, noise_rng, state=state)
    )
    return {
        "device_s": float(device_s),
        "wall_s": wall,
        "speedup": float(device_s / wall),
        "model_s": model_s,
        "electronics_s": chain_s,
    }


# -- analysis ------------------------------------------------------------------------------


def analyse_plan(d: dict[str, np.ndarray], tones: np.ndarray) -> dict[str, Any]:
    """Noise, bias, cosine and parallel-vs-sequential figures of one tone plan."""
    crb = Electronics().noise_psd(tones) / (AMPLITUDE_V**2 * WINDOW_S)  # (nA/V)^2
    par_all = d["par"]  # (n_points, repeats, n_tones)
    n, reps = par_all.shape[:2]
    par1 = par_all[:, 0]
    # Spread of repeated measurements at each point: the deterministic part cancels.
    var_repeat = np.mean(np.var(par_all, axis=1, ddof=1), axis=0)
    dof = n * (reps - 1)
    var_clean = np.mean((par_all - d["par_clean"][:, None, :]) ** 2, axis=(0, 1))
    bias = d["par_clean"] - d["exact"]
    mse = np.mean((par_all - d["exact"][:, None, :]) ** 2, axis=(0, 1))

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    cos_noisy = cosine(par1, d["exact"])
    cos_clean = cosine(d["par_clean"], d["exact"])
    par, seq = par1.ravel(), d["seq"].ravel()
    r2_pearson = float(np.corrcoef(par, seq)[0, 1] ** 2)
    r2_identity = float(1 - np.sum((par - seq) ** 2) / np.sum((seq - seq.mean()) ** 2))
    det_diff = d["par_clean"] - d["seq_clean"]
    scale = rms(d["exact"], axis=1)
    return {
        "n_points": n,
        "repeats": reps,
        "tones_hz": tones,
        "crb": crb,
        "crb_ratio": var_repeat / crb,
        "crb_ratio_pooled": float(np.mean(var_repeat / crb)),
        "crb_ratio_rel_uncertainty": float(np.sqrt(2 / dof)),
        "crb_ratio_vs_noiseless": var_clean / crb,
        # Reported stderr (rms over points and repeats) / measured spread of the repeats.
        "stderr_ratio": np.sqrt(np.mean(d["par_stderr"] ** 2, axis=(0, 1)) / var_repeat),
        "stderr_ratio_rel_uncertainty": float(np.sqrt(1 / (2 * dof))),
        # The same reported variance against the bound: no sampling error from the repeats.
        "stderr2_over_crb": np.mean(d["par_stderr"] ** 2, axis=(0, 1)) / crb,
        "bias_rms": rms(bias, axis=0),
        "bias_rel_median": float(np.median(rms(bias, axis=1) / scale)),
        "mse_over_crb": mse / crb,
        "cos_median": float(np.median(cos_noisy)),
        "cos_p05": float(np.percentile(cos_noisy, 5)),
        "cos_min": float(np.min(cos_noisy)),
        "cos_clean_median": float(np.median(cos_clean)),
        "cos_clean_min": float(np.min(cos_clean)),
        "r2_pearson": r2_pearson,
        "r2_identity": r2_identity,
        "par_seq_det_rms": rms(det_diff, axis=0),
        "par_seq_det_rel_median": float(np.median(rms(det_diff, axis=1) / scale)),
        "grad_scale_median": float(np.median(scale)),
        "grad_scale_p05": float(np.percentile(scale, 5)),
    }


def analyse_crosstalk(xt: dict[str, np.ndarray], tones: np.ndarray) -> dict[str, Any]:
    """Summaries of the noiseless crosstalk run of one tone plan (all relative to scale)."""
    n = xt["scale"].size
    worst_pair = np.nanmax(xt["idle_driven"].reshape(n, -1), axis=1)
    idle_worst = np.nanmax(xt["idle"], axis=1)
    shift_worst = np.nanmax(np.abs(xt["shift"]).reshape(n, -1), axis=1)
    residual_worst = np.nanmax(np.abs(xt["shift_residual"]).reshape(n, -1), axis=1)
    # 95th percentile of each ordered pair [k, j]; the diagonal (k = j) has no reading.
    pair_p95 = np.percentile(np.nan_to_num(xt["idle_driven"], nan=-1.0), 95, axis=0)
    k, j = np.unravel_index(int(np.argmax(pair_p95)), pair_p95.shape)
    return {
        "n_points": n,
        "headline": float(np.median(worst_pair)),
        "p95": float(np.percentile(worst_pair, 95)),
        "max": float(np.max(worst_pair)),
        "idle_median": float(np.median(idle_worst)),
        "idle_max": float(np.max(idle_worst)),
        "shift_median": float(np.median(shift_worst)),
        "shift_max": float(np.max(shift_worst)),
        "residual_median": float(np.median(residual_worst)),
        "residual_max": float(np.max(residual_worst)),
        "worst_pair": (int(k), int(j)),
        "worst_pair_p95": float(pair_p95[k, j]),
        "worst_pair_products": landing_products(tones, target=int(j), driven=int(k)),
    }


def landing_products(tones: np.ndarray, target: int, driven: int, max_order: int = 5):
    """IM products of order 4..max_order that land on tone ``target`` without involving it
    and involve the tone ``driven`` at least twice (the plan only excludes order <= 3)."""
    bins = np.rint(tones * WINDOW_S).astype(int)
    span = np.arange(-max_order, max_order + 1)
    grid = np.stack(np.meshgrid(*[span] * bins.size, indexing="ij"), axis=-1)
    grid = grid.reshape(-1, bins.size)
    order = np.abs(grid).sum(axis=1)
    keep = (
        (order >= 4)
        & (order <= max_order)
        & (grid[:, target] == 0)
        & (np.abs(grid[:, driven]) >= 2)
        & (grid @ bins == bins[target])
    )
    texts = []
    for m in grid[keep]:
        terms = sorted((i for i in range(bins.size) if m[i]), key=lambda i: -m[i])
        text = ""
        for i in terms:
            sign = "-" if m[i] < 0 else "+"
            text += f" {sign} " if text else ("-" if m[i] < 0 else "")
            text += (f"{abs(m[i])}*" if abs(m[i]) > 1 else "") + f"{tones[i]:g}"
        texts.append(text)
    return texts


def fmt(values: np.ndarray, spec: str = ".3f") -> str:
    return " ".join(f"{v:{spec}}" for v in np.atleast_1d(values))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 points instead of 200")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    started = time.perf_counter()

    speed = speed_run(config)  # first, on an otherwise idle process
    runs = accuracy_runs(config)
    tones = {s: tone_frequencies(s)[CONTROLS] for s in SPACINGS}
    plans = {s: analyse_plan(runs["data"][s], tones[s]) for s in SPACINGS}
    crosstalks = {s: analyse_crosstalk(runs["crosstalk"][s], tones[s]) for s in SPACINGS}
    elapsed = time.perf_counter() - started

    default = SPACINGS[0]
    main_plan = plans[default]
    print(
        f"HGE accuracy benchmark ({'quick' if config.quick else 'full'}): "
        f"{main_plan['n_points']} operating points on device seeds "
        f"{list(config.device_seeds)}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}"
    )
    print(
        f"T = {WINDOW_S} s, {SAMPLE_RATE:g} S/s, a = {AMPLITUDE_V * 1e3:g} mV, settle "
        f"{SETTLE_S * 1e3:g} ms; controls {CONTROLS.tolist()}, inputs {INPUTS.tolist()}; "
        f"{config.repeats} repeats per point"
    )
    print()
    for s in SPACINGS:
        p = plans[s]
        print(f"== tone spacing {SPACING_KEYS[s]}: tones {fmt(p['tones_hz'], '.0f')} Hz ==")
        print(f"  CRB S/(a^2 T) per tone [(nA/V)^2]    {fmt(p['crb'])}")
        print(
            f"  var / CRB (spread of repeats)         {fmt(p['crb_ratio'])}   (+-"
            f"{p['crb_ratio_rel_uncertainty'] * 100:.0f} % each; mean {p['crb_ratio_pooled']:.3f})"
        )
        print(f"  var / CRB (noisy - noiseless)         {fmt(p['crb_ratio_vs_noiseless'])}")
        print(
            f"  reported stderr / measured spread     {fmt(p['stderr_ratio'])}   (+-"
            f"{p['stderr_ratio_rel_uncertainty'] * 100:.0f} % each; mean "
            f"{np.mean(p['stderr_ratio']):.3f})"
        )
        print(f"  reported stderr^2 / CRB               {fmt(p['stderr2_over_crb'])}")
        print(f"  curvature bias rms [nA/V]             {fmt(p['bias_rms'])}")
        print(f"  total MSE vs exact / CRB              {fmt(p['mse_over_crb'])}")
        print(
            f"  cosine(parallel, exact): median {p['cos_median']:.6f}, 5th pct "
            f"{p['cos_p05']:.6f}, min {p['cos_min']:.4f}; noiseless median "
            f"{p['cos_clean_median']:.6f}, min {p['cos_clean_min']:.4f}"
        )
        print(
            f"  parallel vs sequential: r^2 {p['r2_pearson']:.6f} (1:1 line R^2 "
            f"{p['r2_identity']:.6f}); noiseless difference rms {fmt(p['par_seq_det_rms'])}"
            f" nA/V, median {p['par_seq_det_rel_median']:.1e} of the gradient scale"
        )
        print(
            f"  gradient scale (rms over controls): median {p['grad_scale_median']:.1f} nA/V, "
            f"5th pct {p['grad_scale_p05']:.1f} nA/V; bias/scale median "
            f"{p['bias_rel_median']:.1e}"
        )
        print()
    print(f"== calibration (PhaseCalibration.fit, {CALIBRATION_POINTS} points per device) ==")
    for s in SPACINGS:
        cals = [c for c in runs["calibrations"] if c["spacing"] == s]
        lag = np.max([np.max(np.abs(c["lag_error_deg"])) for c in cals])
        gain = np.max([np.max(np.abs(c["gain_error"])) for c in cals])
        cut = ", ".join(
            "per-tone" if c["cutoff_hz"] is None else f"{c['cutoff_hz']:.0f}" for c in cals
        )
        print(
            f"  {SPACING_KEYS[s]}: fitted cutoff [Hz] {cut}; vs transfer(): worst lag error "
            f"{lag:.3f} deg, worst gain error {gain:.1e}"
        )
    print()
    for s in SPACINGS:
        x = crosstalks[s]
        k, j = x["worst_pair"]
        print(
            f"== crosstalk, spacing {SPACING_KEYS[s]} (noiseless, {x['n_points']} points, "
            f"neighbour at {CROSSTALK_FACTOR:g} a; relative to the rms exact gradient) =="
        )
        print(
            f"  idle channel, others at a:            median(worst j) {x['idle_median']:.1e}, "
            f"max {x['idle_max']:.1e}"
        )
        print(
            f"  idle channel, neighbour at 10 a:      median(worst pair) {x['headline']:.1e}, "
            f"95th pct {x['p95']:.1e}, max {x['max']:.1e}"
        )
        products = ", ".join(x["worst_pair_products"]) or "none of order 4-5"
        print(
            f"    worst pair: {tones[s][k]:g} Hz driven -> {tones[s][j]:g} Hz idle (95th pct "
            f"{x['worst_pair_p95']:.1e}); products landing there: {products}"
        )
        print(
            f"  active channel shift, k at 10 a:      median(worst pair) {x['shift_median']:.1e}"
            f", max {x['shift_max']:.1e}  (device curvature, not crosstalk)"
        )
        print(
            f"  shift minus time-averaged Jacobian:   median(worst pair) "
            f"{x['residual_median']:.1e}, max {x['residual_max']:.1e}"
        )
        print()
    print("== simulator speed (1 s, 7 electrodes, 10 kS/s) ==")
    print(
        f"  play_and_record {speed['wall_s'] * 1e3:.2f} ms (median of {config.speed_repeats}) "
        f"for {speed['device_s']:.3f} s of device time: {speed['speedup']:.0f}x real time"
    )
    print(
        f"  of which model.current {speed['model_s'] * 1e3:.2f} ms, electronics.output_volts "
        f"{speed['electronics_s'] * 1e3:.2f} ms"
    )
    print(f"\nwall time of the whole benchmark: {elapsed:.1f} s")

    crb_ratio = float(np.max(main_plan["crb_ratio"]))
    crosstalk = crosstalks[default]["headline"]
    result = {
        "crb_ratio": crb_ratio,
        "cosine_median": main_plan["cos_median"],
        "parallel_vs_sequential_r2": {SPACING_KEYS[s]: plans[s]["r2_pearson"] for s in SPACINGS},
        "crosstalk": crosstalk,
        "sim_speedup": speed["speedup"],
        "quick": config.quick,
        "n_points": main_plan["n_points"],
        "repeats": config.repeats,
        "device_seeds": list(config.device_seeds),
        "crb_ratio_per_tone": [float(v) for v in main_plan["crb_ratio"]],
        "crb_ratio_mean": main_plan["crb_ratio_pooled"],
        "crb_ratio_4T_per_tone": [float(v) for v in plans[4]["crb_ratio"]],
        "stderr_ratio_per_tone": [float(v) for v in main_plan["stderr_ratio"]],
        "stderr_ratio_4T_per_tone": [float(v) for v in plans[4]["stderr_ratio"]],
        "crb_variance_method": "spread of repeated measurements at each point (ddof=1)",
        "calibration": f"PhaseCalibration.fit, {CALIBRATION_POINTS} points per device and plan",
        "parallel_vs_sequential_r2_identity": {
            SPACING_KEYS[s]: plans[s]["r2_identity"] for s in SPACINGS
        },
        "crosstalk_p95": crosstalks[default]["p95"],
        "crosstalk_max": crosstalks[default]["max"],
        "crosstalk_4T": crosstalks[4]["headline"],
        "crosstalk_4T_p95": crosstalks[4]["p95"],
        "crosstalk_4T_max": crosstalks[4]["max"],
        "wall_s": elapsed,
        "targets_met": {
            "crb_ratio": crb_ratio <= TARGETS["crb_ratio"],
            "crosstalk": crosstalk < TARGETS["crosstalk"],
            "sim_speedup": speed["speedup"] >= TARGETS["sim_speedup"],
        },
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
