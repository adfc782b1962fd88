"""The built-in virtual DNPU: shapes, exact Jacobian, seeds, realistic currents."""

import json

import numpy as np
import pytest

from dnpu_bluesky.sim import DeviceModel, VirtualDNPU


def _random_volts(model, n, seed=0):
    r = model.voltage_ranges
    return np.random.default_rng(seed).uniform(r[:, 0], r[:, 1], (n, model.n_electrodes))


def _central_differences(model, volts, h=1e-5):
    eye = np.eye(model.n_electrodes)
    return np.stack(
        [(model.current(volts + h * e) - model.current(volts - h * e)) / (2 * h) for e in eye],
        axis=-1,
    )


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_jacobian_matches_central_differences(seed):
    model = VirtualDNPU(seed)
    volts = _random_volts(model, 300, seed=seed)
    exact = model.jacobian(volts)
    numeric = _central_differences(model, volts)
    scale = np.abs(exact).max()
    np.testing.assert_allclose(exact, numeric, rtol=1e-5, atol=1e-6 * scale)


def test_jacobian_at_zero_and_at_range_corners():
    model = VirtualDNPU(3)
    corners = np.array([model.voltage_ranges[:, 0], model.voltage_ranges[:, 1], np.zeros(7)])
    np.testing.assert_allclose(
        model.jacobian(corners), _central_differences(model, corners), rtol=1e-5, atol=1e-4
    )


def test_shapes_and_zero_bias():
    model = VirtualDNPU()
    assert isinstance(model, DeviceModel)
    volts = _random_volts(model, 12).reshape(3, 4, 7)
    assert model.current(volts).shape == (3, 4)
    assert model.jacobian(volts).shape == (3, 4, 7)
    assert model.current(volts[0, 0]).shape == ()
    np.testing.assert_allclose(model.current(volts).ravel(), model.current(volts.reshape(-1, 7)))
    # No bias on any electrode, no current.
    assert model.current(np.zeros(7)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        model.current(np.zeros((4, 6)))


def test_currents_are_dnpu_like():
    for seed in range(4):
        model = VirtualDNPU(seed)
        current = np.abs(model.current(_random_volts(model, 5000, seed=10 + seed)))
        # The scale of measured-dnpu-b, a measured room-temperature device (99th percentile
        # about 93 nA): docs/virtual-dnpu.md, "Beside a measured device".
        assert 5.0 < np.median(current) < 50.0
        assert 70.0 < np.percentile(current, 99) < 130.0


def test_nonlinear_and_non_monotonic():
    """Sweeping one electrode shows both signs of slope: the device is not monotonic."""
    model = VirtualDNPU(0)
    r = model.voltage_ranges
    signs_seen = set()
    for point in _random_volts(model, 20, seed=4):
        sweep = np.repeat(point[None], 200, axis=0)
        sweep[:, 0] = np.linspace(r[0, 0], r[0, 1], 200)
        slope = np.diff(model.current(sweep))
        signs_seen |= set(np.sign(slope[np.abs(slope) > 1e-3]).tolist())
    assert signs_seen == {-1.0, 1.0}


def test_seeds_reproducible_and_distinct():
    volts = _random_volts(VirtualDNPU(), 50)
    a, b, c = VirtualDNPU(5), VirtualDNPU(5), VirtualDNPU(6)
    assert a.describe() == b.describe()
    np.testing.assert_array_equal(a.current(volts), b.current(volts))
    assert a.describe()["parameter_hash"] != c.describe()["parameter_hash"]
    assert np.max(np.abs(a.current(volts) - c.current(volts))) > 10.0


def test_describe_is_json_and_ranges_are_realistic():
    model = VirtualDNPU(2)
    d = json.loads(json.dumps(model.describe()))
    assert d["kind"] == "VirtualDNPU" and d["seed"] == 2
    ranges = np.array(d["voltage_ranges"])
    assert ranges.shape == (7, 2)
    assert np.all(ranges[:, 0] >= -1.2) and np.all(ranges[:, 1] <= 1.0)
    assert np.all(ranges[:, 0] < 0) and np.all(ranges[:, 1] > 0)
    with pytest.raises(ValueError):
        model.voltage_ranges[0, 0] = -5.0


def test_custom_ranges_and_validation():
    ranges = np.tile([-1.0, 1.0], (7, 1))
    model = VirtualDNPU(1, voltage_ranges=ranges, max_current_na=100.0)
    current = np.abs(model.current(_random_volts(model, 4000)))
    assert np.percentile(current, 99) == pytest.approx(100.0, rel=0.15)
    with pytest.raises(ValueError, match="voltage_ranges"):
        VirtualDNPU(voltage_ranges=np.zeros((7, 2)))
