"""brains-py surrogate models of measured DNPUs, evaluated with numpy.

A brains-py (brainspy-smg) surrogate is a fully connected network trained on random
voltage sweeps of one physical device. Its training script saves, with ``torch.save``, a
dict holding ``model_state_dict`` (an ``nn.Sequential`` called ``raw_model``: Linear layers
with an activation between them) and ``info``:

* ``info["model_structure"]``: ``D_in``, ``D_out``, ``hidden_sizes``, ``activation``;
* ``info["electrode_info"]["activation_electrodes"]["voltage_ranges"]``: ``[min, max]``
  per input electrode;
* ``info["electrode_info"]["output_electrodes"]["amplification"]``: the factor that turns the
  network's output into nA.

Older files keep the ranges as ``info["data_info"]["input_data"]["offset"]`` and
``["amplitude"]`` and the amplification under ``info["data_info"]["processor"]``; both
layouts are read. torch is needed only to read the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dnpu_bluesky._errors import MissingDependencyError
from dnpu_bluesky.sim.models import DeviceModel, evaluate_in_blocks

_BLOCK = 256
_KEY = re.compile(r"(?:^|\.)raw_model\.(\d+)\.(weight|bias)$")


def _relu(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum(z, 0.0), (z > 0).astype(float)


def _elu(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    neg = np.expm1(np.minimum(z, 0.0))
    return np.where(z > 0, z, neg), np.where(z > 0, 1.0, neg + 1.0)


def _tanh(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.tanh(z)
    return t, 1.0 - t * t


def _sigmoid(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = 0.5 * (1.0 + np.tanh(0.5 * z))
    return s, s * (1.0 - s)


def _hardtanh(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.clip(z, -1.0, 1.0), (np.abs(z) < 1.0).astype(float)


# Value and derivative of each activation brains-py offers; derivatives at kinks follow torch.
_ACTIVATIONS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "relu": _relu,
    "elu": _elu,
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "hard-tanh": _hardtanh,
}


class SurrogateModel(DeviceModel):
    """A brains-py surrogate network as a :class:`DeviceModel`, in numpy.

    Use :meth:`from_state_dict` or :func:`load_brainspy_surrogate` to build one.

    Args:
        weights: Weight matrices ``(out, in)`` of the Linear layers, in order.
        biases: Bias vectors of the same layers.
        voltage_ranges: ``(n_electrodes, 2)`` limits in volts.
        amplification: Factor from network output to nA.
        activation: One of ``relu``, ``elu``, ``tanh``, ``sigmoid``, ``hard-tanh``.
        source: Where the parameters came from (recorded by :meth:`describe`).
    """

    def __init__(
        self,
        weights: list[np.ndarray],
        biases: list[np.ndarray],
        voltage_ranges: np.ndarray,
        amplification: float,
        activation: str = "relu",
        source: str | None = None,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"unsupported activation {activation!r}; expected one of {sorted(_ACTIVATIONS)}"
            )
        self._weights = [np.array(w, dtype=float) for w in weights]
        self._biases = [np.array(b, dtype=float).reshape(-1) for b in biases]
        _check_layers(self._weights, self._biases)
        self.n_electrodes = self._weights[0].shape[1]
        ranges = np.array(voltage_ranges, dtype=float)
        if ranges.shape != (self.n_electrodes, 2) or np.any(ranges[:, 0] >= ranges[:, 1]):
            raise ValueError(
                f"voltage_ranges must be ({self.n_electrodes}, 2) with min < max, got "
                f"{ranges.tolist()}"
            )
        self.voltage_ranges = ranges
        self.voltage_ranges.flags.writeable = False
        self.amplification = float(amplification)
        self.activation = activation
        self.source = source
        self._act = _ACTIVATIONS[activation]
        digest = hashlib.sha256()
        for array in (*self._weights, *self._biases, ranges, np.array([self.amplification])):
            digest.update(np.ascontiguousarray(array).tobytes())
        self._hash = digest.hexdigest()

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Any], info: Mapping[str, Any]
    ) -> SurrogateModel:
        """Build from a brains-py state dict and its ``info`` dict.

        Args:
            state_dict: Maps ``raw_model.N.weight`` / ``raw_model.N.bias`` (any prefix before
                ``raw_model``) to arrays or tensors.
            info: The ``info`` dict saved with the model (see the module docstring).

        Returns:
            The surrogate.

        Raises:
            ValueError: naming the key or field that is missing or malformed.
        """
        weights, biases = _layers_from_state_dict(state_dict)
        ranges, amplification, activation = _read_info(info)
        return cls(weights, biases, ranges, amplification, activation)

    def current(self, volts: np.ndarray) -> np.ndarray:
        """Network output times amplification, in nA.

        Args:
            volts: Electrode voltages, shape ``(..., n_electrodes)``.

        Returns:
            Current, shape ``(...)``.
        """
        return self._evaluate(volts, jacobian=False)

    def jacobian(self, volts: np.ndarray) -> np.ndarray:
        """Exact ``dI/dV`` by back-propagation through the activation derivatives.

        Args:
            volts: Electrode voltages, shape ``(..., n_electrodes)``.

        Returns:
            nA/V, shape ``(..., n_electrodes)``.
        """
        return self._evaluate(volts, jacobian=True)

    def describe(self) -> dict[str, Any]:
        """Identity for provenance: kind, layer sizes, amplification, ranges, hash."""
        return {
            "kind": "brainspy-surrogate",
            "seed": None,
            "source": self.source,
            "layer_sizes": [self.n_electrodes] + [w.shape[0] for w in self._weights],
            "activation": self.activation,
            "amplification": self.amplification,
            "n_electrodes": self.n_electrodes,
            "voltage_ranges": self.voltage_ranges.tolist(),
            "parameter_hash": self._hash,
        }

    def __repr__(self) -> str:
        sizes = "-".join(str(s) for s in self.describe()["layer_sizes"])
        return f"SurrogateModel({sizes}, {self.activation}, hash={self._hash[:12]})"

    def _evaluate(self, volts: np.ndarray, jacobian: bool) -> np.ndarray:
        return evaluate_in_blocks(
            volts, self.n_electrodes, jacobian, _BLOCK, lambda rows: self._block(rows, jacobian)
        )

    def _block(self, x: np.ndarray, jacobian: bool) -> np.ndarray:
        slopes = []
        a = x
        for w, b in zip(self._weights[:-1], self._biases[:-1], strict=True):
            a, slope = self._act(a @ w.T + b)
            slopes.append(slope)
        if not jacobian:
            return (a @ self._weights[-1][0] + self._biases[-1][0]) * self.amplification
        grad = np.broadcast_to(self._weights[-1][0] * self.amplification, a.shape)
        for w, slope in zip(self._weights[-2::-1], slopes[::-1], strict=True):
            grad = (grad * slope) @ w
        return grad


def load_brainspy_surrogate(path: str | os.PathLike, *, trusted: bool = False) -> SurrogateModel:
    """Read a brains-py surrogate file (``torch.save`` output) into a :class:`SurrogateModel`.

    The file is first read with torch's restricted unpickler (tensors, plain containers and
    numpy arrays only). Files that hold other Python objects, such as a whole pickled
    ``nn.Module``, need ``trusted=True``, which runs the full unpickler: only do that for
    files from a source you trust.

    Args:
        path: The ``.pt`` file, e.g. brainspy-smg's ``training_data.pt``.
        trusted: Allow the full (code-executing) unpickler if the restricted one refuses.

    Returns:
        The surrogate; ``describe()["source"]`` names the file.

    Raises:
        dnpu_bluesky._errors.MissingDependencyError: (an ImportError) torch is not installed.
        ValueError: the file is not one ``torch.save`` wrote, or its layout is not a brains-py
            surrogate (naming what is missing).
    """
    torch = _import_torch()
    path = os.fspath(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as exc:
        # The restricted unpickler names the GLOBAL it refused; any other failure means the
        # bytes are not a pickle at all.
        if "GLOBAL" not in str(exc):
            raise ValueError(_not_a_torch_file(path, "not a pickle")) from exc
        if not trusted:
            raise ValueError(
                f"{path}: holds Python objects beyond tensors, containers and numpy arrays; "
                "load it with trusted=True only if you trust its source"
            ) from exc
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch's reader fails in many ways on other files
        first_line = (str(exc).strip().splitlines() or [""])[0][:120]
        raise ValueError(_not_a_torch_file(path, f"{type(exc).__name__}: {first_line}")) from exc
    state_dict, info = _split_saved(saved, path)
    weights, biases = _layers_from_state_dict(state_dict)
    ranges, amplification, activation = _read_info(info)
    return SurrogateModel(weights, biases, ranges, amplification, activation, source=path)


def _not_a_torch_file(path: str, why: str) -> str:
    return f"{path}: not a brains-py surrogate: torch cannot read it ({why})"


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "reading brains-py surrogate files needs torch: pip install dnpu-bluesky[surrogate]"
        ) from exc
    return torch


def _numpy_safe_globals() -> list[Any]:
    """Numpy reconstruction helpers that brains-py info dicts need (arrays, scalars)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray

    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        func = getattr(multiarray, name)
        # Files written under numpy 1.x name the old module path.
        allowed += [func, (func, f"numpy.core.multiarray.{name}")]
    allowed += [
        cls
        for cls in vars(np.dtypes).values()
        if isinstance(cls, type) and issubclass(cls, np.dtype)
    ]
    return allowed


