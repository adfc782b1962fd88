"""Figures and results read back from Tiled, and what the IPython profile prints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.figures import gates_figure, loss_curve, loss_figure
from dnpu_bluesky.plans import iv_sweep, train
from dnpu_bluesky.results import read_fields, trained_setting
from dnpu_bluesky.storage import find_runs, load_run
from dnpu_bluesky.tasks import BooleanGate


@pytest.fixture
def dnpu():
    device = build_dnpu()
    yield device
    device.backend.close()


def test_figures_name_method_and_run_and_mark_new_attempts(stored_RE, storage, dnpu):
    # A learning rate that cannot improve anything: each attempt ends after `patience`.
    outcome = stored_RE(
        train(dnpu, BooleanGate("XOR"), method="spsa", lr=1e-9, patience=1, max_attempts=2,
              max_iterations=12, target_margin_na=1e6, seed=1, inputs="e3,e4")
    )  # fmt: skip
    (uid,) = outcome.run_start_uids
    run = load_run(storage.client, uid)
    expected = f"XOR spsa {uid[:8]}"

    title = gates_figure([run]).axes[0].get_title()
    assert title.startswith(f"{expected}  acc ")

    curve = loss_curve(run)
    new_attempts = np.flatnonzero(np.diff(curve["attempt"])) + 1
    assert new_attempts.size == outcome.plan_result.attempts - 1 == 1
    (axes,) = loss_figure([run]).axes
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == [expected, "new start"]
    dotted = [line.get_xdata() for line in axes.get_lines() if line.get_linestyle() == ":"]
    assert [x[0] for x in dotted if len(x)] == [curve["device_s"][new_attempts[0]]]


def test_trained_setting_says_what_is_missing(stored_RE, storage, dnpu):
    outcome = stored_RE(
        train(dnpu, BooleanGate("XOR"), max_iterations=1, max_attempts=1, inputs="e3,e4")
    )
    run = load_run(storage.client, outcome.run_start_uids[0])
    # One step is one point, no line: visible on the loss figure only as a marker.
    (curve,) = [ln for ln in loss_figure([run]).axes[0].get_lines() if len(ln.get_xdata())]
    assert len(curve.get_xdata()) == 1 and curve.get_marker() not in (None, "", "None")
    with pytest.raises(KeyError, match=r"has no device 'nope'; its devices: dnpu"):
        trained_setting(run, "nope")

    (swept,) = stored_RE(iv_sweep(dnpu, dnpu.e2, -0.2, 0.2, 3)).run_start_uids
    sweep = load_run(storage.client, swept)
    with pytest.raises(KeyError, match=r"\(iv_sweep\) has no unperturbed evaluation .* streams: "):
        trained_setting(sweep)


def test_an_interrupted_genetic_run_is_drawn_as_its_loss_curve(stored_RE, storage, dnpu, tmp_path):
    from dnpu_bluesky.figures import save_figures
    from dnpu_bluesky.plans import train_genetic

    def stop_after_the_first_generation(name, doc):
        if name == "event" and doc["seq_num"] == 1 and "generation_best_loss" in doc["data"]:
            raise RuntimeError("interrupted")

    plan = train_genetic(dnpu, BooleanGate("XNOR"), population=6, n_elite=2, generations=5)
    with pytest.raises(RuntimeError, match="interrupted"):
        stored_RE(plan, {"event": stop_after_the_first_generation})
    # load_run: a v3 run even if another test in this process switched clients to v2.
    (uid,) = find_runs(storage.client, plan_name="train_genetic")
    run = load_run(storage.client, uid)
    assert "eval_raw" in run and "evaluation" not in run  # genomes measured, none final
    paths = save_figures([run], tmp_path)
    assert [path.name for path in paths] == ["gates_loss.png"]


def test_read_fields_reads_what_the_stream_reads_in_either_layout(
    stored_RE, storage, dnpu, documents, tiled_server
):
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    (uid,) = stored_RE(
        train(dnpu, BooleanGate("AND"), max_iterations=1, max_attempts=1, inputs="e3,e4")
    ).run_start_uids
    # The same documents, written by a plain TiledWriter that keeps small arrays in the table.
    other = from_uri(tiled_server.uri).create_container(f"other_{uid[:8]}")
    writer = TiledWriter(other, max_array_size=16)
    for name, doc in documents:
        writer(name, doc)
    fields = ["evaluation_accuracy", "evaluation_targets", "evaluation_controls"]
    ours = load_run(storage.client, uid)
    plain = load_run(other, uid)
    for run in (ours, plain, plain.v2):  # v2: the databroker-style view, streams without parts
        stream = run["evaluation"]
        expected = stream.read(variables=fields)
        every = read_fields(stream, fields)
        last = read_fields(stream, fields, last=True)
        for field in fields:
            np.testing.assert_array_equal(every[field], expected[field].values)
            np.testing.assert_array_equal(last[field], expected[field].values[-1])
    # Ours keeps arrays as arrays (the plain writer's table gives them back as text).
    targets = read_fields(ours["evaluation"], ["evaluation_targets"], last=True)
    assert targets["evaluation_targets"].shape == (4,)

    # A gate panel looks up each stream once and lists its parts in one request.
    requested = []
    hooks = storage.client.context.http_client.event_hooks["request"]
    hooks.append(lambda request: requested.append(request.url.path))
    try:
        gates_figure([load_run(storage.client, uid)])
    finally:
        hooks.pop()
    lookups = [path.partition(uid)[2] for path in requested if "/metadata/" in path]
    assert sorted(lookups) == ["", "/eval_raw", "/evaluation"], requested
    assert sum("/search/" in path for path in requested) == 2  # the two streams' parts


def test_profile_prints_one_traceback_for_a_refused_plan_and_a_validation_summary(run_profile):
    session = (
        "RE(bps.mv(dnpu.e0, 2.0))\n"
        "import logging; logging.getLogger('bluesky.run_engine').warning('other warning')\n"
        "RE(validate_gradients(dnpu, n_points=1, compare_sequential=False))\n"
        "RE(train(dnpu, BooleanGate('AND'), method='fd', max_iterations=2, max_attempts=1))\n"
        "(uid,) = RE(train(dnpu, BooleanGate('AND')))\n"
        "print('accuracy', trained_setting(load_run(runs, uid))['accuracy'])\n"
    )
    completed = run_profile("--simple-prompt", "--colors=NoColor", input=session)
    printed = completed.stdout + completed.stderr
    assert "Run aborted\n" not in printed  # bluesky's log record, not the source line
    assert printed.count("Traceback") == 1, printed[-3000:]
    assert "LimitError: dnpu_e0_setpoint: +2.0000 V is outside the electrode limits" in printed
    assert "other warning" in printed
    # The best-effort table leaves out every stream but "primary".
    assert "Validation summary:\n  dnpu_validation_cosine_hge_fd_median = 0." in printed
    # A training run has its progress bar instead of the table, whose lines would break it.
    assert "New stream: 'validation_summary'" in printed
    assert "AND fd" in printed and "New stream: 'primary'" not in printed
    # Reading a few scalars back shows no tiled "Fetching data..." bar.
    assert "accuracy 1.0" in printed and "Fetching data" not in printed


def test_interactive_waits_show_no_bar_for_dnpu_acquisitions(dnpu):
    from bluesky.utils import TerminalProgressBar
    from ophyd.sim import SynAxis
    from ophyd.status import DeviceStatus

    from dnpu_bluesky.session import _progress_bar_of_other_devices

    # A DNPU status cannot report progress: bluesky would print "No progress bar available".
    assert not isinstance(_progress_bar_of_other_devices([DeviceStatus(dnpu)]), TerminalProgressBar)
    motor = SynAxis(name="motor")
    bar = _progress_bar_of_other_devices([DeviceStatus(dnpu), motor.set(1.0)])
    assert isinstance(bar, TerminalProgressBar)
    bar.clear()


@pytest.mark.parametrize(
    "backend, live",
    [
        ("QtAgg", True),
        ("TkAgg", True),
        ("MacOSX", True),
        ("module://ipympl.backend_nbagg", True),
        ("widget", True),
        ("ipympl", True),
        ("agg", False),
        ("pdf", False),
        ("module://matplotlib_inline.backend_inline", False),
    ],
)
def test_the_live_loss_plot_is_drawn_where_a_figure_can_update(monkeypatch, backend, live):
    import matplotlib

    from dnpu_bluesky.session import _interactive_matplotlib

    monkeypatch.setattr(matplotlib, "get_backend", lambda: backend)
    assert _interactive_matplotlib() is live


def test_profile_sessions_keep_scan_id_and_record_the_setup_sample(run_profile, tmp_path):
    from pathlib import Path

    sim = Path(__file__).resolve().parents[1] / "profiles" / "setups" / "sim.yaml"
    setup = tmp_path / "chip.yaml"
    setup.write_text(sim.read_text() + "sample: chip B7\n")
    session = (
        "print('plots on:', bec._plots_enabled)\n"
        "(uid,) = RE(count([dnpu]))\n"
        "start = load_run(runs, uid).metadata['start']\n"
        "print('stored:', start['scan_id'], start.get('sample'))\n"
    )
    options = ("--simple-prompt", "--colors=NoColor")
    headless = {"MPLBACKEND": "Agg"}
    first = run_profile(*options, input=session, extra_env={**headless, "DNPU_SETUP": str(setup)})
    printed = first.stdout + first.stderr
    assert "Runs record sample 'chip B7' (RE.md)" in printed, printed[-3000:]
    assert "plots on: False" in printed  # no GUI backend here
    assert "Transient Scan ID: 1 " in printed  # bec, the best-effort table, saw the run
    assert "stored: 1 chip B7" in printed
    # The next session counts on; a setup without a sample keeps the one RE.md holds.
    second = run_profile(*options, input=session, extra_env=headless)
    printed = second.stdout + second.stderr
    assert "Transient Scan ID: 2 " in printed, printed[-3000:]
    assert "stored: 2 chip B7" in printed


# (BestEffortCallback itself imports Qt for a Qt backend: not installed here.)
@pytest.mark.parametrize("backend, plots", [("TkAgg", True), ("agg", False), ("pdf", False)])
def test_bec_plots_where_a_gui_backend_shows_them_and_never_in_the_queue_worker(
    monkeypatch, backend, plots
):
    import matplotlib
    from bluesky_queueserver import clear_re_worker_active, set_re_worker_active

    from dnpu_bluesky.session import make_best_effort_callback

    monkeypatch.setattr(matplotlib, "get_backend", lambda: backend)
    assert make_best_effort_callback()._plots_enabled is plots
    set_re_worker_active()
    try:
        assert make_best_effort_callback()._plots_enabled is False
    finally:
        clear_re_worker_active()


def test_run_engine_metadata_persists_in_the_data_directory(tmp_path, monkeypatch):
    import gc

    from bluesky.plans import count
    from ophyd.sim import det

    from dnpu_bluesky.session import make_run_engine, persistent_metadata_from_env
    from dnpu_bluesky.storage import StorageConfig

    monkeypatch.delenv("DNPU_METADATA_DIR", raising=False)
    config = StorageConfig(directory=tmp_path / "tiled")
    engine = make_run_engine(None, interactive=False, md=persistent_metadata_from_env(config))
    engine.md["sample"] = "chip B7"
    engine(count([det]))
    engine(count([det]))
    assert (tmp_path / "tiled" / "md").is_dir()
    # The session ends: its exit writes the metadata (one process at a time keeps a folder).
    engine.md._finalizer()
    del engine
    gc.collect()
    # A new session (another RunEngine on the same folder) continues the count.
    again = make_run_engine(None, interactive=False, md=persistent_metadata_from_env(config))
    starts = []
    again(count([det]), lambda name, doc: starts.append(doc) if name == "start" else None)
    assert [doc["scan_id"] for doc in starts] == [3]
    assert starts[0]["sample"] == "chip B7"
    again.md._finalizer()
    # DNPU_METADATA_DIR puts it elsewhere: a fresh count there.
    monkeypatch.setenv("DNPU_METADATA_DIR", str(tmp_path / "elsewhere"))
    elsewhere = persistent_metadata_from_env(config)
    assert "scan_id" not in elsewhere and (tmp_path / "elsewhere").is_dir()


def test_run_engine_metadata_goes_to_the_data_directory_a_tilde_names(tmp_path, monkeypatch):
    from dnpu_bluesky.session import persistent_metadata_from_env
    from dnpu_bluesky.storage import StorageConfig

    monkeypatch.delenv("DNPU_METADATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)

    persistent_metadata_from_env(StorageConfig(directory=Path("~/dnpu-data/tiled")))

    assert (tmp_path / "home" / "dnpu-data" / "tiled" / "md").is_dir()
    assert not (tmp_path / "~").exists()
