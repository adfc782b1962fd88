"""bluesky's own plans on the DNPU, as a beamline user calls them: electrodes are Movable, the
amplifier reads the current, and the hints name what a table or plot should show."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky.protocols import Checkable, Locatable, Movable
from bluesky.simulators import check_limits
from ophyd.utils.errors import LimitError, ReadOnlyError

from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.devices.electrode import InputElectrodeError
from dnpu_bluesky.plans import iv_sweep, train
from dnpu_bluesky.storage import load_run
from dnpu_bluesky.tasks import BooleanGate

CONTROLS = {"e1": 0.2, "e2": -0.1}


@pytest.fixture
def dnpu():
    device = build_dnpu()
    for name, volts in CONTROLS.items():
        getattr(device, name).setpoint.put(volts)
    yield device
    device.backend.close()


def _expected_current(dnpu, e0_volts: float) -> float:
    """The virtual device's current with e0 at ``e0_volts`` and the other setpoints held."""
    point = dnpu.setpoints()
    point[0] = e0_volts
    return float(dnpu.backend.model.current(point))


def _docs(documents, name):
    return [doc for doc_name, doc in documents if doc_name == name]


def test_an_electrode_is_a_movable_bluesky_knows_where_it_is(RE, dnpu):
    assert isinstance(dnpu.e0, Movable)
    assert isinstance(dnpu.e0, Locatable)
    assert isinstance(dnpu.e0, Checkable)
    RE(bps.mv(dnpu.e0, 0.15))
    assert dnpu.e0.position == 0.15
    assert dnpu.e0.setpoint.get() == 0.15
    assert dnpu.total_device_seconds == 0.0  # a move applies nothing; the next stream does
    assert dnpu.e0.locate() == {"setpoint": 0.15, "readback": 0.0}
    dnpu.trigger().wait(10)
    assert dnpu.e0.locate() == {"setpoint": 0.15, "readback": pytest.approx(0.15)}
    assert RE(bps.rd(dnpu.e0)).plan_result == pytest.approx(0.15)
    with pytest.raises(ReadOnlyError):
        dnpu.e0.readback.put(0.3)


def test_scan_over_an_electrode_lands_in_tiled_with_readback_and_current(stored_RE, storage, dnpu):
    (uid,) = stored_RE(bp.scan([dnpu], dnpu.e0, -1.0, 0.4, 5)).run_start_uids
    primary = load_run(storage.client, uid).primary.read()
    voltages = np.linspace(-1.0, 0.4, 5)
    np.testing.assert_allclose(primary["dnpu_e0_readback"], voltages, atol=1e-12)
    np.testing.assert_allclose(primary["dnpu_e0_setpoint"], voltages, atol=1e-12)
    expected = [_expected_current(dnpu, v) for v in voltages]
    np.testing.assert_allclose(primary["dnpu_current"], expected, atol=0.5)
    # The other electrodes were held where they were.
    np.testing.assert_allclose(primary["dnpu_e1_readback"], CONTROLS["e1"])
    assert np.ptp(expected) > 10  # the sweep moves the current well beyond the tolerance


def test_rel_scan_moves_relative_to_the_setpoint_and_puts_it_back(RE, documents, dnpu):
    RE(bps.mv(dnpu.e0, 0.1))
    RE(bp.rel_scan([dnpu], dnpu.e0, -0.1, 0.1, 3))
    readbacks = [event["data"]["dnpu_e0_readback"] for event in _docs(documents, "event")]
    np.testing.assert_allclose(readbacks, [0.0, 0.1, 0.2], atol=1e-12)
    assert dnpu.e0.position == 0.1


def test_list_scan_and_iv_sweep_take_the_electrode(RE, documents, dnpu):
    RE(bp.list_scan([dnpu], dnpu.e0, [0.3, -1.0, 0.0]))
    events = _docs(documents, "event")
    np.testing.assert_allclose([e["data"]["dnpu_e0_readback"] for e in events], [0.3, -1.0, 0])
    currents = [e["data"]["dnpu_current"] for e in events]
    expected = [_expected_current(dnpu, v) for v in (0.3, -1.0, 0.0)]
    np.testing.assert_allclose(currents, expected, atol=0.5)
    assert np.ptp(expected) > 10

    documents.clear()
    RE(iv_sweep(dnpu, dnpu.e0, -0.5, 0.5, 3))
    events = _docs(documents, "event")
    np.testing.assert_allclose([e["data"]["dnpu_e0_readback"] for e in events], [-0.5, 0, 0.5])
    expected = [_expected_current(dnpu, v) for v in (-0.5, 0.0, 0.5)]
    np.testing.assert_allclose([e["data"]["dnpu_current"] for e in events], expected, atol=0.5)


