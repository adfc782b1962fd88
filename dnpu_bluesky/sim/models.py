"""Device models: noiseless maps from electrode voltages to output current.

:class:`VirtualDNPU` is the built-in model, a small physics-inspired caricature of a dopant
network (see ``docs/virtual-dnpu.md``). Anything with the attributes and methods of
:class:`DeviceModel` can stand in for it, for instance a brains-py surrogate
(:class:`dnpu_bluesky.sim.SurrogateModel`).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Electrode limits in volts, modelled on the ranges used for boron-doped DNPUs: most
#: electrodes -1.2 .. +0.6 V, two (here 3 and 4, the usual input pair) tighter.
DEFAULT_VOLTAGE_RANGES = np.array(
    [[-1.2, 0.6], [-1.2, 0.6], [-1.2, 0.6], [-0.7, 0.3], [-0.7, 0.3], [-1.2, 0.6], [-1.2, 0.6]]
)

# Evaluation works in blocks of samples: temporaries stay small enough for the allocator to
# reuse them, instead of fresh page-faulting memory for every large intermediate array.
_BLOCK = 512


@runtime_checkable
class DeviceModel(Protocol):
    """Anything that maps electrode voltages to an output current in nA.

    Attributes
    ----------
    n_electrodes : int
        Number of voltage electrodes (7 for a DNPU).
    voltage_ranges : numpy.ndarray
        ``(n_electrodes, 2)`` array of ``[min, max]`` volts per electrode.
    """

    n_electrodes: int
    voltage_ranges: np.ndarray

    def current(self, volts: np.ndarray) -> np.ndarray:
        """Return the noiseless output current, ``(..., n_electrodes)`` volts -> ``(...)`` nA.

        Parameters
        ----------
        volts : numpy.ndarray
            Electrode voltages, shape ``(..., n_electrodes)``.

        Returns
        -------
        numpy.ndarray
            Current in nA, shape ``(...)``.
        """
        ...

    def jacobian(self, volts: np.ndarray) -> np.ndarray:
        """Return the exact ``dI/dV``, ``(..., n_electrodes)`` -> ``(..., n_electrodes)`` nA/V.

        Parameters
        ----------
        volts : numpy.ndarray
            Electrode voltages, shape ``(..., n_electrodes)``.

        Returns
        -------
        numpy.ndarray
            Derivatives in nA/V, shape ``(..., n_electrodes)``.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Describe the model's identity, JSON-serialisable: kind, seed, parameter hash, ranges."""
        ...


