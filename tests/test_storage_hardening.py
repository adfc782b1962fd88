"""Storage under hostile conditions, with real processes: secrets in files, a full spool disk,
two sessions on one data directory, a dead server, an orphaned worker, a moved directory."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from ophyd import Signal
from ophyd.sim import det

from dnpu_bluesky.storage import StorageConfig, load_run, open_storage

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--gates", "XOR", "--seed", "0", "--quiet"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    for name in ("DNPU_TILED_URI", "DNPU_SETUP", "DNPU_TILED_API_KEY", "DNPU_DATA_DIR"):
        env.pop(name, None)
    return env


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dnpu_bluesky.cli", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wave_run(storage) -> str:
    """One run with a scalar (the DuckDB table) and an array field (a Zarr array)."""
    wave = Signal(name="wave", value=np.arange(5.0))
    engine = RunEngine({})
    engine.subscribe(storage.writer)
    (uid,) = engine(count([det, wave], 3))
    return uid


def test_no_file_of_the_data_directory_holds_the_api_key(tmp_path):
    key = secrets.token_hex(16)
    directory = tmp_path / "data"
    with open_storage(StorageConfig(directory=directory, api_key=key)) as storage:
        assert key not in storage.uri
        uid = _wave_run(storage)
        assert load_run(storage.client, uid)["primary"]["wave"].read().shape == (3, 5)
    files = [path for path in directory.rglob("*") if path.is_file()]
    assert {"access.log", "error.log", "catalog.db"} <= {path.name for path in files}
    holding = [path for path in files if key.encode() in path.read_bytes()]
    assert holding == []
    opened = [path for path in files if stat.S_IMODE(path.stat().st_mode) & 0o077]
    assert opened == []


def test_remote_uri_key_goes_in_a_header(tiled_server, tmp_path):
    # A URI pasted with its key: the key is sent as a header, never in a request line.
    config = StorageConfig(uri=tiled_server.uri, container="runs_key", spool_directory=tmp_path)
    log = Path(tiled_server.config.directory, "access.log")
    logged = log.stat().st_size
    with open_storage(config) as storage:
        assert storage.uri == tiled_server.uri.partition("?")[0]
        assert storage.api_key == tiled_server.api_key
        _wave_run(storage)
    assert tiled_server.api_key.encode() not in log.read_bytes()[logged:]


def test_a_moved_data_directory_serves_its_arrays_and_tables(tmp_path):
    first = tmp_path / "first"
    with open_storage(StorageConfig(directory=first)) as storage:
        uid = _wave_run(storage)
    moved = tmp_path / "elsewhere" / "restored"
    shutil.copytree(first, moved)
    shutil.rmtree(first)  # the backup is all there is
    with open_storage(StorageConfig(directory=moved)) as storage:
        run = load_run(storage.client, uid)
        np.testing.assert_array_equal(run["primary"]["wave"].read(), [np.arange(5.0)] * 3)
        np.testing.assert_array_equal(run["primary"]["det"].read(), [1.0, 1.0, 1.0])


def test_report_from_a_copied_data_directory(tmp_path):
    data = tmp_path / "data"
    trained = _cli(*TRAIN, "--max-iterations", "3", "--data-dir", str(data))
    out, err = trained.communicate(timeout=300)
    assert trained.returncode in (0, 1), err  # 1: not solved in 3 steps
    uid = next(line.split()[7] for line in out.splitlines() if line.startswith("XOR"))
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    shutil.rmtree(data)
    report = _cli("report", uid, "--data-dir", str(copy), "--out", str(tmp_path / "figures"))
    out, err = report.communicate(timeout=300)
    assert report.returncode == 0, err
    assert "Traceback" not in err


@pytest.fixture
def small_spool_disk(tmp_path):
    """A data directory whose spool is a 3 MiB tmpfs (skipped where mounting is not allowed)."""
    data = tmp_path / "data"
    spool = data / "spool"
    spool.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(spool)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def test_a_full_spool_disk_stops_the_run_in_one_line_and_keeps_its_stop(small_spool_disk):
    data = small_spool_disk
    trained = _cli(*TRAIN, "--margin", "20", "--data-dir", str(data))
    out, err = trained.communicate(timeout=300)
    assert trained.returncode == 1
    assert "Traceback" not in err
    said = [line for line in err.splitlines() if line.startswith("dnpu-bluesky train:")]
    assert len(said) == 1, err
    assert "spool disk is full" in said[0] and str(data / "spool") in said[0]
    assert out.splitlines()[0].startswith("gate/task")  # the table of what finished
    with open_storage(StorageConfig(directory=data, spool_directory=data / "other")) as storage:
        (run,) = storage.client.values()
        stop = run.metadata["stop"]
    assert stop["exit_status"] == "fail"  # the RunEngine's own stop document
    assert "spool disk is full" in stop["reason"]
    assert not list((data / "spool").rglob("*.spool"))


def test_two_train_commands_on_a_fresh_directory_store_both_runs(tmp_path):
    data = tmp_path / "data"
    first = _cli(*TRAIN, "--max-iterations", "5", "--data-dir", str(data))
    second = _cli(*TRAIN, "--max-iterations", "40", "--data-dir", str(data))
    results = [process.communicate(timeout=300) for process in (first, second)]
    for process, (_, err) in zip((first, second), results, strict=True):
        assert process.returncode in (0, 1), err  # 1: the gate not solved in so few steps
        assert "Traceback" not in err
    # Both in Tiled within their own lifetime: nothing left for a later session to replay.
    assert not list(data.rglob("*.spool"))
    with open_storage(StorageConfig(directory=data)) as storage:
        stops = [run.metadata["stop"]["exit_status"] for run in storage.client.values()]
    assert stops == ["success", "success"]


_SESSION = textwrap.dedent(
    """
    import sys, time
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det
    from dnpu_bluesky.storage import StorageConfig, open_storage

    storage = open_storage(StorageConfig(directory=sys.argv[1]))
    print("open", flush=True)
    sys.stdin.readline()  # run when told
    engine = RunEngine({})
    engine.subscribe(storage.writer)
    (uid,) = engine(count([det], 3))
    if sys.argv[2] == "die":  # while the worker waits on a server that is gone
        import os, signal
        os.kill(storage._server._process.pid, signal.SIGKILL)
        engine(count([det], 3))
        time.sleep(1.0)  # the worker's write is failing: tiled's client retries it
        print(uid, storage.writer._worker.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    print(uid, storage.writer._worker.pid, flush=True)
    storage.close()
    print("closed", flush=True)
    """
)


def _session(directory: Path, ending: str = "close") -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", _SESSION, str(directory), ending],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "open"
    return process


def _run_in(process: subprocess.Popen) -> tuple[str, int]:
    process.stdin.write("\n")
    process.stdin.flush()
    uid, pid = process.stdout.readline().split()
    return uid, int(pid)


def test_the_second_session_keeps_storing_after_the_first_closed(tmp_path):
    data = tmp_path / "data"
    first = _session(data)  # starts the server
    second = _session(data)  # uses it
    first_uid, _ = _run_in(first)
    assert first.stdout.readline().strip() == "closed"
    first.wait(timeout=30)
    started = time.monotonic()
    second_uid, _ = _run_in(second)
    assert second.stdout.readline().strip() == "closed"
    second.wait(timeout=30)
    assert time.monotonic() - started < 30  # not the 120 s flush timeout
    assert not list(data.rglob("*.spool"))  # in Tiled before the second session ended
    with open_storage(StorageConfig(directory=data)) as storage:
        assert load_run(storage.client, second_uid).metadata["stop"]["exit_status"] == "success"
        assert load_run(storage.client, first_uid).metadata["stop"]["exit_status"] == "success"


def test_a_dead_embedded_server_is_restarted(tmp_path):
    with open_storage(StorageConfig(directory=tmp_path / "data")) as storage:
        os.kill(storage._server._process.pid, signal.SIGKILL)
        uid = _wave_run(storage)  # spooled; written once the server is back
        started = time.monotonic()
        storage.flush(timeout=30)
        assert time.monotonic() - started < 30
        assert load_run(storage.client, uid)["primary"]["wave"].read().shape == (3, 5)


def test_an_orphaned_worker_exits_within_seconds(tmp_path):
    session = _session(tmp_path / "data", ending="die")
    _, worker = _run_in(session)
    session.wait(timeout=30)
    assert session.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(worker)
