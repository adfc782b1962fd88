"""The background writer (issue 6): real RunEngine, real Tiled over HTTP, real outages and crashes.

Outages are real: the writer talks to the session's Tiled server through a TCP proxy that
the test switches off (connections cut, port refused) and on again, or it is pointed at a
closed port first. Crashes are real: a subprocess spools a run and dies with ``os._exit``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from event_model import compose_run
from ophyd.sim import SynAxis, SynGauss, SynSignal
from tiled.client import from_uri

from benchmarks.outage_proxy import OutageProxy
from dnpu_bluesky.storage import (
    BackgroundWriter,
    StorageConfig,
    StorageError,
    StorageWarning,
    find_runs,
    load_run,
    open_storage,
    replay_spool,
)
from dnpu_bluesky.storage._spool import decode, encode
from dnpu_bluesky.storage._store import _connect_runs, _runs_container, _Writer
from dnpu_bluesky.storage._writer import _wait_note

N_SAMPLES = 10_000
CLOSE_REQUEST = "/api/v1/stream/close/"  # a live stream's close, in the server's access log


def _with_port(uri: str, port: int) -> str:
    parts = urlsplit(uri)
    return parts._replace(netloc=f"{parts.hostname}:{port}").geturl()


@pytest.fixture
def fast_failing_tiled(monkeypatch):
    """The tiled client's own retries (up to 10 attempts / 45 s) would hide short outages."""
    import tiled.client.utils

    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_ATTEMPTS", 1)
    monkeypatch.setenv("TILED_RETRY_ATTEMPTS", "1")  # for the writer's worker process


def _waveform(k: float) -> np.ndarray:
    t = np.arange(N_SAMPLES) / N_SAMPLES
    return (1.0 + k) * np.sin(2 * np.pi * 13 * t) + 1e-9 * k


@pytest.fixture
def hw():
    motor = SynAxis(name="motor")
    det = SynGauss("det", motor, "motor", center=0.0, Imax=2.0, sigma=1.0)
    wf = SynSignal(func=lambda: _waveform(motor.position), name="wf")
    return motor, det, wf


def _events(documents, stream_name: str = "primary") -> list[dict]:
    descriptors = {d["uid"] for n, d in documents if n == "descriptor" and d["name"] == stream_name}
    return [d for n, d in documents if n == "event" and d["descriptor"] in descriptors]


def _spooled(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


def test_background_writer_is_the_default_and_reads_back_identically(
    stored_RE, storage, documents, hw
):
    motor, det, wf = hw
    assert isinstance(storage.writer, BackgroundWriter)
    assert storage.config.writer == "background"
    (uid,) = stored_RE(bp.scan([det, wf], motor, -1, 1, 7), gate="XOR").run_start_uids
    storage.flush(timeout=60)
    assert _spooled(storage.config.spool_directory) == []  # stop in Tiled: spool deleted
    assert storage.errors == []

    run = load_run(storage.client, uid)
    events = _events(documents)
    for key in ("motor", "det", "wf"):
        emitted = np.stack([np.asarray(ev["data"][key]) for ev in events])
        np.testing.assert_array_equal(run["primary"][key].read(), emitted)
    assert run["primary"]["wf"].read().shape == (7, N_SAMPLES)
    start = next(d for n, d in documents if n == "start")
    assert run.metadata["start"]["gate"] == "XOR"
    assert run.metadata["start"]["uid"] == start["uid"]
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run.metadata["stop"]["num_events"] == {"primary": 7}


def _parent_pid(proc: Path) -> int:
    """The parent process id of the process ``proc`` (``/proc/<pid>``)."""
    return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])


def _writer_processes() -> int:
    """Background writers' workers of this process (Linux /proc).

    Those forked by its worker template (the template's children), and any started on their
    own (its children running ``_worker_process``).
    """
    from dnpu_bluesky.storage import _spawn

    template = _spawn._template
    forking = template.process.pid if template is not None and template.alive else None
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = _parent_pid(stat.parent)
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        own = ppid == os.getpid() and b"_worker_process" in cmdline
        count += own or (forking is not None and ppid == forking)
    return count


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_storage_that_only_reads_starts_no_writer_process(tiled_server, RE, hw):
    _, det, _ = hw
    config = StorageConfig(uri=tiled_server.uri, container=f"runs_{uuid.uuid4().hex}")
    with open_storage(config) as reader:
        find_runs(reader.client)  # listing runs, as `dnpu-bluesky runs` does
        assert _writer_processes() == 0
        RE.subscribe(reader.writer)
        RE(bp.count([det]))  # the first document starts the worker
        reader.flush(timeout=60)  # (a forked worker may start a moment later)
        assert _writer_processes() == 1
        assert len(find_runs(reader.client)) == 1
    assert _writer_processes() == 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_run_engine_made_for_a_storage_starts_its_writer_before_the_first_run(tiled_server):
    from dnpu_bluesky.session import make_run_engine

    config = StorageConfig(uri=tiled_server.uri, container=f"runs_{uuid.uuid4().hex}")
    with open_storage(config) as storage:
        assert _writer_processes() == 0
        make_run_engine(storage, interactive=False)
        deadline = time.monotonic() + 60  # a new worker template imports for a second or two
        while _writer_processes() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _writer_processes() == 1  # with no document written
        assert len(find_runs(storage.client)) == 0
    assert _writer_processes() == 0


