"""Hostile input: CLI arguments, setup profiles and model files a careless or hostile user gives.

Each must be refused with a non-zero exit status and a short message on stderr (one line; a
bad profile's problems come one line each, at most ten, under the line naming the file), with
no traceback, before any voltage is applied (no device built, no stream played), and with no
run lost (none was started: the data directory is never created). A pickle that would run
code never runs it: its payload would create a marker file.

The CLI runs in this process (``main``), so the corpus takes seconds.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from dnpu_bluesky.cli import main

REPO = Path(__file__).resolve().parents[1]
SIM = yaml.safe_load((REPO / "profiles" / "setups" / "sim.yaml").read_text())
MARKER = "payload-ran"


def _marker_payload(directory: Path) -> object:
    class Payload:
        def __reduce__(self):
            return (Path.touch, (directory / MARKER,))

    return Payload()


def _profile(change: Callable[[dict], object]) -> Callable[[Path], str]:
    """A profile file: the sim example changed by ``change`` (which may return new text)."""

    def write(directory: Path) -> str:
        data = yaml.safe_load(yaml.safe_dump(SIM))
        text = change(data)
        path = directory / "setup.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text if isinstance(text, str) else yaml.safe_dump(data))
        return str(path)

    return write


def _set(path: str, value: object) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value

    return change


def _alias_bomb(data: dict) -> str:
    text, previous = "a: &a [x, x, x, x, x, x, x, x, x]\n", "a"
    for name in "bcdefghij":
        text += f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
        previous = name
    return text + f"name: *{previous}\nelectrodes: *{previous}\n"


PROFILES: dict[str, Callable[[dict], object]] = {
    "empty": lambda data: "",
    "only-comments": lambda data: "# nothing\n",
    "not-yaml": lambda data: "name: x\nelectrodes: [\n",
    "a-list": lambda data: "- a\n- b\n",
    "a-number": lambda data: "42\n",
    "binary": lambda data: bytes(range(256)) * 4,
    "not-utf8": lambda data: "name: caf\xe9\n".encode("latin-1"),
    "nested-300": lambda data: "name: " + "[" * 300 + "]" * 300 + "\n",
    "nested-maps-300": lambda data: "".join(f"{' ' * i}k{i}:\n" for i in range(300)) + "x\n",
    "comments-2MB": lambda data: ("# " + "x" * 1021 + "\n") * 2048,
    "alias-bomb": _alias_bomb,
    "duplicate-key": lambda data: yaml.safe_dump(data) + "sample_rate: 5\n",
    "python-tag": lambda data: "name: !!python/object/apply:os.system ['touch x']\n",
    "key-is-a-list": lambda data: "? [a, b]\n: 1\n",
    "sample_rate-1e12": _set("sample_rate", 1e12),
    "sample_rate-nan": _set("sample_rate", float("nan")),
    "sample_rate-inf": _set("sample_rate", float("inf")),
    "sample_rate-true": _set("sample_rate", True),
    "sample_rate-text": _set("sample_rate", "fast"),
    "sample_rate-negative": _set("sample_rate", -10_000),
    "oversampling-1e11": _set("readout_oversampling", 10**11),
    "oversampling-float": _set("readout_oversampling", 2.5),
    "slew-1e300": _set("max_slew_v_per_s", 1e300),
    "gain-0": _set("amplifier.gain_v_per_a", 0),
    "gain-1e30": _set("amplifier.gain_v_per_a", 1e30),
    "bandwidth-nan": _set("amplifier.bandwidth_hz", float("nan")),
    "max_v-true": _set("electrodes.2.max_v", True),
    "max_v-100": _set("electrodes.2.max_v", 100.0),
    "min_v-positive": _set("electrodes.0.min_v", 0.5),
    "limits-swapped": _set("electrodes.1", {**SIM["electrodes"][1], "min_v": 0.6, "max_v": -1.2}),
    "electrodes-1000": _set("electrodes", [SIM["electrodes"][0]] * 1000),
    "electrodes-none": _set("electrodes", []),
    "electrode-a-string": _set("electrodes.3", "e3"),
    "seed-2**64": _set("sim.seed", 2**64),
    "seed-negative": _set("sim.seed", -1),
    "surrogate-missing": _set("sim.surrogate", "no-such-model.pt"),
    "unknown-key": _set("sample_rte", 10),
    "backend-unknown": _set("backend", "labview"),
    "name-empty": _set("name", ""),
}


def _torch_file(directory: Path, name: str, saved: object, legacy: bool = False) -> Path:
    torch = pytest.importorskip("torch")
    path = directory / name
    torch.save(saved, path, _use_new_zipfile_serialization=not legacy)
    return path


def _surrogate(amplification: float = 28.5, weight: float | None = None, n: int = 7) -> dict:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(n, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    state = {f"raw_model.{k}": v for k, v in net.state_dict().items()}
    if weight is not None:
        state["raw_model.0.weight"][0, 0] = weight
    ranges = [[-1.2, 0.6]] * n
    info = {
        "electrode_info": {
            "activation_electrodes": {"voltage_ranges": ranges},
            "output_electrodes": {"amplification": [amplification]},
        }
    }
    return {"model_state_dict": state, "info": info}


def _cut(legacy: bool, fraction: float) -> Callable[[Path], Path]:
    def write(directory: Path) -> Path:
        path = _torch_file(directory, "whole.pt", _surrogate(), legacy)
        data = path.read_bytes()
        cut = directory / "cut.pt"
        cut.write_bytes(data[: int(len(data) * fraction)])
        return cut

    return write


def _bytes(data: bytes, name: str = "model.pt") -> Callable[[Path], Path]:
    def write(directory: Path) -> Path:
        (directory / name).write_bytes(data)
        return directory / name

    return write


def _pickled(protocol: int, payload: bool) -> Callable[[Path], Path]:
    def write(directory: Path) -> Path:
        saved = {"info": _marker_payload(directory) if payload else {}}
        path = directory / "pickled.pt"
        path.write_bytes(pickle.dumps(saved, protocol=protocol))
        return path

    return write


def _foreign_zip(directory: Path) -> Path:
    path = directory / "foreign.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    return path


def _huge_sparse(directory: Path) -> Path:
    path = directory / "huge.pt"
    with path.open("wb") as file:
        file.truncate(1 << 30)  # 1 GiB of zeros, sparse on disk
    return path


def _huge_pickle(directory: Path) -> Path:  # one 64 MB string: a whole, plain pickle
    path = directory / "huge-pickle.pt"
    path.write_bytes(pickle.dumps({"info": b"\0" * (64 << 20)}, protocol=4))
    return path


MODELS: dict[str, Callable[[Path], Path]] = {
    "empty": _bytes(b""),
    "one-byte": _bytes(b"\x80"),
    "zip-magic-only": _bytes(b"PK\x03\x04"),
    "text": _bytes(b"a: 1\nb: [1, 2]\n", "notes.pt"),
    "png": _bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64))),
    "random": _bytes(np.random.default_rng(0).bytes(4096)),
    "foreign-zip": _foreign_zip,
    "huge-sparse": _huge_sparse,
    "huge-pickle": _huge_pickle,
    **{f"truncated-zip-{f}": _cut(False, f) for f in (0.1, 0.5, 0.99)},
    **{f"truncated-legacy-{f}": _cut(True, f) for f in (0.1, 0.5, 0.99)},
    **{f"plain-pickle-{p}": _pickled(p, payload=False) for p in (0, 2, 5)},
    **{f"code-pickle-{p}": _pickled(p, payload=True) for p in range(6)},
    "code-in-torch-save": lambda d: _torch_file(d, "code.pt", {"info": _marker_payload(d)}),
    "code-in-legacy-save": lambda d: _torch_file(
        d, "code.pt", {"info": _marker_payload(d)}, legacy=True
    ),
    "amplification-nan": lambda d: _torch_file(d, "m.pt", _surrogate(float("nan"))),
    "amplification-inf": lambda d: _torch_file(d, "m.pt", _surrogate(float("inf"))),
    "weight-nan": lambda d: _torch_file(d, "m.pt", _surrogate(weight=float("nan"))),
    "weight-inf": lambda d: _torch_file(d, "m.pt", _surrogate(weight=-float("inf"))),
    "eight-electrodes": lambda d: _torch_file(d, "m.pt", _surrogate(n=8)),
    "no-info": lambda d: _torch_file(d, "m.pt", {"model_state_dict": {}}),
    "a-tensor": lambda d: _torch_file(d, "m.pt", pytest.importorskip("torch").zeros(3)),
}

ARGUMENTS: dict[str, list[str]] = {
    "seed-2**64": ["train", "--seed", str(2**64)],
    "seed-negative": ["train", "--seed", "-1"],
    "seed-text": ["train", "--seed", "zero"],
    "devices-100000": ["train", "--devices", "100000"],
    "devices-0": ["demo", "--devices", "0"],
    "devices-negative": ["train", "--devices", "-3"],
    "iterations-0": ["train", "--max-iterations", "0"],
    "iterations-1e12": ["train", "--max-iterations", str(10**12)],
    "lr-nan": ["train", "--lr", "nan"],
    "lr-inf": ["train", "--lr", "inf"],
    "lr-negative": ["train", "--lr", "-0.1"],
    "margin-nan": ["train", "--margin", "nan"],
    "margin-inf": ["train", "--margin", "inf"],
    "margin-zero": ["train", "--margin", "0"],
    "budget-nan": ["train", "--screen-budget", "nan"],
    "budget-negative": ["train", "--screen-budget", "-5"],
    "input-range-nan": ["train", "--input-range=nan,0.3"],
    "input-range-inf": ["train", "--input-range=-inf,0.3"],
    "input-range-swapped": ["train", "--input-range=0.3,-0.5"],
    "input-range-one": ["train", "--input-range=0.3"],
    "input-range-text": ["train", "--input-range=low,high"],
    "gates-unknown": ["train", "--gates", "XOR,NOPE"],
    "gates-empty": ["train", "--gates", ","],
    "method-unknown": ["train", "--method", "magic"],
    "batch-size-0": ["train", "--task", "sphere", "--batch-size", "0"],
    "target-accuracy-2": ["train", "--task", "sphere", "--target-accuracy", "2"],
    "target-accuracy-nan": ["train", "--task", "sphere", "--target-accuracy", "nan"],
    "margin-for-sphere": ["train", "--task", "sphere", "--margin", "5"],
    "json-empty": ["train", "--json", ""],
    "json-in-missing-folder": ["train", "--json", "/nonexistent/folder/out.json"],
    "figures-under-a-file": ["train", "--figures", "/dev/null/figures"],
    "model-missing": ["train", "--model", "no-such-model.pt"],
    "model-a-directory": ["train", "--model", "."],
    "model-dev-zero": ["train", "--model", "/dev/zero"],
    # Files that fail to read: EIO, and EINVAL ([Errno 22], as a cut .pt gave on some disk).
    "model-proc-mem": ["train", "--model", "/proc/self/mem"],
    "model-proc-clear-refs": ["train", "--model", "/proc/self/clear_refs"],
    "setup-missing": ["train", "--setup", "no-such-setup.yaml"],
    "setup-a-directory": ["train", "--setup", "."],
    "setup-dev-zero": ["check-profile", "/dev/zero"],
    "two-setups-and-devices": ["train", "--setup", "a.yaml", "--setup", "b.yaml", "--devices", "2"],
    "limit-0": ["runs", "--limit", "0"],
    "limit-1e30": ["runs", "--limit", str(10**30)],
    "tiled-uri-not-a-uri": ["runs", "--tiled-uri", "http://user:pw-secret@[::1/api"],
    "tiled-uri-ftp": ["runs", "--tiled-uri", "ftp://user:pw-secret@host/api"],
    "no-command": [],
    "unknown-command": ["destroy"],
}


def _cases() -> list[pytest.param]:
    cases = [
        pytest.param("arguments", name, id=f"arguments-{name}")
        for name, argv in ARGUMENTS.items()
        if not any(arg.startswith("/proc/") and not os.path.exists(arg) for arg in argv)
    ]
    for name in PROFILES:
        for how in ("check-profile", "train --setup"):
            cases.append(pytest.param("profile", (name, how), id=f"profile-{name}-{how}"))
    cases += [pytest.param("model", name, id=f"model-{name}") for name in MODELS]
    return cases


@pytest.fixture
def no_voltage(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of devices built and streams played, by the real functions."""
    import dnpu_bluesky.devices as devices
    from dnpu_bluesky.sim import SimulatedBackend

    counts = {"built": 0, "played": 0}
    build, play = devices.build_dnpu, SimulatedBackend.play_and_record

    def counted_build(*args, **kwargs):
        counts["built"] += 1
        return build(*args, **kwargs)

    def counted_play(self, *args, **kwargs):
        counts["played"] += 1
        return play(self, *args, **kwargs)

    monkeypatch.setattr(devices, "build_dnpu", counted_build)
    monkeypatch.setattr(SimulatedBackend, "play_and_record", counted_play)
    return counts


