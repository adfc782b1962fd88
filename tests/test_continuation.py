"""Continuing a past run and checking a device against it, called as from IPython."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dnpu_bluesky.config import SetupProfile, default_sim_profile
from dnpu_bluesky.continuation import (
    asked_margin,
    check_same_device,
    continuation_options,
    continue_from,
    past_training,
    virtual_dnpu_seed,
)
from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.plans import evaluate_controls, hge_gradient, train
from dnpu_bluesky.storage import load_run
from dnpu_bluesky.tasks import BooleanGate

SHORT = {"inputs": "e3,e4", "max_iterations": 2, "max_attempts": 1}


@pytest.fixture
def devices():
    """Build virtual DNPUs (``devices(seed=..., profile=...)``); closed after the test."""
    built = []

    def build(seed: int = 0, profile: SetupProfile | None = None, name: str = "dnpu"):
        dnpu = build_dnpu(profile or default_sim_profile(seed=seed), name=name)
        built.append(dnpu)
        return dnpu

    yield build
    for dnpu in built:
        dnpu.backend.close()


def _swapped_controls_profile() -> SetupProfile:
    """The virtual DNPU of seed 2 with the channels of e1 and e2 swapped."""
    data = default_sim_profile(seed=2).to_dict()
    first, second = data["electrodes"][1], data["electrodes"][2]
    first["channel"], second["channel"] = second["channel"], first["channel"]
    return SetupProfile.model_validate(data)


def test_continue_from_gives_train_the_past_runs_end_and_targets(storage, stored_RE, devices):
    dnpu = devices(seed=2)
    (uid,) = stored_RE(train(dnpu, BooleanGate("XOR"), seed=5, **SHORT)).run_start_uids
    evaluation = load_run(storage.client, uid)["evaluation"]
    ended = {
        key: evaluation[f"evaluation_{key}"].read()[-1]
        for key in ("controls", "input_zero_v", "input_one_v")
    }

    options = continue_from(storage, uid[:8], dnpu)

    assert options["task"] == BooleanGate("XOR")
    assert options["inputs"] == "e3,e4" and options["learn_levels"] is True
    assert options["initial_controls"] == pytest.approx(list(ended["controls"]))
    levels = np.array(options["initial_levels"])
    assert levels[:, 0] == pytest.approx(list(ended["input_zero_v"]))
    assert levels[:, 1] == pytest.approx(list(ended["input_one_v"]))
    assert options["seed"] == 6  # not the past run's own random starts
    assert options["target_margin_na"] == 2.0 and options["target_accuracy"] == 1.0
    assert options["md"] == {"source_run": uid, "source_device": "dnpu"}
    # A client gives the same as the storage.
    assert continue_from(storage.client, uid, dnpu) == options

    (continued,) = stored_RE(train(dnpu, **options, max_iterations=1)).run_start_uids
    run = load_run(storage.client, continued)
    start = run.metadata["start"]
    assert start["source_run"] == uid and start["seed"] == 6
    assert start["plan_args"]["initial_controls"] == pytest.approx(options["initial_controls"])
    assert run.primary["train_controls"].read()[0] == pytest.approx(options["initial_controls"])


def test_a_run_with_fixed_levels_is_continued_with_fixed_levels(storage, stored_RE, devices):
    dnpu = devices()
    plan = train(dnpu, BooleanGate("AND"), learn_levels=False, **SHORT)
    (uid,) = stored_RE(plan).run_start_uids
    options = continue_from(storage, uid, dnpu)
    assert options["learn_levels"] is False and "initial_levels" not in options
    assert options["seed"] == 1


def test_check_same_device_tells_devices_apart_and_refuses_other_channels(
    storage, stored_RE, devices, caplog
):
    dnpu = devices(seed=2)
    (uid,) = stored_RE(train(dnpu, BooleanGate("OR"), **SHORT)).run_start_uids
    past = past_training(load_run(storage.client, uid))
    assert past["control_electrodes"][:3] == ["e0 (sim/ao0)", "e1 (sim/ao1)", "e2 (sim/ao2)"]

    assert check_same_device(dnpu, past) is True
    assert check_same_device(devices(seed=2, name="again"), past) is True  # rebuilt: same model
    other = devices(seed=3, name="other")
    assert check_same_device(other, past) is False
    with caplog.at_level(logging.WARNING, logger="dnpu_bluesky.continuation"):
        continue_from(storage, uid, other)
    assert f"run {uid[:8]} was measured on another device than other" in caplog.text

    swapped = devices(profile=_swapped_controls_profile(), name="swapped")
    with pytest.raises(
        ValueError, match="this device has them on e0 \\(sim/ao0\\), e1 \\(sim/ao2\\)"
    ):
        check_same_device(swapped, past)
    with pytest.raises(ValueError, match="give the setup it was measured with"):
        continue_from(storage, uid, swapped)


def test_past_training_of_runs_side_by_side_names_the_device(storage, stored_RE, devices):
    pair = [devices(seed=0, name="dnpu1"), devices(seed=1, name="dnpu2")]
    uids = stored_RE(train(pair, BooleanGate("NAND"), seed=3, **SHORT)).run_start_uids
    first, other = (load_run(storage.client, uid) for uid in uids)  # a run per device

    with pytest.raises(ValueError, match="not 'dnpu1'"):
        past_training(other, "dnpu1")
    second = past_training(other)
    assert second["device"] == "dnpu2" and virtual_dnpu_seed(second) == 1
    assert past_training(other, "dnpu2")["device"] == "dnpu2"
    assert virtual_dnpu_seed(past_training(first)) == 0
    assert check_same_device(pair[1], second) and not check_same_device(pair[0], second)
    assert continue_from(storage, uids[1], pair[1])["md"] == {
        "source_run": uids[1],
        "source_device": "dnpu2",
    }
    # The seed names the virtual DNPU only: not a device of another kind.
    assert virtual_dnpu_seed({**second, "backend": {"name": "nidaqmx"}}) is None


def test_the_margin_a_run_asked_for_carries_over(storage, stored_RE, devices):
    dnpu = devices()
    default = stored_RE(train(dnpu, BooleanGate("XNOR"), **SHORT)).run_start_uids[0]
    past = past_training(load_run(storage.client, default))
    assert past["target_margin_na"] == 2.0 and asked_margin(past) is None

    task = BooleanGate("XNOR", loss_params={"offset_na": 30.0})
    (asked,) = stored_RE(train(dnpu, task, target_margin_na=30.0, **SHORT)).run_start_uids
    past = past_training(load_run(storage.client, asked))
    assert past["target_margin_na"] == 30.0 and asked_margin(past) == 30.0
    assert continuation_options(past)["target_margin_na"] == 30.0

    # An evaluate_controls run keeps the margin its task's loss is centred on.
    plan = evaluate_controls(dnpu, task, past["controls"], inputs=past["inputs"])
    (evaluated,) = stored_RE(plan).run_start_uids
    again = past_training(load_run(storage.client, evaluated))
    assert again["target_margin_na"] == 30.0 and asked_margin(again) == 30.0


def test_only_training_runs_can_be_continued(storage, stored_RE, devices):
    dnpu = devices()
    (uid,) = stored_RE(hge_gradient(dnpu)).run_start_uids
    with pytest.raises(ValueError, match=f"run {uid[:8]} is not a training run"):
        continue_from(storage, uid, dnpu)
    with pytest.raises(KeyError, match="No run with uid"):
        continue_from(storage, "0000000000", dnpu)