class VirtualDNPU(DeviceModel):
    """A seeded, physics-inspired virtual DNPU with an exact analytic Jacobian.

    Dopant sites sit at random positions in a disc with eight electrodes on its rim (seven
    voltage electrodes and the grounded output). Each electrode shifts every site energy
    capacitively, in proportion to a lever arm that falls off with distance. A site conducts
    best when its level is aligned with the Fermi level: a thermally broadened resonance
    ``sech^2(E / 2w)`` on top of a small co-tunnelling floor. Current flows from each
    electrode to a collector node by a few hopping paths through one or two sites (sites in
    series add their resistances); the collector reaches the output through a finite access
    conductance, so parallel paths share it and saturate. The drive of a path grows like
    ``v0 sinh(V / v0)``, the field-enhanced hopping of strongly biased networks.

    Different seeds give different devices. The conductance scale is set so that 99 % of
    random operating points inside the voltage ranges give ``|I|`` below ``max_current_na``.

    Parameters
    ----------
    seed : int
        Selects the device.
    n_sites : int
        Number of dopant sites.
    paths_per_electrode : int
        Hopping paths from each voltage electrode to the output.
    voltage_ranges : numpy.ndarray, optional
        ``(7, 2)`` electrode limits; default :data:`DEFAULT_VOLTAGE_RANGES`.
    max_current_na : float
        99th percentile of ``|I|`` over random operating points.
    """

    n_electrodes: int = 7

    def __init__(
        self,
        seed: int = 0,
        *,
        n_sites: int = 16,
        paths_per_electrode: int = 3,
        voltage_ranges: np.ndarray | None = None,
        max_current_na: float = 100.0,
    ) -> None:
        ranges = DEFAULT_VOLTAGE_RANGES if voltage_ranges is None else voltage_ranges
        ranges = np.array(ranges, dtype=float)
        if ranges.shape != (self.n_electrodes, 2) or np.any(ranges[:, 0] >= ranges[:, 1]):
            raise ValueError(f"voltage_ranges must be (7, 2) with min < max, got {ranges}")
        if n_sites < 2 or paths_per_electrode < 1 or max_current_na <= 0:
            raise ValueError("need n_sites >= 2, paths_per_electrode >= 1, max_current_na > 0")
        self.seed = int(seed)
        self.n_sites = int(n_sites)
        self.paths_per_electrode = int(paths_per_electrode)
        self.max_current_na = float(max_current_na)
        self.voltage_ranges = ranges
        self.voltage_ranges.flags.writeable = False
        self._build(np.random.default_rng(self.seed))

    def current(self, volts: np.ndarray) -> np.ndarray:
        """Return the noiseless output current in nA.

        Parameters
        ----------
        volts : numpy.ndarray
            Electrode voltages, shape ``(..., 7)``.

        Returns
        -------
        numpy.ndarray
            Current, shape ``(...)``.
        """
        return self._evaluate(volts, jacobian=False)

    def jacobian(self, volts: np.ndarray) -> np.ndarray:
        """Exact derivative of :meth:`current` with respect to each electrode voltage.

        Parameters
        ----------
        volts : numpy.ndarray
            Electrode voltages, shape ``(..., 7)``.

        Returns
        -------
        numpy.ndarray
            ``dI/dV_j`` in nA/V, shape ``(..., 7)``.
        """
        return self._evaluate(volts, jacobian=True)

    def describe(self) -> dict[str, Any]:
        """Identity for provenance: kind, seed, construction arguments and parameter hash."""
        return {
            "kind": "VirtualDNPU",
            "seed": self.seed,
            "n_sites": self.n_sites,
            "paths_per_electrode": self.paths_per_electrode,
            "max_current_na": self.max_current_na,
            "n_electrodes": self.n_electrodes,
            "voltage_ranges": self.voltage_ranges.tolist(),
            "parameter_hash": self._hash,
        }

    def __repr__(self) -> str:
        return f"VirtualDNPU(seed={self.seed}, hash={self._hash[:12]})"

    # -- construction -------------------------------------------------------------------

    def _build(self, rng: np.random.Generator) -> None:
        n_e = self.n_electrodes
        # Eight rim electrodes, evenly spaced up to a small seeded jitter; index 7 is the output.
        angles = 2 * np.pi * (np.arange(n_e + 1) + rng.uniform(-0.1, 0.1, n_e + 1)) / (n_e + 1)
        electrodes = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        radius = 0.85 * np.sqrt(rng.uniform(0, 1, self.n_sites))
        theta = rng.uniform(0, 2 * np.pi, self.n_sites)
        sites = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)

        # Lever arms: a softened inverse-square weight per electrode, normalised against all
        # electrodes plus the substrate, times the fraction of the potential that reaches the
        # dopant layer. Every electrode couples to every site, strongest to its neighbours.
        dist2 = ((sites[:, None, :] - electrodes[None, :, :]) ** 2).sum(axis=-1)
        weight = 1.0 / (dist2 + 0.05)
        lever = 0.6 * weight / (weight.sum(axis=1, keepdims=True) + 2.0)
        self._lever = lever[:, :n_e]  # (sites, electrodes)

        # Offsets put each level's resonance somewhere inside, or a little beyond, the voltage
        # box, so most sites can be tuned through resonance by the electrodes.
        middle = self.voltage_ranges.mean(axis=1)
        half = np.diff(self.voltage_ranges, axis=1)[:, 0] / 2
        reach = self._lever @ half
        self._offset = -(self._lever @ middle) + reach * rng.uniform(-1.2, 1.2, self.n_sites)
        self._width = rng.uniform(0.02, 0.05, self.n_sites)
        self._floor = 0.02
        self._v0 = 0.5

        output = electrodes[n_e]
        incidence, path_electrode, prefactor = [], [], []
        for e in range(n_e):
            to_e = np.linalg.norm(sites - electrodes[e], axis=1)
            to_out = np.linalg.norm(sites - output, axis=1)
            detour = to_e + to_out
            # Hopping favours sites close to the straight line from electrode to output.
            p = np.exp(-(detour - detour.min()) / 0.3)
            p /= p.sum()
            for _ in range(self.paths_per_electrode):
                n_hops = 2 if rng.uniform() < 2 / 3 else 1
                chosen = rng.choice(self.n_sites, size=n_hops, replace=False, p=p)
                chosen = chosen[np.argsort(to_e[chosen])]
                length = to_e[chosen[0]] + to_out[chosen[-1]]
                if n_hops == 2:
                    length += np.linalg.norm(sites[chosen[0]] - sites[chosen[1]])
                row = np.zeros(self.n_sites)
                row[chosen] = 1.0
                incidence.append(row)
                path_electrode.append(e)
                prefactor.append(np.exp(-length / 0.5) * rng.lognormal(0.0, 0.5))
        self._incidence = np.array(incidence)  # (paths, sites)
        self._path_electrode = np.array(path_electrode)
        self._path_onehot = np.eye(n_e)[self._path_electrode]  # (paths, electrodes)
        self._g = np.array(prefactor)[:, None]
        # Scaled so that lever_x @ V + offset_x = E / 2w, the argument of the lineshape.
        self._lever_x = self._lever / (2 * self._width[:, None])
        self._offset_x = (self._offset / (2 * self._width))[:, None]

        # The collector's access conductance is set to the median total path conductance, so
        # the saturation it causes matters at some operating points and not at others.
        sample = rng.uniform(self.voltage_ranges[:, 0], self.voltage_ranges[:, 1], (4000, n_e))
        self._g_collector = np.inf
        total_g = np.concatenate(
            [self._block(sample[i : i + _BLOCK].T, "total") for i in range(0, 4000, _BLOCK)]
        )
        self._g_collector = float(np.median(total_g))
        scale = self.max_current_na / np.percentile(np.abs(self.current(sample)), 99)
        self._g = self._g * scale
        self._g_collector *= scale

        digest = hashlib.sha256()
        for part in (
            self._lever,
            self._offset,
            self._width,
            self._incidence,
            self._path_electrode.astype(float),
            self._g,
            np.array([self._g_collector, self._floor, self._v0]),
            self.voltage_ranges,
        ):
            digest.update(np.ascontiguousarray(part, dtype=float).tobytes())
        self._hash = digest.hexdigest()

    # -- evaluation ---------------------------------------------------------------------

    def _evaluate(self, volts: np.ndarray, jacobian: bool) -> np.ndarray:
        kind = "jacobian" if jacobian else "current"
        return evaluate_in_blocks(
            volts, self.n_electrodes, jacobian, _BLOCK, lambda rows: self._block(rows.T, kind)
        )

    def _block(self, vt: np.ndarray, kind: str) -> np.ndarray:
        """Compute the current (or total conductance, or Jacobian) for voltages ``vt`` (7, n)."""
        # x = E / 2w with site energies E = offset + lever @ V
        x = self._lever_x @ vt
        x += self._offset_x
        t = np.tanh(x, out=x)
        inv_l = t * t
        np.subtract(1.0 + self._floor, inv_l, out=inv_l)  # sech^2 + floor
        np.reciprocal(inv_l, out=inv_l)
        resistance = self._incidence @ inv_l  # (paths, n), sites in series
        g_path = np.divide(self._g, resistance, out=resistance)
        # Paths of one electrode share its drive: sum their conductances first.
        g_electrode = self._path_onehot.T @ g_path  # (electrodes, n)
        g_total = g_electrode.sum(axis=0)
        if kind == "total":
            return g_total
        drive = vt / self._v0
        np.sinh(drive, out=drive)
        drive *= self._v0
        i_raw = np.einsum("en,en->n", g_electrode, drive)
        share = g_total
        share += self._g_collector
        np.divide(self._g_collector, share, out=share)
        current = i_raw * share
        if kind == "current":
            return current

        # I = share * sum_p G_p F_p with share = gc / (gc + sum_p G_p):
        # dI/dG_p = share * F_p - I_raw * share^2 / gc,  dG_p/d(1/L_s) = -G_p^2 / g_p.
        d_i_d_g = (share * drive - (i_raw * share * share / self._g_collector))[
            self._path_electrode
        ]
        d_i_d_invl = -(self._incidence.T @ (g_path * g_path / self._g * d_i_d_g))
        # d(1/L)/dx = -(1/L^2) dL/dx,  dL/dx = -2 sech^2(x) tanh(x)
        d_i_d_x = d_i_d_invl * inv_l * inv_l * (2.0 * (1.0 - t * t) * t)
        jac = d_i_d_x.T @ self._lever_x
        jac += (share * g_electrode * np.cosh(vt / self._v0)).T
        return jac


