"""Input electrodes and their levels as trained parameters: the pure rules and the plans."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import plan_stubs as bps

from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.plans import (
    configure_hge,
    hge_gradient,
    train,
    train_genetic,
    validate_gradients,
)
from dnpu_bluesky.results import trained_setting
from dnpu_bluesky.storage import load_run
from dnpu_bluesky.tasks import BooleanGate, SphereClassification
from dnpu_bluesky.tasks.levels import (
    apply_levels,
    check_level_bounds,
    full_swing_levels,
    level_jacobian,
    project_levels,
)
from dnpu_bluesky.tasks.screening import reachable_margin

BOUNDS = np.array([[-1.0, 0.5], [-0.6, 0.2]])


@pytest.fixture
def dnpu():
    device = build_dnpu()
    yield device
    device.backend.close()


def test_levels_map_unit_inputs_exactly_onto_the_levels():
    levels = np.array([[-0.7, 0.3], [0.4, -0.2]])
    unit = BooleanGate("XOR").unit_inputs()
    cases = apply_levels(unit, levels)
    assert cases.tolist() == [[-0.7, 0.4], [-0.7, -0.2], [0.3, 0.4], [0.3, -0.2]]
    # A sphere's unit inputs give back its points with its own range as the levels.
    sphere = SphereClassification(n_points=16)
    np.testing.assert_allclose(
        apply_levels(sphere.unit_inputs("test"), sphere.input_levels()),
        sphere.input_voltages("test"),
    )


def test_level_jacobian_is_the_chain_rule_over_the_cases():
    rng = np.random.default_rng(0)
    unit = BooleanGate("AND").unit_inputs()
    slopes = rng.normal(size=(4, 2))
    d_loss = rng.normal(size=4)
    gradient = (d_loss @ level_jacobian(slopes, unit)).reshape(2, 2)
    # By finite differences of the loss's linearisation L = d_loss . (slopes * V).
    levels = np.array([[-0.5, 0.1], [0.2, -0.3]])

    def linear_loss(flat: np.ndarray) -> float:
        cases = apply_levels(unit, flat.reshape(2, 2))
        return float(np.sum(d_loss * np.sum(slopes * cases, axis=1)))

    h = 1e-6
    numeric = [
        (linear_loss(levels.ravel() + h * e) - linear_loss(levels.ravel() - h * e)) / (2 * h)
        for e in np.eye(4)
    ]
    np.testing.assert_allclose(gradient.ravel(), numeric, rtol=1e-6)
    # For a gate: input 0's logical-0 level collects the cases 00 and 01.
    assert gradient[0, 0] == pytest.approx(d_loss[0] * slopes[0, 0] + d_loss[1] * slopes[1, 0])


def test_projection_keeps_bounds_swing_and_polarity():
    swing = 0.3
    close = np.array([[0.0, 0.1], [0.1, 0.05]])  # too close, one of each polarity
    projected = project_levels(close, BOUNDS, swing)
    assert np.all(np.abs(projected[:, 1] - projected[:, 0]) >= swing - 1e-12)
    assert projected[0, 1] > projected[0, 0] and projected[1, 1] < projected[1, 0]
    assert np.all(projected >= BOUNDS[:, [0]]) and np.all(projected <= BOUNDS[:, [1]])
    # Levels at an edge are pushed inwards, and feasible levels stay as they are.
    edge = project_levels(np.array([[0.5, 0.5], [-0.6, -0.6]]), BOUNDS, swing)
    np.testing.assert_allclose(edge, [[0.2, 0.5], [-0.6, -0.3]])
    fine = np.array([[-0.9, 0.4], [0.15, -0.5]])
    np.testing.assert_array_equal(project_levels(fine, BOUNDS, swing), fine)
    full = full_swing_levels(BOUNDS, np.array([False, True]))
    np.testing.assert_array_equal(full, [[-1.0, 0.5], [0.2, -0.6]])


def test_reachable_margin_is_the_linearised_look_ahead():
    targets = np.array([0, 0, 0, 1])  # AND
    outputs = np.array([1.0, 2.0, 3.0, 0.0])
    bounds = np.array([[-1.0, 1.0], [-1.0, 1.0]])
    # Only parameter 0 matters: case 11 gains 100 nA/V, the others nothing.
    jacobian = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [100.0, 0.0]])
    point = np.zeros(2)
    assert reachable_margin(outputs, jacobian, targets, point, bounds) == pytest.approx(27.0)
    assert reachable_margin(outputs, jacobian, targets, point, bounds, 0.1) == pytest.approx(7.0)
    # At its bound a parameter cannot move on: only 0.05 V of room is left.
    near = np.array([0.95, 0.0])
    assert reachable_margin(outputs, jacobian, targets, near, bounds) == pytest.approx(2.0)
    # Nothing to move: the margin measured now.
    assert reachable_margin(outputs, 0 * jacobian, targets, point, bounds) == pytest.approx(-3.0)


def test_too_narrow_an_electrode_for_the_swing_is_refused():
    with pytest.raises(ValueError, match=r"narrower than the minimum swing 0\.9 V"):
        check_level_bounds(BOUNDS, 0.9)
    with pytest.raises(ValueError, match="min_swing_v must be a positive"):
        check_level_bounds(BOUNDS, 0.0)


def test_inputs_signal_assigns_roles_and_refuses_nonsense(RE, dnpu):
    assert dnpu.inputs.get() == "e3,e4"
    RE(bps.mv(dnpu.inputs, "e2,e0"))
    assert dnpu.inputs.get() == "e0,e2" and dnpu.input_names == ["e0", "e2"]
    assert dnpu.indices("control").tolist() == [1, 3, 4, 5, 6]
    for bad in ("e0,e0", "e7,e1", "e0,e1,e2,e3,e4,e5,e6", 3):
        with pytest.raises(ValueError, match="inputs must be 1 to 6 distinct names"):
            dnpu.inputs.put(bad)
    assert dnpu.inputs.get() == "e0,e2"


def test_hge_with_a_tone_on_every_electrode_measures_the_inputs_slopes(RE, dnpu):
    RE(configure_hge(dnpu, electrodes="all"))
    frequencies = dnpu.frequencies()
    assert np.all(frequencies > 0) and len(set(frequencies)) == 7
    cases = [[-0.5, -0.4], [-0.5, 0.1], [0.1, -0.4], [0.1, 0.1]]
    dnpu.e0.setpoint.put(-0.3)
    estimate = RE(hge_gradient(dnpu, input_cases=cases)).plan_result
    assert estimate.gradient.shape == (4, 7)
    truth = dnpu.backend.model.jacobian(dnpu.operating_points())
    z = (estimate.gradient - truth) / estimate.stderr
    assert np.max(np.abs(z[:, dnpu.indices("input")])) < 6, z
    assert np.max(np.abs(z)) < 6, z


def test_training_learns_levels_on_pinned_inputs_and_records_them(stored_RE, storage, dnpu):
    outcome = stored_RE(train(dnpu, BooleanGate("NAND"), inputs="e1,e2", seed=2, max_iterations=60))
    result = outcome.plan_result
    assert result.solved and result.inputs == "e1,e2"
    levels = np.array(result.input_levels)
    assert levels.shape == (2, 2)
    assert np.all(np.abs(levels[:, 1] - levels[:, 0]) >= 0.3 - 1e-9)
    limits = dnpu.limits[[1, 2]]
    assert np.all(levels >= limits[:, [0]] + 0.02) and np.all(levels <= limits[:, [1]] - 0.02)
    run = load_run(storage.client, outcome.run_start_uids[0])
    assert "screening" not in run
    train_stream = run.primary.read()
    assert set(train_stream["train_inputs"].values) == {"e1,e2"}
    zero = train_stream["train_input_zero_v"].values
    assert zero.shape == (result.iterations, 2) and np.ptp(zero[:, 0]) > 0  # the levels moved
    setting = trained_setting(run)
    assert setting["inputs"] == "e1,e2" and setting["learned_levels"]
    np.testing.assert_allclose(setting["input_levels"], result.input_levels)
    assert [e.split()[0] for e in setting["control_electrodes"]] == ["e0", "e3", "e4", "e5", "e6"]
    # The plan puts back the device's own inputs and tones.
    assert dnpu.inputs.get() == "e3,e4" and dnpu.frequencies()[[3, 4]].tolist() == [0, 0]
    # The final evaluation measured the recorded levels on the recorded electrodes.
    segments = run["eval_raw"]["dnpu_segment_dc"].read()[-1]
    np.testing.assert_allclose(
        segments[:, [1, 2]], apply_levels(BooleanGate("NAND").unit_inputs(), levels)
    )


def test_screening_ranks_every_pair_and_training_continues_the_best(stored_RE, storage, dnpu):
    outcome = stored_RE(
        train(dnpu, BooleanGate("XOR"), seed=0, max_iterations=3, max_attempts=2,
              target_margin_na=1e6, screen_budget_s=8.0)  # never reached: budget, then 2x3 steps
    )  # fmt: skip
    result = outcome.plan_result
    run = load_run(storage.client, outcome.run_start_uids[0])
    ranking = run["screening"].read()
    # Every pair, once per polarity class (the second input in the first's order, or not).
    assert ranking["screening_rank"].values.tolist() == list(range(1, 43))
    assert len(set(ranking["screening_inputs"].values)) == 21
    steps = run.primary.read()
    screened = int(np.sum(steps["train_attempt"].values == -1))
    # Screening stops at its budget: the step that crossed it is its last.
    seconds = steps["train_device_seconds"].values
    assert seconds[screened - 2] < 8.0 <= seconds[screened - 1] + 1e-9
    assert result.iterations == screened + 2 * 3
    attempts = steps["train_inputs"].values[screened:]
    best_two = ranking["screening_inputs"].values[:2].tolist()
    assert attempts.tolist() == [best_two[0]] * 3 + [best_two[1]] * 3
    assert run.metadata["start"]["plan_args"]["inputs"] == "screen"


@pytest.mark.parametrize("method", ["fd", "spsa"])
def test_peer_methods_learn_levels_too(RE, dnpu, method):
    result = RE(
        train(dnpu, BooleanGate("OR"), method=method, inputs="e0,e1", seed=1, max_iterations=2,
              max_attempts=1, target_margin_na=1e6)
    ).plan_result  # fmt: skip
    # 5 controls + 2 x 2 levels: finite differences take 2 streams per parameter.
    per_step = 18 if method == "fd" else 2
    assert result.measurements == 2 * per_step + 1
    assert np.array(result.input_levels).shape == (2, 2)


def test_genetic_algorithm_searches_inputs_and_levels(RE, dnpu, documents):
    result = RE(
        train_genetic(dnpu, BooleanGate("XNOR"), population=8, n_elite=2, generations=2,
                      target_margin_na=1e6, seed=3)
    ).plan_result  # fmt: skip
    pairs = {
        doc["data"]["dnpu_inputs"]
        for name, doc in documents
        if name == "event" and "dnpu_inputs" in doc["data"]
    }
    assert len(pairs) > 1  # the genomes sit on several input pairs
    assert result.inputs in pairs and np.array(result.input_levels).shape == (2, 2)


def test_fixed_levels_stay_fixed_and_keep_tones_off_the_inputs(RE, dnpu, documents):
    result = RE(
        train(dnpu, BooleanGate("AND", -0.6, 0.2), inputs="e3,e4", learn_levels=False,
              max_iterations=2, max_attempts=1, target_margin_na=1e6)
    ).plan_result  # fmt: skip
    assert result.input_levels == [[-0.6, 0.2], [-0.6, 0.2]]
    raw = [doc for name, doc in documents if name == "event" and "dnpu_segment_amplitudes" in
           doc["data"]]  # fmt: skip
    amplitudes = np.array(raw[0]["data"]["dnpu_segment_amplitudes"])
    assert np.all(amplitudes[:, [3, 4]] == 0) and np.all(amplitudes[:, [0, 1, 2, 5, 6]] > 0)


def test_bad_input_settings_are_refused_before_any_voltage(RE, dnpu, documents):
    with pytest.raises(ValueError, match="inputs names 3 electrodes"):
        RE(train(dnpu, BooleanGate("XOR"), inputs="e0,e1,e2"))
    with pytest.raises(ValueError, match="inputs must be 1 to 6 distinct names"):
        RE(train(dnpu, BooleanGate("XOR"), inputs="e0,e9"))
    with pytest.raises(ValueError, match="min_swing_v must be a positive number"):
        RE(train(dnpu, BooleanGate("XOR"), min_swing_v=0))
    with pytest.raises(ValueError, match="narrower than the minimum swing"):
        RE(train(dnpu, BooleanGate("XOR"), inputs="e3,e4", min_swing_v=0.99))
    with pytest.raises(ValueError, match="screen_budget_s must be >= 0"):
        RE(train(dnpu, BooleanGate("XOR"), screen_budget_s=float("nan")))
    assert not [doc for name, doc in documents if name == "start"]
    assert np.all(dnpu.backend.dc_volts == 0)


def test_all_tones_keep_the_controls_tones_and_validation_reads_the_controls(RE, dnpu):
    controls_only = dnpu.frequencies()
    RE(configure_hge(dnpu, electrodes="all"))
    everywhere = dnpu.frequencies()
    # Each control keeps its tone (and so its phase calibration); the inputs get the rest.
    control = dnpu.indices("control")
    np.testing.assert_array_equal(everywhere[control], controls_only[control])
    assert np.all(everywhere[dnpu.indices("input")] > controls_only.max())
    summary = RE(validate_gradients(dnpu, n_points=1, compare_sequential=False)).plan_result
    assert summary["cosine_hge_fd_median"] > 0.9