def test_out_of_limit_and_input_moves_are_refused_with_no_sample_played(RE, dnpu):
    high = dnpu.e0.limits[1]
    with pytest.raises(LimitError, match=r"dnpu_e0_setpoint: .* outside the electrode limits"):
        RE(bps.mv(dnpu.e0, high + 0.1))
    with pytest.raises(InputElectrodeError, match="e3 is an input electrode"):
        RE(bps.mv(dnpu.e3, 0.1))
    assert dnpu.e0.position == 0.0 and dnpu.e3.position == 0.0
    assert dnpu.total_device_seconds == 0.0
    assert dnpu.last_waveform is None
    # bluesky's dry run finds a scan's refusal without playing any of its points.
    with pytest.raises(LimitError):
        check_limits(bp.scan([dnpu], dnpu.e0, 0.0, high + 0.1, 3))
    check_limits(bp.scan([dnpu], dnpu.e0, -0.2, 0.2, 3))  # within the limits: no error


def test_count_of_the_amplifier_records_the_current_in_tiled(stored_RE, storage, dnpu):
    (uid,) = stored_RE(bp.count([dnpu.amplifier], num=2)).run_start_uids
    primary = load_run(storage.client, uid).primary.read()
    assert list(primary.data_vars) == ["dnpu_current"]
    np.testing.assert_allclose(primary["dnpu_current"], _expected_current(dnpu, 0.0), atol=0.5)
    assert primary["dnpu_current"].attrs.get("units", "nA") == "nA"


def test_after_training_a_scan_plays_the_device_as_before_it(RE, documents, dnpu):
    before = (dnpu.inputs.get(), dnpu.input_cases.get(), dnpu.mode.get(), dnpu.frequencies())
    outcome = RE(train(dnpu, BooleanGate("XOR"), seed=0, max_iterations=5))
    assert outcome.plan_result.inputs != before[0]  # the screening chose other inputs
    after = (dnpu.inputs.get(), dnpu.input_cases.get(), dnpu.mode.get(), dnpu.frequencies())
    assert after[:3] == before[:3]
    np.testing.assert_array_equal(after[3], before[3])
    documents.clear()
    RE(bp.scan([dnpu], dnpu.e0, -0.2, 0.2, 3))  # the trained controls stay where they are
    events = _docs(documents, "event")
    np.testing.assert_allclose([e["data"]["dnpu_e0_readback"] for e in events], [-0.2, 0, 0.2])
    for index in dnpu.indices("input"):  # held at their own setpoints: no input cases
        held = [e["data"][f"{dnpu.electrodes[index].name}_readback"] for e in events]
        np.testing.assert_allclose(held, dnpu.setpoints()[index], atol=1e-12)


def test_hints_show_the_moved_electrode_and_the_current(RE, documents, dnpu):
    assert dnpu.hints == {"fields": ["dnpu_current"]}
    assert dnpu.amplifier.hints == {"fields": ["dnpu_current"]}
    assert dnpu.e0.hints == {"fields": ["dnpu_e0_readback"]}
    RE(bp.scan([dnpu], dnpu.e0, -0.2, 0.2, 3))
    (start,) = _docs(documents, "start")
    assert start["hints"]["dimensions"] == [(["dnpu_e0_readback"], "primary")]
    (descriptor,) = _docs(documents, "descriptor")
    assert descriptor["hints"]["dnpu"] == {"fields": ["dnpu_current"]}


def test_best_effort_table_of_a_scan_shows_the_electrode_and_the_current(RE, dnpu, capsys):
    from bluesky.callbacks.best_effort import BestEffortCallback

    table = BestEffortCallback()
    table.disable_plots()
    RE.subscribe(table)
    RE(bp.scan([dnpu], dnpu.e0, -0.2, 0.2, 3))
    header = next(line for line in capsys.readouterr().out.splitlines() if "seq_num" in line)
    columns = [cell.strip() for cell in header.strip("| ").split("|")]
    assert columns == ["seq_num", "time", "dnpu_e0_readback", "dnpu_current"]


def test_a_sweep_of_the_setpoint_signal_names_it_as_its_dimension(RE, documents, dnpu):
    RE(iv_sweep(dnpu, dnpu.e2, -0.5, 0.5, 3))
    (start,) = _docs(documents, "start")
    assert start["hints"]["dimensions"] == [(["dnpu_e2_setpoint"], "primary")]
    (descriptor,) = _docs(documents, "descriptor")
    assert descriptor["hints"]["dnpu"] == {"fields": ["dnpu_current"]}