def evaluate_in_blocks(
    volts: np.ndarray,
    n_electrodes: int,
    jacobian: bool,
    block_size: int,
    block: Callable[[np.ndarray], np.ndarray],
    workers: int = 1,
) -> np.ndarray:
    """Evaluate ``block`` on rows of ``volts`` in blocks that fit in cache.

    A row equal to the one before it is not evaluated again: its value is copied. Streams
    hold voltages for many samples (the 0 V head and tail, plateaus without tones), and a
    noiseless model gives the same answer for the same voltages.

    Parameters
    ----------
    volts : numpy.ndarray
        Electrode voltages, shape ``(..., n_electrodes)``.
    n_electrodes : int
        Number of electrodes the model takes.
    jacobian : bool
        Whether ``block`` returns a Jacobian row per voltage row (else one current).
    block_size : int
        Rows per call of ``block``.
    block : callable
        Maps ``(rows, n_electrodes)`` float64 voltages to ``(rows,)`` currents or
        ``(rows, n_electrodes)`` Jacobians. With ``workers > 1`` it is called from several
        threads at once, so it must be thread-safe (and release the GIL to gain anything).
    workers : int
        Threads that share the blocks, each taking one contiguous run of them (the calling
        thread is one of them).

    Returns
    -------
    numpy.ndarray
        The current (shape ``volts.shape[:-1]``) or the Jacobian (``volts.shape``), float64.

    Raises
    ------
    ValueError
        ``volts`` does not end in an axis of ``n_electrodes``.
    """
    v = np.asarray(volts, dtype=float)
    if v.ndim == 0 or v.shape[-1] != n_electrodes:
        raise ValueError(f"volts must have shape (..., {n_electrodes}), got {v.shape}")
    flat = v.reshape(-1, n_electrodes)
    starts = _run_starts(flat)
    rows = flat if starts is None else flat[starts]
    n = rows.shape[0]
    out = np.empty((n, n_electrodes) if jacobian else n)

    def run(first: int, stop: int) -> None:
        for start in range(first, stop, block_size):
            end = min(start + block_size, stop)
            out[start:end] = block(rows[start:end])

    n_blocks = -(-n // block_size)
    shares = min(max(1, workers), n_blocks)
    if shares > 1:
        # Contiguous runs of whole blocks, one per thread: the threads meet once, at the end.
        bounds = [min(n, block_size * (n_blocks * k // shares)) for k in range(shares + 1)]
        pool = _thread_pool(shares - 1)
        pending = [pool.submit(run, a, b) for a, b in itertools.pairwise(bounds[1:])]
        run(bounds[0], bounds[1])
        for future in pending:
            future.result()
    else:
        run(0, n)
    if starts is not None:
        out = np.repeat(out, np.diff(starts, append=flat.shape[0]), axis=0)
    return out.reshape(v.shape if jacobian else v.shape[:-1])


_pool_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _thread_pool(size: int) -> ThreadPoolExecutor:
    """Return a lasting pool of ``size`` helper threads, made on first use and shared."""
    with _pool_lock:
        if size not in _pools:
            _pools[size] = ThreadPoolExecutor(size, thread_name_prefix="dnpu-model")
        return _pools[size]


def _run_starts(flat: np.ndarray) -> np.ndarray | None:
    """Return the indices of the rows that differ from the row before them (and of row 0).

    None when too few rows repeat for skipping them to pay off.
    """
    if flat.shape[0] < 2:
        return None
    repeats = np.all(flat[1:] == flat[:-1], axis=1)
    # Gathering and repeating cost about as much as evaluating a few percent of the rows.
    if np.count_nonzero(repeats) < flat.shape[0] // 16:
        return None
    return np.concatenate(([0], 1 + np.flatnonzero(~repeats)))
