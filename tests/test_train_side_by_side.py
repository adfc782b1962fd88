"""Several DNPUs trained side by side, a run per device, through a real RunEngine and Tiled."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from tiled.queries import Key

from dnpu_bluesky.callbacks import TrainingProgress
from dnpu_bluesky.config import default_sim_profile
from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.figures import gates_figure, loss_curve
from dnpu_bluesky.plans import train, train_boolean_gates, train_genetic
from dnpu_bluesky.sim import SimulatedBackend, VirtualDNPU
from dnpu_bluesky.storage import find_runs, load_run
from dnpu_bluesky.tasks import BooleanGate

#: Runs to a fixed number of steps: no measured margin reaches it.
NEVER = 1e6


@pytest.fixture
def pair():
    devices = [
        build_dnpu(default_sim_profile(seed=0), name="dnpu_a"),
        build_dnpu(default_sim_profile(seed=1), name="dnpu_b"),
    ]
    yield devices
    for device in devices:
        device.backend.close()


def _stream_names(documents):
    return {doc["name"] for name, doc in documents if name == "descriptor"}


def _streams_per_run(documents):
    streams = {}
    for name, doc in documents:
        if name == "descriptor":
            streams.setdefault(doc["run_start"], set()).add(doc["name"])
    return streams


def test_each_device_trains_as_it_would_alone(stored_RE, storage, pair, documents):
    outcome = stored_RE(train(pair, BooleanGate("XOR"), seed=3))
    results = outcome.plan_result
    assert [r.device for r in results] == ["dnpu_a", "dnpu_b"]
    assert all(r.solved and r.margin_na >= 2.0 for r in results)
    # A run per device, with the streams of a device trained alone.
    uids = outcome.run_start_uids
    assert len(uids) == 2
    streams = _streams_per_run(documents)
    for uid in uids:
        assert {"primary", "hge_raw", "hge", "eval_raw", "evaluation"} <= streams[uid]

    # The first device, alone and with the same seed, measures and decides exactly the same.
    alone = build_dnpu(default_sim_profile(seed=0), name="dnpu_a")
    try:
        outcome_alone = stored_RE(train(alone, BooleanGate("XOR"), seed=3))
        single = outcome_alone.plan_result
    finally:
        alone.backend.close()
    assert single.controls == results[0].controls
    assert (single.iterations, single.measurements) == (
        results[0].iterations,
        results[0].measurements,
    )
    assert single.device_s == pytest.approx(results[0].device_s)

    # Each run reads as a single device's run: primary steps, its own device's setup.
    runs = [load_run(storage.client, uid) for uid in uids]
    group = {run.metadata["start"]["side_by_side"]["group"] for run in runs}
    assert len(group) == 1
    for run, result in zip(runs, results, strict=True):
        start = run.metadata["start"]
        assert start["detectors"] == [result.device]
        assert start["side_by_side"]["devices"] == ["dnpu_a", "dnpu_b"]
        assert "model" in start["dnpu_backend"]  # the device's own description
        steps = run.primary.read()
        assert steps["train_loss"].shape == (result.iterations,)
        assert steps["train_controls"].dims == ("time", "control")
        curve = loss_curve(run)
        assert curve["loss"].size == result.iterations
        assert curve["device_s"][-1] <= result.device_s
    figure = gates_figure(runs)
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert len(titles) == 2 and "(dnpu_b)" in titles[1]

    # One query finds every run of a device: alone or side by side, the same key.
    identity = runs[0].metadata["start"]["dnpu_backend"]["model"]["parameter_hash"]
    found = find_runs(storage.client).search(
        Key("start.dnpu_backend.model.parameter_hash") == identity
    )
    single_uid = outcome_alone.run_start_uids[0]
    assert set(found) == {uids[0], single_uid}


class _TimedDAQ(SimulatedBackend):
    """The simulated DAQ, taking real time per acquisition as hardware does, with a log."""

    def __init__(self, model, log):
        super().__init__(model)
        self.log = log

    def play_and_record(self, ao_volts, sample_rate):
        started = time.monotonic()
        time.sleep(0.03)
        acquisition = super().play_and_record(ao_volts, sample_rate)
        self.log.append((started, time.monotonic()))
        return acquisition


def _overlaps(intervals):
    intervals = sorted(intervals)
    return sum(b[0] < a[1] for a, b in itertools.pairwise(intervals))


@pytest.mark.parametrize("shared", [False, True])
def test_separate_backends_acquire_together_a_shared_one_takes_turns(RE, shared):
    log: list[tuple[float, float]] = []
    first = _TimedDAQ(VirtualDNPU(0), log)
    backends = [first, first if shared else _TimedDAQ(VirtualDNPU(1), log)]
    devices = [
        build_dnpu(default_sim_profile(seed=k), name=f"dnpu_{k}", backend=backend)
        for k, backend in enumerate(backends)
    ]
    results = RE(
        train(devices, BooleanGate("AND"), max_iterations=4, max_attempts=1,
              target_margin_na=NEVER, inputs="e3,e4")
    ).plan_result  # fmt: skip
    assert [r.iterations for r in results] == [4, 4]
    assert len(log) == sum(r.measurements for r in results)
    if shared:
        assert _overlaps(log) == 0
    else:
        assert _overlaps(log) >= 4  # every step's two acquisitions ran at the same time
    for backend in backends:
        assert np.all(backend.dc_volts == 0)
        backend.close()


def test_bad_device_lists_fail_before_any_voltage(RE, pair):
    with pytest.raises(ValueError, match="no DNPU given"):
        RE(train([], BooleanGate("XOR")))
    twin = build_dnpu(default_sim_profile(seed=2), name="dnpu_a")
    with pytest.raises(ValueError, match="distinct names"):
        RE(train([pair[0], twin], BooleanGate("XOR")))
    three_inputs = build_dnpu(default_sim_profile(seed=2, inputs=(1, 2, 4)), name="dnpu_c")
    with pytest.raises(ValueError, match="dnpu_c has 3 input electrodes"):
        RE(train([pair[0], three_inputs], BooleanGate("XOR")))
    for device in (*pair, twin, three_inputs):
        assert device.total_device_seconds == 0.0
    twin.backend.close()
    three_inputs.backend.close()


def test_genetic_algorithm_side_by_side_with_progress(RE, pair, documents, capsys):
    RE.subscribe(TrainingProgress())
    results = RE(
        train_genetic(pair, BooleanGate("OR"), population=8, n_elite=2, generations=2,
                      target_margin_na=NEVER)
    ).plan_result  # fmt: skip
    assert [(r.device, r.iterations, r.measurements) for r in results] == [
        ("dnpu_a", 2, 17),
        ("dnpu_b", 2, 17),
    ]
    per_run = _streams_per_run(documents)
    assert len(per_run) == 2 and all("primary" in streams for streams in per_run.values())
    printed = capsys.readouterr().err  # a bar per device's run, 2 generations each
    assert "OR dnpu_a ga: 100%" in printed and "OR dnpu_b ga: 100%" in printed
    assert printed.count("| 2/2 [") >= 2


def test_train_boolean_gates_on_a_list_gives_a_list_per_gate(RE, pair):
    results = RE(
        train_boolean_gates(pair, ["NAND"], max_iterations=3, max_attempts=1,
                            target_margin_na=NEVER)
    ).plan_result  # fmt: skip
    assert list(results) == ["NAND"]
    assert [r.device for r in results["NAND"]] == ["dnpu_a", "dnpu_b"]
