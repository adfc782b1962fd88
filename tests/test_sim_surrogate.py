"""brains-py surrogate files: read with torch, evaluated with numpy, checked against torch."""

import builtins
import contextlib
import itertools
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dnpu_bluesky.sim import (
    DeviceModel,
    SimulatedBackend,
    SurrogateModel,
    _surrogate_file,
    load_brainspy_surrogate,
    surrogate,
)
from dnpu_bluesky.sim.surrogate import FLOAT32_RTOL

torch = pytest.importorskip("torch")

RANGES = [[-1.2, 0.6], [-1.2, 0.6], [-1.2, 0.6], [-0.7, 0.3], [-0.7, 0.3], [-1.2, 0.6], [-1.2, 0.6]]
ACTIVATIONS = {
    "relu": torch.nn.ReLU,
    "elu": torch.nn.ELU,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "hard-tanh": torch.nn.Hardtanh,
}


class _Network(torch.nn.Module):
    """Same module layout as brains-py's NeuralNetworkModel: a Sequential named raw_model."""

    def __init__(self, hidden=(20, 20, 20), activation="relu"):
        super().__init__()
        sizes = [7, *hidden]
        layers = []
        for a, b in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(a, b), ACTIVATIONS[activation]()]
        layers.append(torch.nn.Linear(sizes[-1], 1))
        self.raw_model = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.raw_model(x)


def _info(amplification=28.5, activation="relu", ranges=RANGES):
    return {
        "model_structure": {
            "D_in": 7,
            "D_out": 1,
            "hidden_sizes": [20, 20, 20],
            "activation": activation,
        },
        "electrode_info": {
            "electrode_no": 8,
            "activation_electrodes": {"electrode_no": 7, "voltage_ranges": np.array(ranges)},
            "output_electrodes": {
                "electrode_no": 1,
                "amplification": [amplification],
                "clipping_value": [-114.0, 114.0],
            },
        },
    }


def _network(activation="relu", seed=0):
    torch.manual_seed(seed)
    net = _Network(activation=activation).double()
    return net


def _volts(n=500, seed=1):
    r = np.array(RANGES)
    return np.random.default_rng(seed).uniform(r[:, 0], r[:, 1], (n, 7))


def _torch_reference(net, volts, amplification):
    x = torch.tensor(volts, requires_grad=True)
    y = net(x)[:, 0] * amplification
    (grad,) = torch.autograd.grad(y.sum(), x)
    return y.detach().numpy(), grad.numpy()


