"""brains-py surrogate files: read with torch, evaluated with numpy, checked against torch."""

import builtins
import itertools
import json

import numpy as np
import pytest

from dnpu_bluesky.sim import DeviceModel, SimulatedDAQ, SurrogateModel, load_brainspy_surrogate

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
    model = load_brainspy_surrogate(path)
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
    model = SurrogateModel.from_state_dict(net.state_dict(), _info(2.0, activation))
    volts = _volts(300, seed=2)
    current, grad = _torch_reference(net, volts, 2.0)
    np.testing.assert_allclose(model.current(volts), current, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(model.jacobian(volts), grad, rtol=1e-9, atol=1e-10)


def test_legacy_layout_info_inside_state_dict(tmp_path):
    net = _network(seed=5)
    offset, amplitude = np.array([-0.3] * 7), np.array([0.9] * 7)
    saved = dict(net.state_dict())
    saved["info"] = {
        "data_info": {
            "input_data": {"offset": offset, "amplitude": amplitude},
            "processor": {"driver": {"amplification": 10.0}},
        }
    }
    path = tmp_path / "legacy.pt"
    torch.save(saved, path)
    model = load_brainspy_surrogate(path)
    np.testing.assert_allclose(model.voltage_ranges, np.tile([-1.2, 0.6], (7, 1)))
    volts = _volts(50)
    np.testing.assert_allclose(model.current(volts), _torch_reference(net, volts, 10.0)[0])


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
    daq = SimulatedDAQ(model=model, seed=2)
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
    # Logical 0 and 1 at the ends of the range both inputs (e3, e4) cover.
    task = run.metadata["start"]["task"]
    assert (task["input_low_v"], task["input_high_v"]) == (-0.5, 0.2)
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
    for path, message in [
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
