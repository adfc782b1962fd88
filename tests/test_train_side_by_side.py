"""Several DNPUs trained side by side in one run, through a real RunEngine and Tiled."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from dnpu_bluesky.callbacks import TrainingProgress
from dnpu_bluesky.config import default_sim_profile
from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.figures import gates_figure, loss_curve
from dnpu_bluesky.plans import train, train_boolean_gates, train_genetic
from dnpu_bluesky.sim import SimulatedBackend, VirtualDNPU
from dnpu_bluesky.storage import load_run
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


def test_each_device_trains_as_it_would_alone(stored_RE, storage, pair, documents):
    outcome = stored_RE(train(pair, BooleanGate("XOR"), seed=3))
    results = outcome.plan_result
    assert [r.device for r in results] == ["dnpu_a", "dnpu_b"]
    assert all(r.solved and r.margin_na >= 2.0 for r in results)
    for device in ("dnpu_a", "dnpu_b"):
        streams = {f"{base}_{device}" for base in ("hge_raw", "hge", "train", "eval_raw")}
        assert streams | {f"evaluation_{device}"} <= _stream_names(documents)

    # The first device, alone and with the same seed, measures and decides exactly the same.
    alone = build_dnpu(default_sim_profile(seed=0), name="dnpu_a")
    try:
        single = stored_RE(train(alone, BooleanGate("XOR"), seed=3)).plan_result
    finally:
        alone.backend.close()
    assert single.controls == results[0].controls
    assert (single.iterations, single.measurements) == (
        results[0].iterations,
        results[0].measurements,
    )
    assert single.device_s == pytest.approx(results[0].device_s)

    # Tiled holds every device's streams; figures and loss curves come from them alone.
    run = load_run(storage.client, outcome.run_start_uids[0])
    start = run.metadata["start"]
    assert start["detectors"] == ["dnpu_a", "dnpu_b"]
    assert set(start["dnpu_backend"]) == {"dnpu_a", "dnpu_b"}
    for result in results:
        curve = loss_curve(run, result.device)
        assert curve["loss"].size == result.iterations
        assert curve["device_s"][-1] <= result.device_s
    figure = gates_figure([run])
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert len(titles) == 2 and "(dnpu_b)" in titles[1]


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
    assert {"generation_dnpu_a", "generation_dnpu_b"} <= _stream_names(documents)
    assert "4/4" in capsys.readouterr().err  # 2 generations of each device


def test_train_boolean_gates_on_a_list_gives_a_list_per_gate(RE, pair):
    results = RE(
        train_boolean_gates(pair, ["NAND"], max_iterations=3, max_attempts=1,
                            target_margin_na=NEVER)
    ).plan_result  # fmt: skip
    assert list(results) == ["NAND"]
    assert [r.device for r in results["NAND"]] == ["dnpu_a", "dnpu_b"]