def test_brainspy_smg_file_matches_torch(tmp_path):
    net = _network()
    path = tmp_path / "training_data.pt"
    # The dict brainspy-smg's training loop writes.
    torch.save(
        {
            "epoch": 10,
            "model_state_dict": net.state_dict(),
            "info": _info(),
            "train_losses": torch.zeros(3),
            "val_losses": torch.zeros(3),
            "min_val_loss": torch.tensor(0.1),
        },
        path,
    )
    model = load_brainspy_surrogate(path, precision="float64")
    assert isinstance(model, DeviceModel)
    volts = _volts()
    current, grad = _torch_reference(net, volts, 28.5)
    np.testing.assert_allclose(model.current(volts), current, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(model.jacobian(volts), grad, rtol=1e-10, atol=1e-9)
    np.testing.assert_array_equal(model.voltage_ranges, RANGES)
    d = json.loads(json.dumps(model.describe()))
    assert d["layer_sizes"] == [7, 20, 20, 20, 1]
    assert d["amplification"] == 28.5 and d["source"] == str(path)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activations_match_torch(activation):
    net = _network(activation, seed=3)
    model = SurrogateModel.from_state_dict(
        net.state_dict(), _info(2.0, activation), precision="float64"
    )
    volts = _volts(300, seed=2)
    current, grad = _torch_reference(net, volts, 2.0)
    np.testing.assert_allclose(model.current(volts), current, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(model.jacobian(volts), grad, rtol=1e-9, atol=1e-10)


def _info_2020(offset, amplitude, amplification, activation="relu", driver=True):
    """The info dict brainspy-smg kept inside the state dict in 2020."""
    processor = (
        {"driver": {"amplification": amplification}} if driver else {"amplification": amplification}
    )
    return {
        "data_info": {
            "input_data": {"offset": offset, "amplitude": amplitude},
            "processor": processor,
            "clipping_value": [-110.0, 110.0],
        },
        "smg_configs": {
            "processor": {
                "torch_model_dict": {
                    "D_in": 7,
                    "D_out": 1,
                    "hidden_sizes": [20, 20, 20],
                    "activation": activation,
                }
            }
        },
    }


@pytest.mark.parametrize(("activation", "driver"), [("relu", True), ("tanh", False)])
def test_2020_layout_legacy_pickle_of_the_state_dict(tmp_path, activation, driver):
    net = _network(activation, seed=5)
    offset = np.array([-0.3, -0.3, -0.3, -0.2, -0.2, -0.3, -0.3])
    amplitude = np.array([0.9, 0.9, 0.9, 0.5, 0.5, 0.9, 0.9])
    # The 2020 network module called its Sequential ``model``, not ``raw_model``.
    saved = {k.replace("raw_model.", "model.", 1): v for k, v in net.state_dict().items()}
    saved["info"] = _info_2020(offset, amplitude, [10.0], activation, driver)
    path = tmp_path / "model.pt"
    torch.save(saved, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    model = load_brainspy_surrogate(path, precision="float64")
    expected_ranges = np.stack([offset - amplitude, offset + amplitude], axis=1)
    np.testing.assert_allclose(model.voltage_ranges, expected_ranges)
    assert model.amplification == 10.0 and model.activation == activation
    volts = _volts(200, seed=4)
    current, grad = _torch_reference(net, volts, 10.0)
    np.testing.assert_allclose(model.current(volts), current, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(model.jacobian(volts), grad, rtol=1e-10, atol=1e-9)


def test_info_inside_a_state_dict_with_raw_model_keys(tmp_path):
    net = _network(seed=5)
    saved = dict(net.state_dict())
    saved["info"] = _info_2020(np.full(7, -0.3), np.full(7, 0.9), 10.0)
    path = tmp_path / "legacy.pt"
    torch.save(saved, path)
    model = load_brainspy_surrogate(path, precision="float64")
    np.testing.assert_allclose(model.voltage_ranges, np.tile([-1.2, 0.6], (7, 1)))
    volts = _volts(50)
    np.testing.assert_allclose(model.current(volts), _torch_reference(net, volts, 10.0)[0])


def _reference(net, volts, amplification):
    """The plain float64 evaluation: torch in double precision, gradients by autograd."""
    return _torch_reference(net.double(), volts, amplification)


def _within_float32_tolerance(actual, expected):
    """The documented bound: FLOAT32_RTOL times the largest magnitude of the batch."""
    error = np.max(np.abs(actual - expected))
    assert error <= FLOAT32_RTOL * np.max(np.abs(expected)), error


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("hidden", [(20, 20, 20), (64, 64, 64, 64, 64)])
def test_float32_currents_and_jacobian_match_float64(activation, hidden):
    torch.manual_seed(len(hidden))
    net = _Network(hidden, activation)
    model = SurrogateModel.from_state_dict(net.state_dict(), _info(7.0, activation))
    assert model.describe()["precision"] == "float32"
    volts = _volts(3000, seed=len(hidden))
    current, grad = _reference(net, volts, 7.0)
    _within_float32_tolerance(model.current(volts), current)
    # The Jacobian is float64 whatever the precision of the currents.
    np.testing.assert_allclose(model.jacobian(volts), grad, rtol=1e-9, atol=1e-9)


def test_float32_stays_close_where_float64_would_be_exact():
    """A float32 evaluation is not float64 in disguise: the two differ, within the bound."""
    net = _network(seed=11)
    fast = SurrogateModel.from_state_dict(net.state_dict(), _info())
    exact = SurrogateModel.from_state_dict(net.state_dict(), _info(), precision="float64")
    volts = _volts(2000, seed=12)
    assert not np.array_equal(fast.current(volts), exact.current(volts))
    _within_float32_tolerance(fast.current(volts), exact.current(volts))
    with pytest.raises(ValueError, match="precision"):
        SurrogateModel.from_state_dict(net.state_dict(), _info(), precision="float16")


def test_held_samples_are_evaluated_once_and_threads_change_nothing(monkeypatch):
    net = _network(seed=13)
    model = SurrogateModel.from_state_dict(net.state_dict(), _info())
    levels = _volts(40, seed=14)
    stream = np.repeat(levels, np.arange(1, 41), axis=0)  # held 1 to 40 samples each
    evaluated = []
    block = model._current_block
    monkeypatch.setattr(model, "_current_block", lambda rows: evaluated.append(len(rows))
                        or block(rows))  # fmt: skip
    monkeypatch.setattr(surrogate, "EVALUATION_THREADS", 1)
    serial = model.current(stream)
    assert sum(evaluated) == 40
    np.testing.assert_array_equal(serial, np.repeat(model.current(levels), np.arange(1, 41)))
    _within_float32_tolerance(serial, _reference(net, stream, 28.5)[0])
    distinct = _volts(5000, seed=15)  # several blocks, shared by three threads
    one = model.current(distinct)
    monkeypatch.setattr(surrogate, "EVALUATION_THREADS", 3)
    np.testing.assert_array_equal(model.current(distinct), one)
    np.testing.assert_array_equal(model.current(stream), serial)


def test_blas_runs_single_threaded_only_while_evaluating():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info()
                if p["user_api"] == "blas"]  # fmt: skip

    before = blas_threads()
    seen = []
    with surrogate._blas_threads(1), surrogate._blas_threads(1):
        seen.append(blas_threads())
    assert seen == [[1] * len(before)]
    assert blas_threads() == before


MEASURED = Path(__file__).resolve().parents[2] / "shared" / "devices" / "measured-dnpu-b.pt"
MEASURED = Path(os.environ.get("DNPU_MEASURED_SURROGATE", MEASURED))


def _measured_network():
    """measured-dnpu-b as a float64 torch network, read here without the package."""
    if not MEASURED.is_file():
        pytest.skip(f"measured-dnpu-b.pt not found at {MEASURED} (set DNPU_MEASURED_SURROGATE)")
    with torch.serialization.safe_globals(_surrogate_file.numpy_safe_globals()):  # numpy arrays
        saved = torch.load(MEASURED, map_location="cpu", weights_only=True)
    state = saved["model_state_dict"]
    layers = []
    for index in sorted({int(k.split(".")[-2]) for k in state if k.endswith(".weight")}):
        linear = torch.nn.Linear(*state[f"raw_model.{index}.weight"].shape[::-1])
        linear.weight.data = state[f"raw_model.{index}.weight"].clone()
        linear.bias.data = state[f"raw_model.{index}.bias"].clone()
        layers += [linear, torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1]).double()
    amplification = float(np.ravel(
        saved["info"]["electrode_info"]["output_electrodes"]["amplification"])[0])  # fmt: skip
    return net, amplification


def test_measured_device_float32_matches_float64():
    net, amplification = _measured_network()
    model = load_brainspy_surrogate(MEASURED)
    assert model.amplification == amplification
    ranges = model.voltage_ranges
    volts = np.random.default_rng(16).uniform(ranges[:, 0], ranges[:, 1], (4000, 7))
    current, grad = _reference(net, volts, amplification)
    _within_float32_tolerance(model.current(volts), current)
    np.testing.assert_allclose(model.jacobian(volts), grad, rtol=1e-9, atol=1e-9)


def test_prefixed_keys_are_accepted():
    net = _network(seed=6)
    prefixed = {f"model.{k}": v for k, v in net.state_dict().items()}
    prefixed["model.amplification"] = torch.tensor([1.0])  # a buffer, not a layer
    model = SurrogateModel.from_state_dict(prefixed, _info(1.0))
    volts = _volts(20)
    np.testing.assert_allclose(model.current(volts), _torch_reference(net, volts, 1.0)[0])


def test_clear_errors_for_missing_parts():
    state = _network().state_dict()
    no_ranges = _info()
    del no_ranges["electrode_info"]["activation_electrodes"]["voltage_ranges"]
    with pytest.raises(ValueError, match="voltage_ranges"):
        SurrogateModel.from_state_dict(state, no_ranges)
    no_amp = _info()
    del no_amp["electrode_info"]["output_electrodes"]["amplification"]
    with pytest.raises(ValueError, match="amplification"):
        SurrogateModel.from_state_dict(state, no_amp)
    missing_bias = {k: v for k, v in state.items() if k != "raw_model.2.bias"}
    with pytest.raises(ValueError, match=r"raw_model\.2\.bias"):
        SurrogateModel.from_state_dict(missing_bias, _info())
    with pytest.raises(ValueError, match="raw_model"):
        SurrogateModel.from_state_dict({"weight": np.ones((1, 7))}, _info())
    with pytest.raises(ValueError, match="activation"):
        SurrogateModel.from_state_dict(state, _info(activation="swish"))


def _refusal(path):
    with pytest.raises(ValueError) as info:
        load_brainspy_surrogate(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{path}: not a brains-py surrogate: "), message
    assert "trusted" not in message, message  # damage is never sold as a pickled object
    return message


def test_anything_but_a_surrogate_is_refused_in_one_line(tmp_path):
    net = _network(seed=17)
    good = {f"model.{k[len('raw_model.') :]}": v for k, v in net.state_dict().items()}
    good["info"] = _info_2020(np.zeros(7), np.ones(7), 2.0)
    unrelated = torch.nn.Conv2d(3, 4, 3).state_dict()
    cases = {
        "empty.pt": (b"", "(empty file)"),
        "plain.pkl": (pickle.dumps({"info": {}, "model.0.weight": np.ones((3, 7))}),
                      "(a plain pickle, not written by torch.save)"),
    }  # fmt: skip
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert expected in _refusal(tmp_path / name)
    for legacy in (False, True):
        path = tmp_path / f"unrelated-{legacy}.pt"
        torch.save(unrelated, path, _use_new_zipfile_serialization=not legacy)
        assert "no 'info' entry (keys: bias, weight)" in _refusal(path)
        torch.save(
            {**unrelated, "info": {"note": 1}}, path, _use_new_zipfile_serialization=not legacy
        )
        assert "state dict has no 'raw_model.N.weight'" in _refusal(path)
    for legacy in (False, True):
        path = tmp_path / f"good-{legacy}.pt"
        torch.save(good, path, _use_new_zipfile_serialization=not legacy)
        load_brainspy_surrogate(path)  # whole, it is read
        data = path.read_bytes()
        cut = tmp_path / "cut.pt"
        n = len(data)
        for end in sorted({*range(1, n, n // 80), *range(n - 40, n)}):  # the end is the trap
            cut.write_bytes(data[:end])
            message = _refusal(cut)
            assert "torch cannot read it" in message, message


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_plain_pickle_of_any_protocol_is_named_and_never_run(tmp_path, protocol):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name, saved in (("dict", {"info": {}}), ("payload", {"info": Payload()})):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(pickle.dumps(saved, protocol=protocol))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            message = _refusal(path)
        assert message.endswith("(a plain pickle, not written by torch.save)"), message
        assert not caught, [str(w.message) for w in caught]
    assert not marker.exists()


def test_a_damaged_file_is_refused_without_torch_warnings(tmp_path):
    path = tmp_path / "good.pt"
    torch.save({"model_state_dict": _network(seed=3).state_dict(), "info": _info()}, path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    damaged = tmp_path / "damaged.pt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for position in rng.integers(0, len(data), 300):
            flipped = bytearray(data)
            flipped[position] ^= 0xFF
            damaged.write_bytes(flipped)
            with contextlib.suppress(ValueError):  # a flip in a weight still loads
                load_brainspy_surrogate(damaged)
    assert not [str(w.message) for w in caught if "torch" in w.filename], caught


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["amplification", "weight", "range"])
def test_nan_or_infinite_parameters_are_refused_at_load(tmp_path, bad, where):
    state, info = _network(seed=5).state_dict(), _info()
    if where == "amplification":
        info["electrode_info"]["output_electrodes"]["amplification"] = bad
    elif where == "weight":
        state["raw_model.2.weight"][0, 0] = bad
    else:
        info["electrode_info"]["activation_electrodes"]["voltage_ranges"][2] = [-1.0, bad]
    path = tmp_path / "bad.pt"
    torch.save({"model_state_dict": state, "info": info}, path)
    with pytest.raises(ValueError) as caught:
        load_brainspy_surrogate(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a brains-py surrogate: "), message
    assert len(message.splitlines()) == 1
    assert any(word in message for word in ("nan", "inf", "NaN", "finite")), message


def test_whole_module_pickle_needs_trust(tmp_path):
    net = _network(seed=8)
    net.info = _info(3.0)
    path = tmp_path / "module.pt"
    torch.save(net, path)
    with pytest.raises(ValueError, match="trusted=True"):
        load_brainspy_surrogate(path)
    model = load_brainspy_surrogate(path, trusted=True)
    volts = _volts(20)
    np.testing.assert_allclose(model.current(volts), _torch_reference(net, volts, 3.0)[0])


def _hide_torch(monkeypatch):
    """Imports of torch fail from now on in this test, as without torch installed."""
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)


def test_missing_torch_gives_install_hint(tmp_path, monkeypatch):
    _hide_torch(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install dnpu-bluesky\[surrogate\]"):
        load_brainspy_surrogate(tmp_path / "absent.pt")


def test_surrogate_drives_the_simulated_daq():
    model = SurrogateModel.from_state_dict(_network(seed=9).state_dict(), _info())
    daq = SimulatedBackend(model=model, seed=2)
    n = 2000
    ramp = np.concatenate([np.linspace(0, 1, n // 2), np.linspace(1, 0, n // 2)])
    stream = np.outer(ramp, [-0.5, 0.2, 0.1, -0.3, 0.1, 0.3, -0.2])
    acq = daq.play_and_record(stream, 10_000.0)
    assert acq.ai_volts.shape == (n,)
    assert daq.describe()["model"]["kind"] == "brainspy-surrogate"


def _save_surrogate(path, ranges):
    torch.save({"model_state_dict": _network(seed=4).state_dict(), "info": _info(ranges=ranges)},
               path)  # fmt: skip


def test_cli_takes_the_electrode_ranges_and_input_levels_of_a_model(tmp_path, tiled_server):
    from dnpu_bluesky.cli import main
    from dnpu_bluesky.storage import load_run

    # Narrower than the built-in profile's ranges, which used to be refused.
    ranges = [[-1.0, 0.5], [-1.1, 0.4], [-0.9, 0.5], [-0.5, 0.2], [-0.6, 0.25], [-1.0, 0.5],
              [-1.0, 0.45]]  # fmt: skip
    path = tmp_path / "device.pt"
    _save_surrogate(path, ranges)
    out = tmp_path / "out.json"
    args = ["train", "--gates", "OR", "--model", str(path), "--max-iterations", "2",
            "--json", str(out), "--tiled-uri", tiled_server.uri, "--quiet"]  # fmt: skip
    assert main(args) in (0, 1)  # solved or not: the run is what is checked
    (row,) = json.loads(out.read_text())["results"]
    run = load_run(tiled_server.client, row["run_uid"])
    # The inputs' logical 0 and 1 are trained, inside the file's ranges of the electrodes used.
    assert run.metadata["start"]["plan_args"]["learn_levels"] is True
    columns = [int(name.removeprefix("e")) for name in row["inputs"].split(",")]
    for column, levels in zip(columns, row["input_levels"], strict=True):
        assert ranges[column][0] < min(levels) and max(levels) < ranges[column][1]
    configuration = run["eval_raw"].metadata["configuration"]["dnpu"]["data"]
    limits = [[configuration[f"dnpu_e{i}_min_v"], configuration[f"dnpu_e{i}_max_v"]]
              for i in range(7)]  # fmt: skip
    assert limits == ranges
    assert run.metadata["start"]["dnpu_backend"]["model"]["kind"] == "brainspy-surrogate"


def test_cli_says_in_one_line_why_a_model_file_cannot_be_used(tmp_path, capsys, monkeypatch):
    from dnpu_bluesky.cli import main

    text = tmp_path / "notes.yaml"
    text.write_text("a: 1\nb: [1, 2]\n")
    arrays = tmp_path / "arrays.npz"
    np.savez(arrays, a=np.zeros(3))
    pickled = tmp_path / "module.pt"
    torch.save(_network(seed=8), pickled)
    eight = tmp_path / "eight.pt"  # a model of a device with 8 voltage electrodes
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    info = _info(ranges=[[-1.2, 0.6]] * 8)
    torch.save({"model_state_dict": {f"raw_model.{k}": v for k, v in net.state_dict().items()},
                "info": info}, eight)  # fmt: skip
    image = tmp_path / "plot.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    unreadable = "not a brains-py surrogate: torch cannot read it"
    positive = tmp_path / "positive.pt"  # e3 trained on 0.05 .. 0.6 V only
    _save_surrogate(positive, [*RANGES[:3], [0.05, 0.6], *RANGES[4:]])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"info": {}}))
    cut = tmp_path / "cut.pt"
    torch.save(_network(seed=8).state_dict(), cut, _use_new_zipfile_serialization=False)
    cut.write_bytes(cut.read_bytes()[:-9])
    for path, message in [
        (empty, f"{unreadable} (empty file)"),
        (plain, f"{unreadable} (a plain pickle, not written by torch.save)"),
        (cut, f"{unreadable} (cut short or damaged"),
        (positive, "electrode e3 was trained on 0.05 .. 0.6 V, which leaves out 0 V"),
        (text, unreadable),
        (arrays, unreadable),
        (image, f"{unreadable} (not a pickle)"),
        (pickled, "holds Python objects"),
        (eight, "the surrogate has 8 electrodes"),
    ]:
        assert main(["train", "--model", str(path), "--quiet"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert message in line and str(path) in line

    _hide_torch(monkeypatch)
    assert main(["train", "--model", str(pickled), "--quiet"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "pip install dnpu-bluesky[surrogate]" in line
