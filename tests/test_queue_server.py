"""The IPython profile's startup files as the Bluesky queue server's startup collection.

``start-re-manager`` runs in its own process on loopback ZMQ ports with the profile's startup
directory; its worker keeps the environment (RunEngine, embedded Tiled in a temporary
directory, the virtual DNPU). The queue server keeps its state in Redis, given as
``DNPU_TEST_REDIS`` (``host:port``; ``.ci/run`` starts one); without it this test is skipped.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REDIS = os.environ.get("DNPU_TEST_REDIS")
pytestmark = pytest.mark.skipif(
    not REDIS,
    reason="DNPU_TEST_REDIS is unset: the queue server needs Redis (.ci/run starts one; "
    "e.g. DNPU_TEST_REDIS=127.0.0.1:6379)",
)

REPO = Path(__file__).resolve().parents[1]
STARTUP = REPO / "profiles" / "profile_dnpu" / "startup"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_profile_runs_a_training_plan_through_the_queue_server(tmp_path, capsys):
    pytest.importorskip("bluesky_queueserver_api")
    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.zmq import REManagerAPI

    control, info = _free_ports(2)
    data_dir = tmp_path / "tiled"
    manager = Path(sys.executable).with_name("start-re-manager")
    command = [
        str(manager),
        "--startup-dir", str(STARTUP),
        "--existing-plans-devices", str(tmp_path / "existing_plans_and_devices.yaml"),
        "--update-existing-plans-devices", "ENVIRONMENT_OPEN",
        "--redis-addr", REDIS,
        "--redis-name-prefix", f"dnpu_test_{uuid.uuid4().hex[:8]}",
        "--zmq-control-addr", f"tcp://127.0.0.1:{control}",
        "--zmq-info-addr", f"tcp://127.0.0.1:{info}",
        "--zmq-publish-console", "ON",
    ]  # fmt: skip
    env = {
        **os.environ,
        "DNPU_DATA_DIR": str(data_dir),
        "DNPU_SEED": "0",
        "MPLBACKEND": "Agg",
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    env.pop("DNPU_TILED_URI", None)
    env.pop("DNPU_SETUP", None)
    log_path = tmp_path / "re-manager.log"
    log = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    RM = REManagerAPI(
        zmq_control_addr=f"tcp://127.0.0.1:{control}",
        zmq_info_addr=f"tcp://127.0.0.1:{info}",
        timeout_recv=10,
    )
    try:
        _wait_for_manager(RM, process, log_path)
        RM.environment_open()
        RM.wait_for_idle(timeout=60)
        status = RM.status()
        assert status["worker_environment_exists"], _tail(log_path)

        plans = RM.plans_allowed()["plans_allowed"]
        devices = RM.devices_allowed()["devices_allowed"]
        assert {"train_gate", "train_sphere", "hge_gradient", "validate_gradients"} <= set(plans)
        assert {"count", "scan", "rel_scan", "list_scan", "grid_scan", "mv"} <= set(plans)
        assert "dnpu" in devices
        # What a client shows of a plan: the docstring's description of every parameter.
        for name in ("train_gate", "train_sphere", "hge_gradient", "iv_sweep"):
            parameters = plans[name]["parameters"]
            assert all(p.get("description") for p in parameters), (name, parameters)

        # Refused when submitted, not when run: a plan that takes a Task object, an unknown
        # gate, a name that is no device.
        from bluesky_queueserver_api.comm_base import RequestFailedError

        for plan, refusal in [
            (BPlan("train", "dnpu", "XOR"), "Plan 'train' is not in the list of allowed plans"),
            (BPlan("train_gate", "dnpu", "XORR"), "'NOR', 'XOR' or 'XNOR'"),
            (BPlan("train_gate", "dnpu_c", "XOR"), "Input should be 'dnpu'"),
        ]:
            with pytest.raises(RequestFailedError, match=re.escape(refusal)):
                RM.item_add(plan)
        assert RM.queue_get()["items"] == []

        # A package plan and the queue wrapper that builds its task from a gate name, on one
        # device and on two side by side (the second added to the worker's namespace).
        RM.script_upload(
            "from dnpu_bluesky.config import default_sim_profile\n"
            "dnpu_b = build_dnpu(default_sim_profile(seed=1), name='dnpu_b')\n"
        )
        RM.wait_for_idle(timeout=30)
        RM.item_add(BPlan("hge_gradient", "dnpu", repeats=2))
        RM.item_add(BPlan("train_gate", "dnpu", "AND", method="hge", max_iterations=40, seed=1))
        RM.item_add(BPlan("train_gate", ["dnpu", "dnpu_b"], "OR", max_iterations=3,
                          max_attempts=1, target_margin_na=1e6, inputs="e3,e4"))  # fmt: skip
        RM.item_add(BPlan("count", ["dnpu"], num=2))  # a standard plan, by device name
        RM.queue_start()
        RM.wait_for_idle(timeout=180)

        history = RM.history_get()["items"]
        names = [item["name"] for item in history]
        assert names == ["hge_gradient", "train_gate", "train_gate", "count"]
        for item in history:
            assert item["result"]["exit_status"] == "completed", (item["result"], _tail(log_path))
        (train_uid,) = history[1]["result"]["run_uids"]

        # The run is in the worker's embedded Tiled: ask the worker where that is (its data
        # directory; a storage opened on it uses the worker's server, API key included).
        RM.script_upload("print('DNPU_TILED_DIR=' + str(storage.config.directory))")
        RM.wait_for_idle(timeout=30)
        stored = _stored_run(_printed_directory(log_path), train_uid)
        assert stored.metadata["stop"]["exit_status"] == "success"
        assert stored.metadata["start"]["gate"] == "AND"
        assert stored.metadata["start"]["plan_name"] == "train"
        assert {"primary", "evaluation", "hge"} <= set(stored)
        assert len(stored.primary["train_loss"].read()) >= 1
        pair_uids = history[2]["result"]["run_uids"]  # a run per device
        assert len(pair_uids) == 2
        for uid, device in zip(pair_uids, ("dnpu", "dnpu_b"), strict=True):
            run = _stored_run(_printed_directory(log_path), uid)
            assert run.metadata["start"]["detectors"] == [device]
            assert run.metadata["start"]["side_by_side"]["devices"] == ["dnpu", "dnpu_b"]
            assert len(run.primary["train_loss"].read()) == 3
        (count_uid,) = history[3]["result"]["run_uids"]
        counted = _stored_run(_printed_directory(log_path), count_uid)
        assert counted.metadata["start"]["plan_name"] == "count"
        assert len(counted["primary"]["dnpu_current"].read()) == 2
        # RE.md persists in the worker too: scan_id counts every run of the queue.
        scan_ids = [_stored_run(_printed_directory(log_path), uid).metadata["start"]["scan_id"]
                    for uid in (train_uid, *pair_uids, count_uid)]  # fmt: skip
        assert scan_ids == [2, 3, 4, 5]

        # A deferred pause (the queue server's default) takes effect at the next training
        # step; the run is then stopped, with the electrodes parked, and stored.
        RM.item_add(BPlan("train_gate", "dnpu", "XNOR", seed=2, target_margin_na=20.0))
        RM.queue_start()
        RM.wait_for_condition(lambda status: status["manager_state"] == "executing_queue")
        time.sleep(2.0)  # a few steps into the training
        RM.re_pause(option="deferred")
        RM.wait_for_idle_or_paused(timeout=60)
        assert RM.status()["manager_state"] == "paused", _tail(log_path)
        RM.re_stop()
        RM.wait_for_idle(timeout=60)
        stopped = RM.history_get()["items"][-1]
        assert stopped["result"]["exit_status"] == "stopped", stopped["result"]
        (stopped_uid,) = stopped["result"]["run_uids"]
        run = _stored_run(_printed_directory(log_path), stopped_uid)
        assert 0 < len(run.primary["train_loss"].read()) < 480  # stopped, not finished
        # bluesky ends a stopped run as a success; the listing says what happened.
        from dnpu_bluesky.cli import main

        capsys.readouterr()
        listed = ["runs", "--gate", "XNOR", "--limit", "1"]
        assert main([*listed, "--data-dir", _printed_directory(log_path)]) == 0
        (line,) = capsys.readouterr().out.splitlines()[1:]
        assert line.startswith(stopped_uid[:8]) and line.split()[3:] == [
            "train",
            "hge",
            "XNOR",
            "stopped",
        ]

        RM.environment_close()
        RM.wait_for_idle(timeout=60)
        assert not RM.status()["worker_environment_exists"]
    finally:
        for reader in _readers:
            reader.close()
        _readers.clear()
        try:
            RM.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


def _printed_directory(log: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(r"DNPU_TILED_DIR=(\S+)", log.read_text(errors="replace"))
        if found:
            return found[-1]
        time.sleep(0.2)
    raise AssertionError(f"The worker did not print its data directory:\n{_tail(log)}")


#: Storages opened by the test on the worker's data directory, closed at its end.
_readers: list = []


def _stored_run(directory: str, uid: str, timeout: float = 60):
    """The run from Tiled once its stop document is there (the writer may still be busy)."""
    from dnpu_bluesky.storage import StorageConfig, load_run, open_storage

    reader = open_storage(StorageConfig(directory=Path(directory)))  # the worker's server
    _readers.append(reader)
    client = reader.client
    deadline = time.monotonic() + timeout
    while True:
        try:
            run = load_run(client, uid)
            if run.metadata.get("stop"):
                return run
        except KeyError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"Run {uid} did not reach Tiled in {directory} within {timeout} s")
        time.sleep(0.5)


def _wait_for_manager(RM, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"start-re-manager exited ({process.returncode}):\n{_tail(log)}")
        try:
            RM.status()
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"RE Manager did not answer within {timeout} s:\n{_tail(log)}")


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:]
