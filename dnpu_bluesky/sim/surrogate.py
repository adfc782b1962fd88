"""brains-py surrogate models of measured DNPUs, evaluated with numpy.

A brains-py (brainspy-smg) surrogate is a fully connected network trained on random
voltage sweeps of one physical device: Linear layers with an activation between them, one
output. Two file layouts are read, both ``torch.save`` output:

* since 2021: a dict holding ``model_state_dict`` (the network's state dict, layers
  ``raw_model.N.weight`` / ``raw_model.N.bias``) and ``info`` with

  - ``info["model_structure"]``: ``D_in``, ``D_out``, ``hidden_sizes``, ``activation``;
  - ``info["electrode_info"]["activation_electrodes"]["voltage_ranges"]``: ``[min, max]``
    per input electrode;
  - ``info["electrode_info"]["output_electrodes"]["amplification"]``: the factor that turns
    the network's output into nA;

* 2020: the state dict itself (often a legacy, non-zip pickle), layers ``model.N.weight`` /
  ``model.N.bias``, with an ``info`` entry inside it holding the ranges as
  ``info["data_info"]["input_data"]["offset"]`` +- ``["amplitude"]``, the amplification
  under ``info["data_info"]["processor"]`` (or its ``["driver"]``) and the structure under
  ``info["smg_configs"]["processor"]["torch_model_dict"]``.

The activation defaults to ReLU when the file does not name one. torch is needed only to
read the file; the network is evaluated with numpy (see :class:`SurrogateModel` for speed
and precision).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from dnpu_bluesky.sim._surrogate_file import (
    HEAD_BYTES,
    check_layers,
    holds_global,
    import_torch,
    is_plain_pickle,
    layers_from_state_dict,
    not_a_torch_file,
    numpy_safe_globals,
    read_info,
    refused_global,
    split_saved,
    unreadable,
)
from dnpu_bluesky.sim.models import DeviceModel, evaluate_in_blocks

#: Rows per block: big enough that the matrix products run at full speed, small enough that a
#: block's activations stay in cache (512 to 2048 all measure alike).
_BLOCK = 1024


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


#: Threads that share one evaluation, each with a contiguous run of blocks. Measured on two
#: cores: a 5511-sample stream took 5 ms on one thread and 2.7 ms on two with both cores
#: free; with the cores busy elsewhere, 13 ms against 5 ms (median). More than two were not
#: measured.
EVALUATION_THREADS = min(2, _usable_cpus())
#: BLAS threads while a surrogate is evaluated. One: with OpenBLAS's own two threads the
#: stream took 15 ms with both cores free but a median of 30 ms (worst 430 ms) with the
#: cores busy elsewhere, since its threads wait on each other at every matrix product.
BLAS_THREADS = 1
PRECISIONS = ("float32", "float64")
#: float32 currents are within this fraction of the batch's largest |current| of float64 ones.
FLOAT32_RTOL = 1e-5
# brainspy-smg names the Sequential ``raw_model`` (2021 on) or ``model`` (2020).


def _relu(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum(z, 0.0), (z > 0).astype(z.dtype)


def _elu(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    neg = np.expm1(np.minimum(z, 0.0))
    return np.where(z > 0, z, neg), np.where(z > 0, 1.0, neg + 1.0).astype(z.dtype)


def _tanh(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.tanh(z)
    return t, 1.0 - t * t


def _sigmoid(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = 0.5 * (1.0 + np.tanh(0.5 * z))
    return s, s * (1.0 - s)


def _hardtanh(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.clip(z, -1.0, 1.0), (np.abs(z) < 1.0).astype(z.dtype)


# Value and derivative of each activation brains-py offers; derivatives at kinks follow torch.
_ACTIVATIONS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "relu": _relu,
    "elu": _elu,
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "hard-tanh": _hardtanh,
}


def _relu_value(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0, out=z)


def _tanh_value(z: np.ndarray) -> np.ndarray:
    return np.tanh(z, out=z)


def _hardtanh_value(z: np.ndarray) -> np.ndarray:
    return np.clip(z, -1.0, 1.0, out=z)


def _elu_value(z: np.ndarray) -> np.ndarray:
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0.0)))


def _sigmoid_value(z: np.ndarray) -> np.ndarray:
    z *= 0.5
    np.tanh(z, out=z)
    z += 1.0
    z *= 0.5
    return z


# The value alone, in place where numpy allows, for currents (no Jacobian asked for).
_VALUES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": _relu_value,
    "elu": _elu_value,
    "tanh": _tanh_value,
    "sigmoid": _sigmoid_value,
    "hard-tanh": _hardtanh_value,
}


class SurrogateModel(DeviceModel):
    """A brains-py surrogate network as a :class:`DeviceModel`, in numpy.

    Use :meth:`from_state_dict` or :func:`load_brainspy_surrogate` to build one.

    :meth:`current` evaluates the hidden layers in ``precision``. The first layer always
    takes the voltages in float64 (float32 would round a volt to 6e-8 V before the network
    sees it). In float32 the network runs about twice as fast, and its currents stay within
    :data:`FLOAT32_RTOL` times the largest ``|current|`` of the batch of a float64
    evaluation (measured: at most 5e-6 on random networks of each activation, 4e-7 on a
    measured device's surrogate, that is 6e-5 nA at currents up to 160 nA; one ADC step of
    the default electronics is 0.03 nA). :meth:`jacobian` is always float64: near a kink
    (ReLU at 0) float32 rounding can flip a unit's slope, which moves dI/dV by that unit's
    whole share (measured: up to 11 % on random networks).

    Rows equal to the row before them are evaluated once, and the blocks of one call are
    shared by :data:`EVALUATION_THREADS` threads, each running BLAS single-threaded
    (:data:`BLAS_THREADS`).

    Parameters
    ----------
    weights : list of numpy.ndarray
        Weight matrices ``(out, in)`` of the Linear layers, in order.
    biases : list of numpy.ndarray
        Bias vectors of the same layers.
    voltage_ranges : numpy.ndarray
        ``(n_electrodes, 2)`` limits in volts.
    amplification : float
        Factor from network output to nA.
    activation : str
        One of ``relu``, ``elu``, ``tanh``, ``sigmoid``, ``hard-tanh``.
    source : str, optional
        Where the parameters came from (recorded by :meth:`describe`).
    precision : str
        ``"float32"`` (default) or ``"float64"``: the hidden layers of :meth:`current`.

    Raises
    ------
    ValueError
        An unknown activation or precision, layers that do not chain to one output, ranges
        that are not ``(n_electrodes, 2)`` with min < max, or a weight, bias, range or
        amplification that is NaN or infinite.
    """

    def __init__(
        self,
        weights: list[np.ndarray],
        biases: list[np.ndarray],
        voltage_ranges: np.ndarray,
        amplification: float,
        activation: str = "relu",
        source: str | None = None,
        *,
        precision: str = "float32",
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"unsupported activation {activation!r}; expected one of {sorted(_ACTIVATIONS)}"
            )
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self._weights = [np.array(w, dtype=float) for w in weights]
        self._biases = [np.array(b, dtype=float).reshape(-1) for b in biases]
        check_layers(self._weights, self._biases)
        self.n_electrodes = self._weights[0].shape[1]
        ranges = np.array(voltage_ranges, dtype=float)
        if (
            ranges.shape != (self.n_electrodes, 2)
            or not np.isfinite(ranges).all()
            or np.any(ranges[:, 0] >= ranges[:, 1])
        ):
            raise ValueError(
                f"voltage_ranges must be ({self.n_electrodes}, 2) with finite min < max, got "
                f"{ranges.tolist()}"
            )
        self.voltage_ranges = ranges
        if not np.isfinite(amplification):
            raise ValueError(f"the amplification is {amplification}, not a finite number")
        for i, (w, b) in enumerate(zip(self._weights, self._biases, strict=True)):
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"layer {i} holds NaN or infinite weights or biases")
        self.voltage_ranges.flags.writeable = False
        self.amplification = float(amplification)
        self.activation = activation
        self.source = source
        self.precision = precision
        self._act = _ACTIVATIONS[activation]
        self._value = _VALUES[activation]
        dtype = np.dtype(precision)
        # Laid out for ``rows @ matrix``, with the amplification folded into the last layer.
        self._first = (np.ascontiguousarray(self._weights[0].T), self._biases[0])
        self._hidden = [
            (np.ascontiguousarray(w.T, dtype=dtype), b.astype(dtype))
            for w, b in zip(self._weights[1:-1], self._biases[1:-1], strict=True)
        ]
        self._out_w = (self._weights[-1][0] * self.amplification).astype(dtype)
        self._out_b = float(self._biases[-1][0] * self.amplification)
        digest = hashlib.sha256()
        for array in (*self._weights, *self._biases, ranges, np.array([self.amplification])):
            digest.update(np.ascontiguousarray(array).tobytes())
        self._hash = digest.hexdigest()

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, Any],
        info: Mapping[str, Any],
        *,
        precision: str = "float32",
    ) -> SurrogateModel:
        """Build from a brains-py state dict and its ``info`` dict.

        Parameters
        ----------
        state_dict : Mapping
            Maps ``raw_model.N.weight`` / ``raw_model.N.bias`` (brainspy-smg since 2021,
            any prefix before ``raw_model``) or ``model.N.weight`` / ``model.N.bias``
            (brainspy-smg 2020) to arrays or tensors.
        info : Mapping
            The ``info`` dict saved with the model (see the module docstring).
        precision : str
            ``"float32"`` or ``"float64"``, see :class:`SurrogateModel`.

        Returns
        -------
        SurrogateModel
            The surrogate.

        Raises
        ------
        ValueError
            Naming the key or field that is missing or malformed.
        """
        weights, biases = layers_from_state_dict(state_dict)
        ranges, amplification, activation = read_info(info)
        return cls(weights, biases, ranges, amplification, activation, precision=precision)

    def current(self, volts: np.ndarray) -> np.ndarray:
        """Network output times amplification, in nA.

        Parameters
        ----------
        volts : numpy.ndarray
            Electrode voltages, shape ``(..., n_electrodes)``.

        Returns
        -------
        numpy.ndarray
            Current, shape ``(...)``, float64.

        Raises
        ------
        ValueError
            ``volts`` does not end in an axis of ``n_electrodes``.
        """
        return self._evaluate(volts, jacobian=False)

    def jacobian(self, volts: np.ndarray) -> np.ndarray:
        """Exact ``dI/dV`` by back-propagation through the activation derivatives.

        Parameters
        ----------
        volts : numpy.ndarray
            Electrode voltages, shape ``(..., n_electrodes)``.

        Returns
        -------
        numpy.ndarray
            nA/V, shape ``(..., n_electrodes)``, float64.

        Raises
        ------
        ValueError
            ``volts`` does not end in an axis of ``n_electrodes``.
        """
        return self._evaluate(volts, jacobian=True)

    def describe(self) -> dict[str, Any]:
        """Identity for provenance.

        Returns
        -------
        dict
            Kind, source, layer sizes, activation, amplification, ranges, precision and a
            hash of the parameters; JSON-serialisable.
        """
        return {
            "kind": "brainspy-surrogate",
            "seed": None,
            "source": self.source,
            "layer_sizes": [self.n_electrodes] + [w.shape[0] for w in self._weights],
            "activation": self.activation,
            "amplification": self.amplification,
            "n_electrodes": self.n_electrodes,
            "voltage_ranges": self.voltage_ranges.tolist(),
            "precision": self.precision,
            "parameter_hash": self._hash,
        }

    def __repr__(self) -> str:
        sizes = "-".join(str(s) for s in self.describe()["layer_sizes"])
        return f"SurrogateModel({sizes}, {self.activation}, hash={self._hash[:12]})"

    def _evaluate(self, volts: np.ndarray, jacobian: bool) -> np.ndarray:
        block = self._jacobian_block if jacobian else self._current_block
        with _blas_threads(BLAS_THREADS):
            return evaluate_in_blocks(
                volts, self.n_electrodes, jacobian, _BLOCK, block, EVALUATION_THREADS
            )

    def _first_layer(self, x: np.ndarray) -> np.ndarray:
        w, b = self._first
        z = x @ w
        z += b
        return z.astype(self.precision, copy=False)

    def _current_block(self, x: np.ndarray) -> np.ndarray:
        if len(self._weights) == 1:
            return x @ self._weights[0][0] * self.amplification + self._out_b
        a = self._value(self._first_layer(x))
        for w, b in self._hidden:
            z = a @ w
            z += b
            a = self._value(z)
        return a @ self._out_w + self._out_b

    def _jacobian_block(self, x: np.ndarray) -> np.ndarray:
        # Always float64: near a kink (ReLU at 0) float32 rounding can flip a unit's slope
        # and move dI/dV by that unit's whole share; a current only moves by the rounding.
        slopes = []
        a = x
        for w, b in zip(self._weights[:-1], self._biases[:-1], strict=True):
            a, slope = self._act(a @ w.T + b)
            slopes.append(slope)
        grad = np.broadcast_to(self._weights[-1][0] * self.amplification, (len(x), a.shape[1]))
        for w, slope in zip(self._weights[-2::-1], slopes[::-1], strict=True):
            grad = (grad * slope) @ w
        return grad


_blas_lock = threading.Lock()
_blas_state: dict[str, Any] = {"users": 0, "limit": None, "controller": None}


@contextlib.contextmanager
def _blas_threads(n_threads: int) -> Iterator[None]:
    """Limit the BLAS thread pool while any thread of the process evaluates a surrogate.

    The limit is process-wide, so it is set by the first evaluation to start and lifted
    by the last to end (counted under a lock), not by each in turn.
    """
    with _blas_lock:
        if _blas_state["users"] == 0:
            if _blas_state["controller"] is None:
                _blas_state["controller"] = ThreadpoolController()
            _blas_state["limit"] = _blas_state["controller"].limit(
                limits=n_threads, user_api="blas"
            )
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0:
                _blas_state["limit"].restore_original_limits()
                _blas_state["limit"] = None


def load_brainspy_surrogate(
    path: str | os.PathLike,
    *,
    trusted: bool = False,
    precision: str = "float32",
) -> SurrogateModel:
    """Read a brains-py surrogate file (``torch.save`` output) into a :class:`SurrogateModel`.

    Both layouts brains-py has written are read (see the module docstring). The file is
    first read with torch's restricted unpickler (tensors, plain containers and numpy arrays
    only). Files that hold other Python objects, such as a whole pickled ``nn.Module``, need
    ``trusted=True``, which runs the full unpickler: only do that for files from a source
    you trust.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.pt`` file, e.g. brainspy-smg's ``training_data.pt``.
    trusted : bool
        Allow the full (code-executing) unpickler if the restricted one refuses.
    precision : str
        ``"float32"`` or ``"float64"``, see :class:`SurrogateModel`.

    Returns
    -------
    SurrogateModel
        The surrogate; ``describe()["source"]`` names the file.

    Raises
    ------
    dnpu_bluesky._errors.MissingDependencyError
        (an ImportError) torch is not installed.
    OSError
        The file cannot be opened.
    ValueError
        In one line starting with the path: the file is not one ``torch.save`` wrote (empty,
        cut short, a plain pickle, another format), or its layout is not a brains-py
        surrogate (naming what is missing).
    """
    torch = import_torch()
    path = os.fspath(path)
    with open(path, "rb") as file:
        head = file.read(HEAD_BYTES)
    if not head:
        raise ValueError(not_a_torch_file(path, "empty file"))
    if is_plain_pickle(path, head):  # parsed, not run: torch would only warn, then fail
        raise ValueError(not_a_torch_file(path, "a plain pickle, not written by torch.save"))
    try:
        # torch warns about what it reads in damaged files; the error says what matters.
        with warnings.catch_warnings(), torch.serialization.safe_globals(numpy_safe_globals()):
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = refused_global(str(exc))
        if refused is None:
            raise ValueError(not_a_torch_file(path, unreadable(path, head, exc))) from exc
        if not holds_global(path, refused):
            why = f"cut short or damaged: it ends inside the name {refused!r}"
            raise ValueError(not_a_torch_file(path, why)) from exc
        if not trusted:
            raise ValueError(
                f"{path}: holds Python objects beyond tensors, containers and numpy arrays "
                f"({refused}); load it with trusted=True only if you trust its source"
            ) from exc
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as full_exc:
            why = unreadable(path, head, full_exc)
            raise ValueError(not_a_torch_file(path, why)) from full_exc
    except Exception as exc:  # torch's reader fails in many ways on other files
        raise ValueError(not_a_torch_file(path, unreadable(path, head, exc))) from exc
    try:
        state_dict, info = split_saved(saved)
        weights, biases = layers_from_state_dict(state_dict)
        ranges, amplification, activation = read_info(info)
        return SurrogateModel(
            weights, biases, ranges, amplification, activation, source=path, precision=precision
        )
    except ValueError as exc:
        raise ValueError(f"{path}: not a brains-py surrogate: {exc}") from exc