def _worker_of_a_new_storage(tiled_server, RE, det) -> tuple[int, int, list[bytes], str]:
    """Write one run through a new storage; its worker's pid, parent pid, environment, cwd."""
    config = StorageConfig(uri=tiled_server.uri, container=f"runs_{uuid.uuid4().hex}")
    with open_storage(config) as storage:
        token = RE.subscribe(storage.writer)
        RE(bp.count([det]))
        RE.unsubscribe(token)
        storage.flush(timeout=60)
        pid = storage.writer._worker.pid
        proc = Path(f"/proc/{pid}")
        parent = _parent_pid(proc)
        return pid, parent, (proc / "environ").read_bytes().split(b"\0"), os.readlink(proc / "cwd")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_workers_are_forked_from_one_template_while_the_environment_stays(
    tiled_server, RE, hw, monkeypatch, tmp_path
):
    _, det, _ = hw
    seen = []
    for mark in ("one", "one", "two"):
        monkeypatch.setenv("DNPU_TEST_MARK", mark)
        (tmp_path / mark).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / mark)  # a worker starts where this process is now
        pid, parent, environ, cwd = _worker_of_a_new_storage(tiled_server, RE, det)
        assert f"DNPU_TEST_MARK={mark}".encode() in environ
        assert cwd == str(tmp_path / mark)
        seen.append((pid, parent))
    (first, first_parent), (second, second_parent), (_, third_parent) = seen
    assert first != second and first_parent == second_parent != os.getpid()
    assert third_parent != first_parent  # a changed environment: a new template


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_storage_opened_for_writing_starts_the_worker_template_while_it_opens(
    tiled_server, monkeypatch
):
    from dnpu_bluesky.storage import _spawn

    def template_environment() -> dict[str, str]:
        template = _spawn._template
        return template.environment if template is not None and template.alive else {}

    config = StorageConfig(uri=tiled_server.uri, container=f"runs_{uuid.uuid4().hex}")
    monkeypatch.setenv("DNPU_TEST_MARK", uuid.uuid4().hex)  # a template must be this one's
    with open_storage(config):  # only to read: no template for it
        assert template_environment().get("DNPU_TEST_MARK") != os.environ["DNPU_TEST_MARK"]
    with open_storage(config, writes=True) as storage:
        assert template_environment().get("DNPU_TEST_MARK") == os.environ["DNPU_TEST_MARK"]
        assert _parent_pid(Path(f"/proc/{_spawn._template.process.pid}")) == os.getpid()
        assert _writer_processes() == 0  # a worker is forked with the first document
        assert storage.writer.wait_ready(timeout=60)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_worker_template_is_replaced(tiled_server, RE, hw):
    from dnpu_bluesky.storage import _spawn

    _, det, _ = hw
    _, template, _, _ = _worker_of_a_new_storage(tiled_server, RE, det)
    os.kill(template, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _spawn._template.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    _, replacement, _, _ = _worker_of_a_new_storage(tiled_server, RE, det)
    assert replacement != template


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_where_workers_cannot_be_forked_each_is_started_on_its_own(
    tiled_server, RE, hw, monkeypatch
):
    from dnpu_bluesky.storage import _worker

    monkeypatch.setattr(_worker, "fork_worker", lambda: None)  # as on Windows
    _, parent, _, _ = _worker_of_a_new_storage(tiled_server, RE, hw[1])
    assert parent == os.getpid()


def test_reading_through_client_waits_for_pending_writes(stored_RE, storage, hw):
    _, det, wf = hw
    uids = [stored_RE(bp.count([det, wf], num=3)).run_start_uids[0] for _ in range(3)]
    # No explicit flush: storage.client waits for the writer (read-your-writes).
    for uid in uids:
        assert load_run(storage.client, uid)["primary"]["wf"].read().shape == (3, N_SAMPLES)


def test_a_reader_of_one_run_has_it_written_before_runs_that_ended_earlier(
    tiled_server, stored_RE, storage, hw
):
    _, det, wf = hw
    server = tiled_server._server._process.pid
    access_log = Path(tiled_server.config.directory) / "access.log"
    runs = storage.client  # (its first use waits for every run, as a flush does)
    storage.flush(timeout=60)  # the worker is up
    os.kill(server, signal.SIGSTOP)  # Tiled takes nothing in while both runs are spooled
    try:
        first, second = (stored_RE(bp.count([det, wf], num=3)).run_start_uids[0] for _ in "12")
        reader = threading.Thread(target=load_run, args=(runs, second))
        reader.start()
        time.sleep(1.0)  # the worker hears that a reader waits for the second run
    finally:
        os.kill(server, signal.SIGCONT)
    reader.join(timeout=60)
    storage.flush(timeout=60)
    # The live-stream closes, sent once the worker has nothing else to write, do not count.
    lines = [line for line in access_log.read_text().splitlines() if CLOSE_REQUEST not in line]
    last = {uid: max(i for i, line in enumerate(lines) if uid in line) for uid in (first, second)}
    assert last[second] < last[first]  # the second run was complete before the first
    for uid in (first, second):
        assert load_run(storage.client, uid)["primary"]["wf"].read().shape == (3, N_SAMPLES)


def test_spool_encoding_is_lossless():
    arrays = {
        "f8": np.array([0.1, np.nan, np.inf, -0.0, 1e-308]),
        "f4": np.linspace(0, 1, 7, dtype=np.float32),
        "i8": np.arange(-3, 3).reshape(2, 3),
        "u2": np.array([0, 65535], dtype=np.uint16),
        "bool": np.array([True, False]),
        "c16": np.array([1 + 2j]),
        "strided": np.arange(20.0)[::3],
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "big_endian": np.arange(4, dtype=">f8"),
    }
    doc = {"uid": "u", "data": arrays, "scalar": np.float64(0.1), "n": np.int64(7), "t": (1, 2)}
    name, back = decode(encode("event", doc))
    assert name == "event"
    for key, array in arrays.items():
        assert back["data"][key].dtype == array.dtype, key
        assert back["data"][key].shape == array.shape, key
        np.testing.assert_array_equal(back["data"][key], array)
    assert back["scalar"] == 0.1 and back["n"] == 7 and back["t"] == [1, 2]


def _behind_proxy(
    tiled_server, spool_directory: Path, **settings
) -> tuple[OutageProxy, StorageConfig]:
    """A started proxy in front of the session's server, and a storage config through it."""
    target = urlsplit(tiled_server.uri)
    proxy = OutageProxy((target.hostname, target.port))
    proxy.start()
    config = StorageConfig(
        uri=_with_port(tiled_server.uri, proxy.port),
        container=f"proxied_{uuid.uuid4().hex}",
        spool_directory=spool_directory,
        **settings,
    )
    return proxy, config


def test_outage_mid_run_loses_nothing(
    tiled_server, RE, documents, hw, tmp_path, fast_failing_tiled
):
    _, det, wf = hw
    proxy, config = _behind_proxy(
        tiled_server,
        tmp_path / "spool",
        batch_size=2,
        retry_interval_s=0.05,
        retry_max_interval_s=0.2,
    )
    n_events = 12
    call_seconds: list[float] = []

    def timed_writer(name, doc):
        started = time.perf_counter()
        storage.writer(name, doc)
        call_seconds.append(time.perf_counter() - started)

    storage = open_storage(config)
    try:
        RE.subscribe(timed_writer)

        @bpp.run_decorator(md={"plan_name": "outage"})
        def plan():
            for k in range(n_events):
                if k == 3:
                    proxy.stop()  # Tiled unreachable mid-run
                if k == 9:
                    deadline = time.monotonic() + 30
                    while not storage.errors and time.monotonic() < deadline:
                        yield from bps.sleep(0.05)
                    assert storage.errors, "the outage was never noticed"
                    proxy.start()  # back
                yield from bps.trigger_and_read([det, wf])

        with pytest.warns(StorageWarning, match="Writing to Tiled failed"):
            (uid,) = RE(plan()).run_start_uids
            storage.flush(timeout=60)
        assert any("kept in" in error for error in storage.errors)
        assert _spooled(config.spool_directory) == []
    finally:
        storage.close()
        proxy.stop()

    # The RunEngine never waited for Tiled, even while it was down.
    assert max(call_seconds) < 0.5, max(call_seconds)

    root = from_uri(tiled_server.uri)  # directly, not through the proxy
    try:
        run = load_run(root[config.container], uid)
        events = _events(documents)
        assert len(events) == n_events
        np.testing.assert_array_equal(
            run["primary"]["wf"].read(), np.stack([ev["data"]["wf"] for ev in events])
        )
        np.testing.assert_array_equal(
            run["primary"]["det"].read(), [ev["data"]["det"] for ev in events]
        )
        assert run.metadata["stop"]["exit_status"] == "success"
        assert run.metadata["stop"]["num_events"] == {"primary": n_events}
    finally:
        root.context.close()


def test_a_table_append_whose_response_is_lost_is_not_stored_twice(
    tiled_server, RE, documents, hw, tmp_path, fast_failing_tiled
):
    _, det, wf = hw
    proxy, config = _behind_proxy(tiled_server, tmp_path / "spool", retry_interval_s=0.05)
    storage = open_storage(config)
    try:
        RE.subscribe(storage.writer)
        # The server takes in the first append of the stream's table; its answer is lost.
        proxy.lose_response_to(b"PATCH /api/v1/table/partition/")
        with pytest.warns(StorageWarning, match="Writing to Tiled failed"):
            (uid,) = RE(bp.count([det, wf], num=3)).run_start_uids
            storage.flush(timeout=60)
        assert proxy.lost == 1
        assert _spooled(config.spool_directory) == []
    finally:
        storage.close()
        proxy.stop()
    root = from_uri(tiled_server.uri)
    try:
        run = load_run(root[config.container], uid)
        events = _events(documents)
        np.testing.assert_array_equal(
            run["primary"]["det"].read(), [ev["data"]["det"] for ev in events]
        )
        assert run["primary"]["wf"].read().shape == (3, N_SAMPLES)
        assert run.metadata["stop"]["exit_status"] == "success"
    finally:
        root.context.close()


def test_the_embedded_server_reads_tables_while_they_are_appended_to(
    tiled_server, fast_failing_tiled
):
    import pyarrow as pa

    root = from_uri(tiled_server.uri)
    container = root.create_container(key=f"tables_{uuid.uuid4().hex}")
    rows = pa.table({"seq_num": np.arange(2), "x": np.random.default_rng(0).random(2)})
    tables = [container.create_appendable_table(rows.schema, key=f"t{i}") for i in range(3)]
    for table in tables:
        table.append_partition(0, rows)
    appended = {table.item["id"]: 1 for table in tables}
    errors: list[str] = []
    until = time.monotonic() + 8.0

    def append() -> None:
        while time.monotonic() < until and not errors:
            for table in tables:
                try:
                    table.append_partition(0, rows)
                    appended[table.item["id"]] += 1
                except Exception as err:
                    errors.append(f"append: {err!r}")

    def read() -> None:
        reader = from_uri(tiled_server.uri)[container.item["id"]]
        while time.monotonic() < until and not errors:
            for key in appended:
                try:
                    reader[key].read()
                except Exception as err:
                    errors.append(f"read: {err!r}")

    threads = [threading.Thread(target=work) for work in (append, read, read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for table in tables:  # every append is there once
        assert len(table.read()) == 2 * appended[table.item["id"]]
    root.context.close()


def test_unreachable_tiled_is_reported_then_replayed_when_back(
    tiled_server, tmp_path, caplog, fast_failing_tiled
):
    container = f"unreachable_{uuid.uuid4().hex}"
    root = from_uri(tiled_server.uri)
    _runs_container(root, container)
    root.context.close()
    target = urlsplit(tiled_server.uri)
    proxy = OutageProxy((target.hostname, target.port))  # not started: nothing listens there
    uri = _with_port(tiled_server.uri, proxy.port)
    connect = functools.partial(_connect_runs, uri, None, container)

    spool = tmp_path / "spool"
    writer = BackgroundWriter(connect, spool, batch_size=3, retry_interval_s=0.05)
    run = compose_run(metadata={"plan_name": "unreachable"})
    key = {"source": "sim", "dtype": "array", "shape": [N_SAMPLES], "dtype_numpy": "<f8"}
    desc = run.compose_descriptor(name="primary", data_keys={"wf": key})
    waveforms = [_waveform(k) for k in range(8)]
    try:
        with caplog.at_level(logging.INFO, logger="dnpu_bluesky.storage"):
            started = time.perf_counter()
            writer("start", run.start_doc)
            writer("descriptor", desc.descriptor_doc)
            for k, waveform in enumerate(waveforms):
                writer("event", desc.compose_event(data={"wf": waveform}, timestamps={"wf": k}))
            writer("stop", run.compose_stop())
            assert time.perf_counter() - started < 1.0  # spooled, not waited for
            deadline = time.monotonic() + 60  # the worker process starts, then fails
            while not writer.errors and time.monotonic() < deadline:
                time.sleep(0.05)

            with pytest.warns(StorageWarning) as warned:
                with pytest.raises(StorageError, match="not completely in Tiled"):
                    writer.flush(timeout=1.5)
            assert len(warned) == 1
            # A wait of over a second says so, once (a hang would say nothing).
            notes = [r.getMessage() for r in caplog.records if "reach Tiled" in r.getMessage()]
            assert notes == ["Waiting for 1 run(s) to reach Tiled..."]
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # warned once only
                with pytest.raises(StorageError):
                    writer.flush(timeout=0.2)
        assert writer.errors and "ConnectError" in writer.errors[0]
        assert any(record.levelno == logging.ERROR for record in caplog.records)
        assert _spooled(spool) == [spool / f"{run.start_doc['uid']}.spool"]

        proxy.start()  # Tiled is back
        writer.flush(timeout=60)
        assert _spooled(spool) == []
    finally:
        writer.close(timeout=10)
        proxy.stop()

    root = from_uri(tiled_server.uri)
    try:
        stored = load_run(root[container], run.start_doc["uid"])
        np.testing.assert_array_equal(stored["primary"]["wf"].read(), np.stack(waveforms))
        assert stored.metadata["stop"]["exit_status"] == "success"
    finally:
        root.context.close()


_CRASH_SCRIPT = """
import json, os, sys
import numpy as np
from event_model import compose_run
from dnpu_bluesky.storage import StorageConfig, open_storage

uri, container, spool, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
storage = open_storage(StorageConfig(uri=uri, container=container, spool_directory=spool))
key = {"source": "sim", "dtype": "array", "shape": [n], "dtype_numpy": "<f8"}
uids = []
for plan_name, n_events, stop in (("finished", 4, True), ("unfinished", 5, False)):
    run = compose_run(metadata={"plan_name": plan_name})
    storage.writer("start", run.start_doc)
    desc = run.compose_descriptor(name="primary", data_keys={"wf": key})
    storage.writer("descriptor", desc.descriptor_doc)
    for k in range(n_events):
        event = desc.compose_event(data={"wf": k * np.arange(n) + 0.5}, timestamps={"wf": 0.0})
        storage.writer("event", event)
    if stop:
        storage.writer("stop", run.compose_stop())
    uids.append(run.start_doc["uid"])
print(json.dumps(uids), flush=True)
os._exit(3)  # crash: no flush, no close, no exit hooks
"""


def test_a_long_flush_says_it_waits_then_counts_down():
    assert _wait_note(0, 3, 0.5) is None  # short waits pass silently
    assert _wait_note(0, 3, 1.2) == "Waiting for 3 run(s) to reach Tiled..."
    assert _wait_note(3, 3, 5.0) is None  # nothing new to say
    assert _wait_note(3, 2, 5.0) == "... 2 left"


def test_the_console_shows_notes_and_warnings_not_every_info(capsys):
    from dnpu_bluesky._console_log import CONSOLE_NOTE, set_up_console_log

    set_up_console_log()  # as the CLI and the interactive RunEngine do
    log = logging.getLogger("dnpu_bluesky.storage")
    log.info("Storage: retrying (not for the console)")
    log.info("Waiting for 1 run(s) to reach Tiled...", extra=CONSOLE_NOTE)
    log.warning("Tiled writes are failing")
    assert capsys.readouterr().err.splitlines() == [
        "Waiting for 1 run(s) to reach Tiled...",
        "Tiled writes are failing",
    ]


def test_crash_before_flush_is_recovered_from_the_spool(tiled_server, tmp_path):
    container = f"crash_{uuid.uuid4().hex}"
    spool = tmp_path / "crashed_spool"
    done = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, tiled_server.uri, container, str(spool), "4096"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 3, done.stderr
    finished, unfinished = json.loads(done.stdout.strip().splitlines()[-1])
    assert spool / f"{unfinished}.spool" in _spooled(spool)

    config = StorageConfig(
        uri=tiled_server.uri, container=container, spool_directory=tmp_path / "own_spool"
    )
    with open_storage(config) as storage:
        replayed = replay_spool(storage, spool, timeout=60)
        assert unfinished in replayed
        assert _spooled(spool) == []
        assert storage.errors == []
        runs = {uid: load_run(storage.client, uid) for uid in (finished, unfinished)}
        expected = {finished: 4, unfinished: 5}
        for uid, run in runs.items():
            np.testing.assert_array_equal(
                run["primary"]["wf"].read(),
                np.stack([k * np.arange(4096) + 0.5 for k in range(expected[uid])]),
            )
        assert runs[finished].metadata["stop"]["exit_status"] == "success"
        assert runs[unfinished].metadata["stop"]["exit_status"] == "abort"
        assert "spool" in runs[unfinished].metadata["stop"]["reason"]


def test_leftover_spool_is_replayed_when_storage_opens(tiled_server, RE, hw, tmp_path, caplog):
    _, det, _ = hw
    container = f"leftover_{uuid.uuid4().hex}"
    spool = tmp_path / "spool"
    run = compose_run(metadata={"plan_name": "leftover"})
    desc = run.compose_descriptor(
        name="primary", data_keys={"det": {"source": "sim", "dtype": "number", "shape": []}}
    )
    lines = [encode("start", run.start_doc), encode("descriptor", desc.descriptor_doc)]
    lines += [
        encode("event", desc.compose_event(data={"det": float(k)}, timestamps={"det": 0.0}))
        for k in range(3)
    ]
    spool.mkdir()
    cut = encode("event", desc.compose_event(data={"det": 3.0}, timestamps={"det": 0.0}))[:30]
    # A crash in the middle of writing the 4th event leaves half a record: it is ignored.
    (spool / f"{run.start_doc['uid']}.spool").write_bytes(b"".join(lines) + cut)

    config = StorageConfig(uri=tiled_server.uri, container=container, spool_directory=spool)
    with open_storage(config) as storage:
        (said,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert f"writing 1 run(s) that an earlier session left in {spool}" in said
        assert said.endswith(run.start_doc["uid"][:8])
        RE.subscribe(storage.writer)
        (live,) = RE(bp.count([det], num=2)).run_start_uids  # a new run alongside
        stored = load_run(storage.client, run.start_doc["uid"])
        np.testing.assert_array_equal(stored["primary"]["det"].read(), [0.0, 1.0, 2.0])
        assert stored.metadata["stop"]["exit_status"] == "abort"
        assert load_run(storage.client, live)["primary"]["det"].read().shape == (2,)
    assert _spooled(spool) == []


def _open_waveform_run(storage, plan_name: str):
    """A run started in ``storage`` with one waveform stream, and ``event(k)`` making its
    ``k``-th event (``_waveform(k)``)."""
    run = compose_run(metadata={"plan_name": plan_name})
    key = {"source": "sim", "dtype": "array", "shape": [N_SAMPLES], "dtype_numpy": "<f8"}
    desc = run.compose_descriptor(name="primary", data_keys={"wf": key})
    storage.writer("start", run.start_doc)
    storage.writer("descriptor", desc.descriptor_doc)

    def event(k: int) -> dict:
        return desc.compose_event(data={"wf": _waveform(k)}, timestamps={"wf": k})

    return run, event


def test_events_of_an_open_run_reach_tiled_without_a_flush(tiled_server, tmp_path):
    # Events are announced to the worker in batches (at most every 0.2 s); the last ones of a
    # burst must still arrive while the run stays open, with no flush and no stop document.
    config = StorageConfig(
        uri=tiled_server.uri,
        container=f"runs_{uuid.uuid4().hex}",
        spool_directory=tmp_path / "spool",
        batch_size=1,
    )
    with open_storage(config) as storage:
        run, event = _open_waveform_run(storage, "open")
        for k in range(6):
            storage.writer("event", event(k))
        root = from_uri(tiled_server.uri)[config.container]  # no read-your-writes wait
        deadline = time.monotonic() + 60
        seen = 0
        while time.monotonic() < deadline:
            try:
                # load_run: v3 even after another test's `catalog.v2` switched the default;
                # on a client of no open Storage it does not wait for writes.
                seen = load_run(root, run.start_doc["uid"])["primary"]["wf"].shape[0]
            except KeyError:
                seen = 0
            if seen == 6:
                break
            time.sleep(0.2)
        assert seen == 6
        storage.writer("stop", run.compose_stop())


class _DiskFullOnce:
    """A spool file whose next write stores half the record, then fails as a full disk does."""

    def __init__(self, file) -> None:
        self._file, self.failed = file, False

    def write(self, data) -> int:
        if self.failed:
            return self._file.write(data)
        self.failed = True
        self._file.write(bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    def __getattr__(self, name: str):
        return getattr(self._file, name)


@pytest.mark.parametrize("fsync", [False, True])
def test_a_document_the_full_disk_refused_costs_that_document_only(tiled_server, tmp_path, fsync):
    config = StorageConfig(
        uri=tiled_server.uri,
        container=f"runs_{uuid.uuid4().hex}",
        spool_directory=tmp_path / "spool",
        spool_fsync=fsync,
    )
    with open_storage(config) as storage:
        run, event = _open_waveform_run(storage, "full disk")
        for k in range(3):
            storage.writer("event", event(k))
        spool = storage.writer._runs[run.start_doc["uid"]]
        spool.file = _DiskFullOnce(spool.file)
        with pytest.raises(StorageError, match=r"spool disk is full.*No space left"):
            storage.writer("event", event(3))
        for k in range(4, 6):  # space again (another run's spool file went to Tiled)
            storage.writer("event", event(k))
        storage.writer("stop", run.compose_stop())
        storage.flush(timeout=60)
        assert storage.errors == []
        stored = load_run(storage.client, run.start_doc["uid"])
        waveforms = stored["primary"]["wf"].read()
        np.testing.assert_array_equal(waveforms, [_waveform(k) for k in (0, 1, 2, 4, 5)])
        assert stored.metadata["stop"]["exit_status"] == "success"

        # A start document the disk refuses leaves no run behind for flush to wait on.
        from dnpu_bluesky.storage import _writer as writer_module

        real_append = writer_module.append_whole

        def full_once(file, record, length, *, fsync):
            writer_module.append_whole = real_append
            return real_append(_DiskFullOnce(file), record, length, fsync=fsync)

        writer_module.append_whole = full_once
        try:
            refused = compose_run(metadata={"plan_name": "full disk at start"})
            with pytest.raises(StorageError, match=r"spool disk is full.*No space left"):
                storage.writer("start", refused.start_doc)
        finally:
            writer_module.append_whole = real_append
        storage.writer("stop", refused.compose_stop())  # what the RunEngine sends next
        started = time.monotonic()
        storage.flush(timeout=30)
        assert time.monotonic() - started < 5
        assert storage.errors == []
    assert list((tmp_path / "spool").iterdir()) == []  # nothing set aside, nothing left


def test_document_of_no_open_run_is_an_error_not_swallowed(storage):
    with pytest.raises(StorageError, match="no open run"):
        storage.writer("event", {"uid": "x", "descriptor": "unknown", "data": {}})


@pytest.mark.parametrize("kind", ["direct", "thread"])
def test_direct_and_thread_writers_are_available(tiled_server, RE, hw, kind):
    _, det, wf = hw
    config = StorageConfig(
        uri=tiled_server.uri, container=f"{kind}_{uuid.uuid4().hex}", writer=kind
    )
    with open_storage(config) as storage:
        assert isinstance(storage.writer, _Writer if kind == "direct" else BackgroundWriter)
        RE.subscribe(storage.writer)
        (uid,) = RE(bp.count([det, wf], num=2)).run_start_uids
        assert load_run(storage.client, uid)["primary"]["wf"].read().shape == (2, N_SAMPLES)
        storage.flush(timeout=60)  # a no-op for the direct writer
    with pytest.raises(ValueError, match="writer"):
        StorageConfig(writer="async")


def test_a_writer_worker_that_dies_is_reported_at_once_and_its_runs_written_later(
    tiled_server, RE, hw, tmp_path
):
    _, det, _ = hw
    spool = tmp_path / "spool"
    config = StorageConfig(
        uri=tiled_server.uri, container=f"runs_{uuid.uuid4().hex}", spool_directory=spool
    )
    storage = open_storage(config)
    try:
        RE.subscribe(storage.writer)
        RE(bp.count([det]))
        storage.flush(timeout=60)
        storage.writer._worker.kill()  # as the OOM killer or a stray `kill` would
        deadline = time.monotonic() + 10
        while not storage.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert storage.errors == [
            f"the writer's worker stopped unexpectedly (exit status -9): documents are still "
            f"spooled in {spool}, and written to Tiled the next time a storage is opened on it"
        ]
        with pytest.warns(StorageWarning, match="stopped unexpectedly"):
            (late,) = RE(bp.count([det], num=2)).run_start_uids
        with pytest.raises(StorageError) as caught:
            storage.flush(timeout=60)
        assert str(caught.value) == f"1 run(s) not completely in Tiled: {storage.errors[-1]}"
    finally:
        storage.close()
    with open_storage(config) as again:
        replayed = load_run(again.client, late)
        assert replayed["primary"]["det"].read().shape == (2,)
        assert replayed.metadata["stop"]["exit_status"] == "success"


def test_a_streams_first_events_are_written_once_the_writer_has_caught_up(tiled_server, RE, hw):
    from dnpu_bluesky.storage._patches import tiled_writer

    _, det, _ = hw
    documents: list[tuple[str, dict]] = []
    (uid,) = RE(bp.count([det], 3), lambda name, doc: documents.append((name, doc))).run_start_uids
    events = [i for i, (name, _) in enumerate(documents) if name == "event"]
    config = StorageConfig(uri=tiled_server.uri, container=f"runs_{uuid.uuid4().hex}")
    with open_storage(config) as storage:
        runs = storage.client
        writer = tiled_writer(runs, batch_size=100, hold_s=60.0)

        def rows() -> int:
            try:
                return len(load_run(runs, uid)["primary"]["det"].read())
            except KeyError:
                return 0

        for name, doc in documents[: events[0] + 1]:
            writer(name, doc)
        writer.write_due()  # held for less than hold_s: kept
        assert rows() == 0
        writer.write_due(new_streams=True)  # the stream's first events: written now
        assert rows() == 1
        for name, doc in documents[events[0] + 1 : events[1] + 1]:
            writer(name, doc)
        writer.write_due(new_streams=True)  # the stream is in Tiled: held as usual
        assert rows() == 1
        for name, doc in documents[events[1] + 1 :]:
            writer(name, doc)
        assert rows() == 3
        assert load_run(runs, uid).metadata["stop"]["exit_status"] == "success"


def _two_stream_run(RE, readings: list, motor) -> tuple[str, list[tuple[str, dict]]]:
    """A run of two ``primary`` events (``readings``) and two ``baseline`` ones (``motor``),
    alternating; its uid and documents."""

    @bpp.run_decorator(md={"plan_name": "two_streams"})
    def plan():
        for _ in range(2):
            yield from bps.trigger_and_read(readings)
            yield from bps.trigger_and_read([motor], name="baseline")

    documents: list[tuple[str, dict]] = []
    (uid,) = RE(plan(), lambda name, doc: documents.append((name, doc))).run_start_uids
    return uid, documents


def _rows_per_stream(runs, uid: str) -> dict[str, int]:
    """How many events of each stream of the run are in Tiled."""
    run = load_run(runs, uid)
    return {s: len(run[s].read()["time"]) if "time" in run[s] else 0 for s in run}


def test_a_stops_held_events_can_be_written_one_stream_at_a_time(tiled_server, RE, hw):
    from dnpu_bluesky.storage._patches import tiled_writer

    motor, det, wf = hw
    uid, documents = _two_stream_run(RE, [det, wf], motor)
    assert documents[-1][0] == "stop"
    config = StorageConfig(uri=tiled_server.uri, container=f"runs_{uuid.uuid4().hex}")
    with open_storage(config) as storage:
        runs = storage.client
        writer = tiled_writer(runs, batch_size=100, hold_s=60.0)
        for name, doc in documents[:-1]:
            writer(name, doc)  # every event held

        def rows() -> dict[str, int]:
            return _rows_per_stream(runs, uid)

        assert rows() == {"primary": 0, "baseline": 0}
        assert writer.write_one_stream(every=True)
        assert rows() == {"primary": 2, "baseline": 0}
        assert writer.write_one_stream(every=True)
        assert rows() == {"primary": 2, "baseline": 2}
        assert not writer.write_one_stream(every=True)
        writer(*documents[-1])  # the stop: nothing left to write but the stop itself
        run = load_run(runs, uid)
        assert run.metadata["stop"]["exit_status"] == "success"
        assert run["primary"]["wf"].read().shape == (2, N_SAMPLES)
        assert len(run["baseline"].read()["motor"]) == 2


def test_an_event_writes_only_its_own_streams_aged_events(tiled_server, RE, hw):
    from dnpu_bluesky.storage._patches import tiled_writer

    motor, det, _ = hw
    uid, documents = _two_stream_run(RE, [det], motor)
    events = [i for i, (name, _) in enumerate(documents) if name == "event"]
    config = StorageConfig(uri=tiled_server.uri, container=f"runs_{uuid.uuid4().hex}")
    with open_storage(config) as storage:
        runs = storage.client
        writer = tiled_writer(runs, batch_size=100, hold_s=0.2)

        def rows() -> dict[str, int]:
            return _rows_per_stream(runs, uid)

        for name, doc in documents[: events[0] + 1]:
            writer(name, doc)  # primary's first event, held
        time.sleep(0.3)  # now held longer than hold_s
        for name, doc in documents[events[0] + 1 : events[1] + 1]:
            writer(name, doc)  # baseline's first event: writes nothing of primary's
        assert rows() == {"primary": 0, "baseline": 0}
        for name, doc in documents[events[1] + 1 : events[2] + 1]:
            writer(name, doc)  # primary's next event: primary's held events are written
        assert rows() == {"primary": 2, "baseline": 0}
        time.sleep(0.3)
        writer.write_due()  # baseline's, with no event of its own to trigger them
        assert rows() == {"primary": 2, "baseline": 1}
        for name, doc in documents[events[2] + 1 :]:
            writer(name, doc)
        assert rows() == {"primary": 2, "baseline": 2}


def test_a_slow_runs_events_reach_tiled_within_seconds_before_a_batch_fills(
    tiled_server, storage, RE, hw
):
    from dnpu_bluesky.storage._patches import HOLD_S

    _, det, wf = hw
    assert storage.config.batch_size > 3  # three events never fill a batch
    RE.subscribe(storage.writer)
    root = from_uri(tiled_server.uri)
    seen: dict[str, float] = {}

    @bpp.run_decorator(md={"plan_name": "slow"})
    def plan():
        for _ in range(3):
            yield from bps.trigger_and_read([det, wf])
        # The run stays open (a long step on the device): its events appear in Tiled anyway.
        held = time.monotonic()
        # Held to the stop, they would never appear; written when held HOLD_S, they appear
        # within seconds of that (more on a slow, loaded machine).
        while time.monotonic() - held < HOLD_S + 20:
            try:
                # Through a client of its own, so load_run does not wait for the writer.
                run = load_run(root[storage.config.container], storage_run_uid[0])
                seen["rows"] = len(run["primary"]["det"].read())
                if seen["rows"] == 3:
                    seen["after_s"] = time.monotonic() - held
                    break
            except KeyError as err:  # not yet created
                seen["missing"] = str(err)
            yield from bps.sleep(0.1)
        yield from bps.trigger_and_read([det, wf])

    storage_run_uid: list[str] = []
    RE.subscribe(lambda name, doc: storage_run_uid.append(doc["uid"]), "start")
    try:
        (uid,) = RE(plan()).run_start_uids
    finally:
        root.context.close()
    assert "after_s" in seen, f"not all three events in Tiled {HOLD_S + 20} s after: {seen}"
    run = load_run(storage.client, uid)
    assert len(run["primary"]["det"].read()) == 4  # the last one with the stop document


def _closes(access_log: Path, uid: str) -> list[str]:
    """The paths (from the run's uid on) whose live stream the server was asked to close."""
    paths = (
        line.split(CLOSE_REQUEST)[1].split()[0]
        for line in access_log.read_text().splitlines()
        if CLOSE_REQUEST in line
    )
    return [path[path.index(uid) :] for path in paths if uid in path]


def test_a_writer_can_leave_a_stopped_runs_stream_closes_until_asked(tiled_server, RE, hw):
    from dnpu_bluesky.storage._patches import tiled_writer

    motor, det, _ = hw
    uid, documents = _two_stream_run(RE, [det], motor)
    access_log = Path(tiled_server.config.directory) / "access.log"
    config = StorageConfig(uri=tiled_server.uri, container=f"runs_{uuid.uuid4().hex}")
    with open_storage(config) as storage:
        writer = tiled_writer(storage.client, batch_size=100, defer_closes=True)
        for name, doc in documents:
            writer(name, doc)
        run = load_run(storage.client, uid)  # complete, with its stop, before any close
        assert run.metadata["stop"]["exit_status"] == "success"
        assert len(run["primary"].read()["det"]) == 2
        time.sleep(0.2)  # the access log is written after each response
        assert _closes(access_log, uid) == []
        writer.close_streams()
        time.sleep(0.2)
        assert sorted(_closes(access_log, uid)) == [uid, f"{uid}/baseline", f"{uid}/primary"]
        writer.close_streams()  # each node is closed once
        time.sleep(0.2)
        assert len(_closes(access_log, uid)) == 3


def test_the_background_writer_closes_each_stream_of_a_run_once_after_its_stop(
    tiled_server, RE, hw
):
    motor, det, _ = hw
    access_log = Path(tiled_server.config.directory) / "access.log"
    config = StorageConfig(uri=tiled_server.uri, container=f"runs_{uuid.uuid4().hex}")
    with open_storage(config) as storage:
        RE.subscribe(storage.writer)
        uid, _ = _two_stream_run(RE, [det], motor)
        storage.flush(timeout=60)
    time.sleep(0.2)
    lines = access_log.read_text().splitlines()
    stop = max(
        i for i, line in enumerate(lines) if "PATCH /api/v1/metadata/" in line and uid in line
    )
    closes = [i for i, line in enumerate(lines) if CLOSE_REQUEST in line and uid in line]
    assert sorted(_closes(access_log, uid)) == [uid, f"{uid}/baseline", f"{uid}/primary"]
    assert min(closes) > stop  # after the stop document is in the run's metadata
