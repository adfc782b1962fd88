"""Reading brains-py surrogate files: what torch wrote, and the layouts brains-py used.

Internal to :mod:`dnpu_bluesky.sim.surrogate`, which builds the model from what these
helpers read. torch is imported only to read a file.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from dnpu_bluesky._errors import MissingDependencyError

_KEY = re.compile(r"(?:^|\.)(raw_model|model)\.(\d+)\.(weight|bias)$")

LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
HEAD_BYTES = 32
_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def not_a_torch_file(path: str, why: str) -> str:
    return f"{path}: not a brains-py surrogate: torch cannot read it ({why})"


def unreadable(path: str, head: bytes, exc: BaseException) -> str:
    """Why torch could not read the file, from its first bytes and the reader's error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
    # torch's restricted unpickler wraps the reason in a paragraph of advice.
    marked = [i for i, line in enumerate(lines) if "WeightsUnpickler error:" in line]
    if marked:
        i = marked[0]
        reason = lines[i].split("error:", 1)[1].strip() or lines[min(i + 1, len(lines) - 1)]
    else:
        reason = lines[0]
    what = f"{type(exc).__name__}: {reason[:120]}" if reason else type(exc).__name__
    if b"PK\x03\x04".startswith(head[:4]):  # torch's zip format, another zip, or their start
        if not zipfile.is_zipfile(path):
            return "cut short or damaged: the zip archive has no directory"
        return what
    if LEGACY_MAGIC in head:
        return f"cut short or damaged: {what}"
    return "not a pickle"


def is_plain_pickle(path: str, head: bytes) -> bool:
    """Tell whether the file is one whole pickle (any protocol) that torch did not write.

    The opcodes are only parsed (:func:`pickletools.genops`), never executed. torch's legacy
    format starts with a pickled magic number and its zip format with ``PK``: neither is one.
    """
    if head.startswith(b"PK") or LEGACY_MAGIC in head:
        return False
    with open(path, "rb") as file:  # read opcode by opcode: a huge file is not read whole
        try:
            deque(pickletools.genops(file), maxlen=0)
        except Exception:  # not a pickle, or one cut short
            return False
        return file.read(1) == b""  # the STOP opcode ended the file


def refused_global(message: str) -> str | None:
    """Return the dotted name the restricted unpickler refused, if that is why it failed."""
    match = _GLOBAL.search(message)
    return match.group(1) if match else None


def holds_global(path: str, dotted: str) -> bool:
    """Tell whether the file names ``dotted`` in full.

    It does as a pickle GLOBAL or as the two strings of a STACK_GLOBAL: a name that the end of
    the file cuts off is damage, not an object.
    """
    with open(path, "rb") as file:
        data = file.read()
    if zipfile.is_zipfile(path):
        return True  # a cut zip fails before unpickling: the refusal is real
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        module, name = ".".join(parts[:i]).encode(), ".".join(parts[i:]).encode()
        if b"c" + module + b"\n" + name + b"\n" in data:
            return True
        if all(_short_string(text) in data for text in (module, name)):
            return True
    return False


def _short_string(text: bytes) -> bytes:
    return (b"\x8c" + bytes([len(text)]) if len(text) < 256 else b"") + text


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "reading brains-py surrogate files needs torch: pip install dnpu-bluesky[surrogate]"
        ) from exc
    return torch


def numpy_safe_globals() -> list[Any]:
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


def split_saved(saved: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """Find the state dict and info dict in whatever ``torch.save`` stored."""
    if isinstance(saved, Mapping):
        if "info" not in saved:
            raise ValueError(f"no 'info' entry (keys: {_some_keys(saved)})")
        if "model_state_dict" in saved:
            return saved["model_state_dict"], saved["info"]
        # brainspy-smg 2020 stored the info inside the state dict itself.
        return {k: v for k, v in saved.items() if k != "info"}, saved["info"]
    if callable(getattr(saved, "state_dict", None)):
        info = getattr(saved, "info", None)
        if info is None:
            raise ValueError("the saved module has no 'info' attribute")
        return saved.state_dict(), info
    raise ValueError(
        f"expected a dict holding 'info' and the layers or 'model_state_dict', got a "
        f"{type(saved).__name__}"
    )


def _some_keys(mapping: Mapping[str, Any]) -> str:
    keys = sorted(map(str, mapping))
    return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")


def layers_from_state_dict(
    state_dict: Mapping[str, Any],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"the state dict is a {type(state_dict).__name__}, not a mapping")
    layers: dict[int, dict[str, np.ndarray]] = {}
    prefixes = set()
    for key, value in state_dict.items():
        match = _KEY.search(str(key))
        if match:
            prefixes.add(match.group(1))
            layers.setdefault(int(match.group(2)), {})[match.group(3)] = _to_numpy(value)
    if not layers:
        raise ValueError(
            "state dict has no 'raw_model.N.weight' / 'raw_model.N.bias' entries (nor the "
            f"'model.N.weight' / 'model.N.bias' of 2020 files; keys: {_some_keys(state_dict)})"
        )
    if len(prefixes) > 1:
        raise ValueError(f"state dict holds two networks ({' and '.join(sorted(prefixes))})")
    (prefix,) = prefixes
    weights, biases = [], []
    for index in sorted(layers):
        for part in ("weight", "bias"):
            if part not in layers[index]:
                raise ValueError(f"state dict lacks '{prefix}.{index}.{part}'")
        weights.append(layers[index]["weight"])
        biases.append(layers[index]["bias"])
    check_layers(weights, biases)
    return weights, biases


def check_layers(weights: list[np.ndarray], biases: list[np.ndarray]) -> None:
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


def read_info(info: Mapping[str, Any]) -> tuple[np.ndarray, float, str]:
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
    activation = (
        _dig(info, "model_structure", "activation")
        or _dig(info, "smg_configs", "processor", "torch_model_dict", "activation")
        or "relu"
    )
    return _to_numpy(ranges), float(amp[0]), str(activation)
