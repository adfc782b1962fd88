"""Boolean gates and sphere classification: cases, labels, splits, evaluation, make_task."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dnpu_bluesky.tasks import (
    GATES,
    BooleanGate,
    SphereClassification,
    Task,
    corrsig_loss,
    make_task,
    task_from_description,
)

TRUTH = {
    "AND": [0, 0, 0, 1],
    "OR": [0, 1, 1, 1],
    "NAND": [1, 1, 1, 0],
    "NOR": [1, 0, 0, 0],
    "XOR": [0, 1, 1, 0],
    "XNOR": [1, 0, 0, 1],
}


@pytest.mark.parametrize("gate", GATES)
def test_gate_truth_tables_follow_the_input_voltages(gate: str) -> None:
    task = BooleanGate(gate, input_low_v=-0.5, input_high_v=0.25)
    inputs = task.input_voltages()
    np.testing.assert_array_equal(inputs, [[-0.5, -0.5], [-0.5, 0.25], [0.25, -0.5], [0.25, 0.25]])
    bits = (inputs > 0).astype(bool)
    logic = {
        "AND": bits[:, 0] & bits[:, 1],
        "OR": bits[:, 0] | bits[:, 1],
        "XOR": bits[:, 0] ^ bits[:, 1],
    }
    logic.update({"N" + k: ~v for k, v in logic.items()})
    logic["XNOR"] = logic.pop("NXOR")
    np.testing.assert_array_equal(task.targets(), logic[gate].astype(int))
    np.testing.assert_array_equal(task.targets(), TRUTH[gate])
    assert task.n_inputs == 2
    assert isinstance(task, Task)


def test_gate_name_is_case_insensitive_and_unknown_gates_list_the_choices() -> None:
    assert BooleanGate("xnor").gate == "XNOR"
    assert BooleanGate("xnor") == BooleanGate("XNOR")
    with pytest.raises(ValueError, match="AND, OR, NAND, NOR, XOR, XNOR"):
        BooleanGate("IMPLIES")
    with pytest.raises(ValueError, match="below input_high_v"):
        BooleanGate("AND", input_low_v=0.3, input_high_v=-0.3)


def test_gate_loss_and_evaluate_use_the_truth_table() -> None:
    task = BooleanGate("XOR")
    outputs = np.array([5.0, 60.0, 55.0, 20.0])
    loss, grad = task.loss(outputs)
    expected_loss, expected_grad = corrsig_loss(outputs, np.array([0, 1, 1, 0]))
    assert loss == expected_loss
    np.testing.assert_array_equal(grad, expected_grad)
    score = task.evaluate(outputs)
    assert score.solved
    assert score.margin_na == pytest.approx(35.0)
    assert score.threshold_na == pytest.approx(37.5)
    assert not task.evaluate(np.array([5.0, 60.0, 15.0, 20.0])).solved


def test_gate_loss_choice_and_parameters_are_checked() -> None:
    task = BooleanGate("AND", loss_name="margin", loss_params={"target_margin_na": 20.0})
    outputs = np.array([0.0, 1.0, 2.0, 40.0])
    # Margin 38 nA is far beyond the 20 nA target: only the correlation term (5 nA weight) is left.
    corr = np.corrcoef(outputs, task.targets())[0, 1]
    assert task.loss(outputs)[0] == pytest.approx(5.0 * (1 - corr), abs=1e-5)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        BooleanGate("AND", loss_name="hinge")
    with pytest.raises(ValueError, match=r"loss 'mse'.*low_na"):
        BooleanGate("AND", loss_name="mse")
    with pytest.raises(ValueError, match=r"loss 'corrsig'.*margin_na"):
        BooleanGate("AND", loss_params={"margin_na": 3.0})


def test_wrong_number_of_outputs_and_unknown_split_are_refused() -> None:
    task = BooleanGate("OR")
    with pytest.raises(ValueError, match="expected 4 outputs"):
        task.loss(np.zeros(3))
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        task.targets("validation")


@pytest.mark.parametrize(
    "task",
    [
        BooleanGate("NAND", loss_name="mse", loss_params={"low_na": 0, "high_na": 50}),
        BooleanGate("xnor", input_low_v=-0.5, input_high_v=0.1),
        SphereClassification(n_points=40, batch_size=10),
        SphereClassification(seed=3, input_range_v=(-0.4, 0.1), radius_fraction=0.6),
    ],
)
def test_describe_is_json_serialisable_and_rebuilds_the_task(task: Task) -> None:
    description = json.loads(json.dumps(task.describe()))
    assert description["name"] == task.name
    assert description["n_inputs"] == task.n_inputs
    rebuilt = task_from_description(description)
    assert rebuilt == task
    for split in ("train", "test"):
        np.testing.assert_array_equal(rebuilt.input_voltages(split), task.input_voltages(split))
        np.testing.assert_array_equal(rebuilt.targets(split), task.targets(split))


def test_a_description_that_does_not_rebuild_exactly_is_refused() -> None:
    description = json.loads(json.dumps(BooleanGate("XOR").describe()))
    description["targets"] = [1, 1, 1, 1]
    with pytest.raises(ValueError, match=r"differs from its description in \['targets'\]"):
        task_from_description(description)
    with pytest.raises(ValueError, match="cannot rebuild a task of kind 'ring'"):
        task_from_description({"task": "ring"})


def test_sphere_labels_match_the_geometry_and_classes_are_balanced() -> None:
    task = SphereClassification(n_points=200, seed=3, input_range_v=(-0.6, 0.4))
    points = task.input_voltages("all")
    labels = task.targets("all")
    assert points.shape == (200, 3)
    assert np.all((points >= -0.6) & (points <= 0.4))
    distance = np.linalg.norm(points - (-0.1), axis=1)
    np.testing.assert_array_equal(labels, (distance < task.radius_v).astype(int))
    assert labels.sum() == 100
    # The default radius holds half the cube: (4/3) pi r^3 = edge^3 / 2.
    assert 4 / 3 * np.pi * task.radius_v**3 == pytest.approx(0.5 * 1.0**3)
    assert isinstance(task, Task)
    assert task.n_inputs == 3


def test_sphere_split_is_disjoint_stratified_and_seeded() -> None:
    task = SphereClassification(n_points=120, test_fraction=0.25, seed=1)
    train, test = task.input_voltages("train"), task.input_voltages("test")
    assert train.shape == (90, 3)
    assert test.shape == (30, 3)
    assert task.targets("train").mean() == 0.5
    assert task.targets("test").mean() == 0.5
    rows = {tuple(p) for p in train}
    assert not rows & {tuple(p) for p in test}
    assert len(rows | {tuple(p) for p in test}) == 120
    same = SphereClassification(n_points=120, test_fraction=0.25, seed=1)
    np.testing.assert_array_equal(same.input_voltages("test"), test)
    other = SphereClassification(n_points=120, test_fraction=0.25, seed=2)
    assert not np.allclose(other.input_voltages("train"), train)


def test_small_sphere_is_still_balanced() -> None:
    task = SphereClassification(n_points=60, radius_fraction=0.3)
    labels = task.targets("all")
    assert labels.sum() == 30
    inside = task.input_voltages("all")[labels == 1]
    assert np.all(np.linalg.norm(inside - task.center_v, axis=1) < task.radius_v)


def test_sphere_evaluate_on_a_perfect_separator() -> None:
    task = SphereClassification(n_points=100, seed=4)
    points = task.input_voltages("test")
    # A separator: current falls with distance from the centre, 10 nA per 0.1 V.
    outputs = 200.0 - 100.0 * np.linalg.norm(points - task.center_v, axis=1)
    score = task.evaluate(outputs, "test")
    assert score.accuracy == 1.0
    assert score.solved
    labels = task.targets("test")
    expected_margin = outputs[labels == 1].min() - outputs[labels == 0].max()
    assert expected_margin > 0
    assert score.margin_na == pytest.approx(expected_margin)
    assert outputs[labels == 0].max() < score.threshold_na < outputs[labels == 1].min()
    # The same separator with its polarity inverted classifies badly.
    assert task.evaluate(-outputs, "test").accuracy <= 0.5


def test_sphere_minibatches_are_stratified_and_index_the_loss() -> None:
    task = SphereClassification(n_points=120, batch_size=16)
    rng = np.random.default_rng(0)
    labels = task.targets()
    for _ in range(20):
        batch = task.minibatch(rng)
        assert batch.size == 16
        assert np.unique(batch).size == 16
        assert labels[batch].sum() == 8
    outputs = np.linspace(0.0, 50.0, 16)
    loss, grad = task.loss(outputs, indices=batch)
    assert grad.shape == (16,)
    assert np.isfinite(loss)
    assert task.evaluate(outputs, indices=batch).accuracy >= 0.5
    full = SphereClassification(n_points=120).minibatch(rng)
    np.testing.assert_array_equal(full, np.arange(90))


def test_tasks_state_their_test_split_and_minibatches() -> None:
    gate = BooleanGate("XOR")
    assert gate.has_test_split is False
    assert gate.batch_size is None
    np.testing.assert_array_equal(gate.minibatch(np.random.default_rng(0)), np.arange(4))
    loss, grad = gate.loss(np.array([1.0, 9.0, 8.0, 2.0]), indices=np.arange(4))
    assert (loss, grad.tolist()) == (
        gate.loss(np.array([1.0, 9.0, 8.0, 2.0]))[0],
        gate.loss(np.array([1.0, 9.0, 8.0, 2.0]))[1].tolist(),
    )
    sphere = SphereClassification(n_points=40)
    assert sphere.has_test_split is True
    assert sphere.batch_size is None
    assert SphereClassification(n_points=40, batch_size=8).batch_size == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_points": 5}, "n_points"),
        ({"radius_fraction": 1.5}, "radius_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"n_points": 10, "test_fraction": 0.05}, "without class"),
        ({"batch_size": 1}, "batch_size"),
        ({"input_range_v": (0.3, -0.7)}, "input_range_v"),
        ({"loss_name": "nope"}, "unknown loss"),
    ],
)
def test_sphere_refuses_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SphereClassification(**kwargs)


def test_make_task_names_and_errors() -> None:
    assert make_task("boolean:xor") == BooleanGate("XOR")
    assert make_task(" Boolean:AND ", input_high_v=0.2) == BooleanGate("AND", input_high_v=0.2)
    sphere = make_task("sphere", n_points=40, seed=9)
    assert isinstance(sphere, SphereClassification)
    assert sphere.seed == 9
    with pytest.raises(ValueError, match="name the gate"):
        make_task("boolean")
    with pytest.raises(ValueError, match="unknown gate 'MUX'"):
        make_task("boolean:MUX")
    with pytest.raises(ValueError, match=r"unknown task 'ring'.*'sphere'"):
        make_task("ring")
    with pytest.raises(ValueError, match=r"no field radius.*accepted are n_points"):
        make_task("sphere", radius=0.3)
    with pytest.raises(ValueError, match="in the name"):
        make_task("boolean:AND", gate="OR")


def test_tasks_do_not_import_bluesky_or_ophyd() -> None:
    code = (
        "import sys, dnpu_bluesky.tasks; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'bluesky', 'ophyd'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