def _short_message(err: str) -> bool:
    """One line, or a profile's header and its problems, one line each."""
    lines = err.rstrip("\n").splitlines()
    if len(lines) == 1:
        return lines[0].startswith("dnpu-bluesky") and len(lines[0]) < 400
    header = "invalid setup profile " in lines[0] and lines[0].endswith(":")
    return header and 2 <= len(lines) <= 12 and all(line.startswith("  ") for line in lines[1:])


@pytest.mark.parametrize(("kind", "case"), _cases())
def test_hostile_input_is_refused_in_a_short_message(
    kind, case, tmp_path, capsys, monkeypatch, no_voltage
):
    for name in ("DNPU_SETUP", "DNPU_SEED", "DNPU_TILED_API_KEY", "DNPU_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    if kind == "arguments":
        argv = ARGUMENTS[case]
        if argv and argv[0] in ("train", "demo", "runs") and "--tiled-uri" not in argv:
            argv = [*argv, "--data-dir", str(data_dir)]
    elif kind == "profile":
        name, how = case
        path = _profile(PROFILES[name])(tmp_path)
        argv = ["check-profile", path]
        if how != "check-profile":
            argv = ["train", "--setup", path, "--quiet", "--data-dir", str(data_dir)]
    else:
        path = MODELS[case](tmp_path)
        argv = ["train", "--model", str(path), "--quiet", "--data-dir", str(data_dir)]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    err = capsys.readouterr().err
    assert status not in (0, None), err
    assert "Traceback" not in err, err
    assert _short_message(err), err
    assert "secret" not in err, err
    assert no_voltage == {"built": 0, "played": 0}
    assert not data_dir.exists()  # no storage opened: no run started, so none lost
    assert not (tmp_path / MARKER).exists()
    assert not os.path.exists(tmp_path / "x")