def _split_saved(saved: Any, path: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """Find the state dict and info dict in whatever ``torch.save`` stored."""
    if isinstance(saved, Mapping):
        if "info" not in saved:
            raise ValueError(f"{path}: no 'info' entry (keys: {sorted(map(str, saved))})")
        if "model_state_dict" in saved:
            return saved["model_state_dict"], saved["info"]
        # Older brains-py stored the info inside the state dict itself.
        return {k: v for k, v in saved.items() if k != "info"}, saved["info"]
    if callable(getattr(saved, "state_dict", None)):
        info = getattr(saved, "info", None)
        if info is None:
            raise ValueError(f"{path}: the saved module has no 'info' attribute")
        return saved.state_dict(), info
    raise ValueError(f"{path}: expected a dict with 'model_state_dict' and 'info'")


def _layers_from_state_dict(
    state_dict: Mapping[str, Any],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    layers: dict[int, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        match = _KEY.search(str(key))
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = _to_numpy(value)
    if not layers:
        raise ValueError(
            "state dict has no 'raw_model.N.weight' / 'raw_model.N.bias' entries "
            f"(keys: {sorted(map(str, state_dict))[:10]})"
        )
    weights, biases = [], []
    for index in sorted(layers):
        for part in ("weight", "bias"):
            if part not in layers[index]:
                raise ValueError(f"state dict lacks 'raw_model.{index}.{part}'")
        weights.append(layers[index]["weight"])
        biases.append(layers[index]["bias"])
    _check_layers(weights, biases)
    return weights, biases


def _check_layers(weights: list[np.ndarray], biases: list[np.ndarray]) -> None:
    if not weights or len(weights) != len(biases):
        raise ValueError("need one bias per weight matrix and at least one layer")
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"layer {i}: weight {w.shape} and bias {b.shape} do not match")
        if i and w.shape[1] != weights[i - 1].shape[0]:
            raise ValueError(
                f"layer {i} takes {w.shape[1]} inputs but layer {i - 1} gives "
                f"{weights[i - 1].shape[0]}"
            )
    if weights[-1].shape[0] != 1:
        raise ValueError(f"the last layer must have one output, got {weights[-1].shape[0]}")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; no torch import needed to convert it
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=float)


def _dig(info: Mapping[str, Any], *path: str) -> Any:
    node: Any = info
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _read_info(info: Mapping[str, Any]) -> tuple[np.ndarray, float, str]:
    """Voltage ranges, amplification and activation from either brains-py info layout."""
    if not isinstance(info, Mapping):
        raise ValueError(f"info must be a mapping, got {type(info).__name__}")
    electrode_info = _dig(info, "electrode_info")
    if electrode_info is None and "activation_electrodes" in info:
        electrode_info = info  # the electrode_info dict passed on its own
    ranges = _dig(electrode_info or {}, "activation_electrodes", "voltage_ranges")
    if ranges is None:
        offset = _dig(info, "data_info", "input_data", "offset")
        amplitude = _dig(info, "data_info", "input_data", "amplitude")
        if offset is not None and amplitude is not None:
            offset, amplitude = _to_numpy(offset), _to_numpy(amplitude)
            ranges = np.stack([offset - amplitude, offset + amplitude], axis=1)
    if ranges is None:
        raise ValueError(
            "info has no voltage ranges: expected "
            "info['electrode_info']['activation_electrodes']['voltage_ranges'] or "
            "info['data_info']['input_data']['offset'] and ['amplitude']"
        )
    amplification = _dig(electrode_info or {}, "output_electrodes", "amplification")
    for path in (("data_info", "processor", "driver"), ("data_info", "processor")):
        if amplification is None:
            amplification = _dig(info, *path, "amplification")
    if amplification is None:
        raise ValueError(
            "info has no amplification: expected "
            "info['electrode_info']['output_electrodes']['amplification'] or "
            "info['data_info']['processor']['driver']['amplification']"
        )
    amp = _to_numpy(amplification).reshape(-1)
    if amp.size != 1:
        raise ValueError(f"expected one amplification (one output), got {amp.tolist()}")
    activation = _dig(info, "model_structure", "activation") or "relu"
    return _to_numpy(ranges), float(amp[0]), str(activation)
