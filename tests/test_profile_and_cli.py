"""The IPython profile and the ``dnpu-bluesky`` command, end to end on the virtual DNPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from dnpu_bluesky.cli import main
from dnpu_bluesky.storage import find_runs, load_run

REPO = Path(__file__).resolve().parents[1]


def test_profile_startup_files_run_a_plan_into_tiled(run_profile):
    code = (
        "(uid,) = RE(hge_gradient(dnpu)); run = load_run(runs, uid); "
        "print('STREAMS', sorted(run), run.primary['dnpu_hge_gradient'].read().shape)"
    )
    completed = run_profile("-c", code)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "STREAMS ['hge_raw', 'primary'] (1, 1, 5)" in completed.stdout


def test_cli_train_runs_report_and_errors(tmp_path, capsys, tiled_server, monkeypatch):
    # The session's server, as a remote one: two embedded Tiled servers in one process share
    # the server's global settings, so the CLI must not start its own here.
    data = ["--tiled-uri", tiled_server.uri]
    out = tmp_path / "results.json"
    status = main(["train", "--gates", "XOR,NOR", "--json", str(out), "--quiet", *data])
    assert status == 0
    rows = json.loads(out.read_text())["results"]
    assert [row["gate"] for row in rows] == ["XOR", "NOR"]
    expected = {
        "task", "gate", "method", "seed", "accuracy", "margin_nA",
        "iterations", "device_s", "wall_s", "run_uid",
    }  # fmt: skip
    for row in rows:
        assert expected <= set(row)
        assert row["accuracy"] == 1.0 and row["margin_nA"] > 0
        assert row["device_s"] > 0 and row["method"] == "hge"
    table = capsys.readouterr().out
    assert "XOR" in table and "NOR" in table

    for query in (  # a gate in any case
        ["--gate", "xor"],
        ["--task", "boolean:XOR"],
        ["--task", "boolean:xor"],
        ["--task", "boolean", "--gate", "xor"],
    ):
        assert main(["runs", *query, *data]) == 0
        listing = capsys.readouterr().out.splitlines()
        assert [line[:8] for line in listing[1:]] == [rows[0]["run_uid"][:8]]
    assert main(["runs", *data]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:5] == ["uid", "time", "plan", "method", "gate/task"]
    for row in rows:  # each run with its method, final accuracy and margin
        (line,) = [line for line in listing if line.startswith(row["run_uid"][:8])]
        assert line.split()[3:] == [
            "train", "hge", row["gate"], "success", "100%", f"{row['margin_nA']:.2f}"
        ]  # fmt: skip
    # --task boolean, as train --task names it: the runs of every gate, newest first.
    assert main(["runs", "--task", "boolean", "--limit", "2", *data]) == 0
    captured = capsys.readouterr()
    listing = captured.out.splitlines()
    assert [line[:8] for line in listing[1:]] == [row["run_uid"][:8] for row in rows[::-1]]
    assert main(["runs", "--task", "boolean", "--limit", "1", *data]) == 0
    captured = capsys.readouterr()
    assert [line[:8] for line in captured.out.splitlines()[1:]] == [rows[-1]["run_uid"][:8]]
    assert "(the newest 1; --limit N for more)" in captured.err
    assert main(["runs", "--plan", "no_such_plan", *data]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no runs match" in captured.err
    for query, message in (
        (["--gate", "XNAND"], "--gate: unknown gate(s) ['XNAND']"),
        (["--task", "boolean:FOO"], "--task boolean:GATE: unknown gate(s) ['FOO']"),
        (["--task", "boolean:AND,OR"], "--task boolean:GATE: one gate, got AND, OR"),
        (["--gate", "and,or"], "--gate: one gate, got AND, OR"),
    ):
        assert main(["runs", *query, *data]) == 2
        assert message in capsys.readouterr().err

    figures = tmp_path / "figures"
    assert main(["report", rows[0]["run_uid"], "--out", str(figures), *data]) == 0
    drawn = sorted(p.name for p in figures.iterdir())
    assert drawn == ["gates_loss.png", "gates_outputs.png"]
    assert all((figures / name).stat().st_size > 10_000 for name in drawn)
    capsys.readouterr()
    # By default a folder of its own per set of runs, never the demo's folder.
    monkeypatch.chdir(tmp_path)
    assert main(["report", *(row["run_uid"][:8] for row in rows), *data]) == 0
    folder = "reports/" + "-".join(row["run_uid"][:8] for row in rows)
    assert capsys.readouterr().out.strip() == (
        f"figures: {folder}/gates_outputs.png, {folder}/gates_loss.png"
    )
    assert not (tmp_path / "demo-output").exists()

    # Measure the trained XOR again at its controls: a new run, pointing back at the first.
    assert main(["evaluate", rows[0]["run_uid"][:8], "--fixed-threshold", *data]) == 0
    then, now = capsys.readouterr().out.strip().splitlines()[-2:]
    assert then.split()[:3] == ["then", rows[0]["run_uid"][:8], "100%"]
    assert now.split()[0] == "now" and now.split()[2] == "100%"
    assert main(["runs", "--plan", "evaluate_controls", *data]) == 0
    assert now.split()[1] in capsys.readouterr().out
    # On another device the trained controls do not make an XOR: exit status 1.
    assert main(["evaluate", rows[0]["run_uid"], "--seed", "1", *data]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].split()[0] == "now"

    assert main(["train", "--gates", "XAND", *data]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "unknown gate" in error[0]
    # A missing run: where it was looked for, without the API key in the server's URI.
    where = "Tiled at " + urlsplit(tiled_server.uri)._replace(query="").geturl()
    for command in ("evaluate", "report"):
        assert main([command, "0000000000", *data]) == 2
        # The storage takes seconds to open, so it is announced first.
        assert capsys.readouterr().err.strip().splitlines() == [
            f"Opening the run store in {where}",
            f"dnpu-bluesky {command}: no run with uid '0000000000' in {where} (container 'runs')",
        ]


def test_cli_continues_a_past_run_from_its_final_controls(tmp_path, capsys, tiled_server):
    data = ["--tiled-uri", tiled_server.uri]
    out = tmp_path / "results.json"
    # Three iterations are too few for XOR on device 2: the run ends unsolved.
    args = ["train", "--gates", "XOR", "--seed", "2", "--max-iterations", "3", "--inputs", "e3,e4",
            "--quiet"]  # fmt: skip
    assert main([*args, "--json", str(out), *data]) == 1
    (first,) = json.loads(out.read_text())["results"]
    assert first["accuracy"] < 1.0
    assert f"1 of 1 not solved: XOR ({first['run_uid'][:8]})" in capsys.readouterr().err
    # evaluate's exit 1 points at the way on.
    assert main(["evaluate", first["run_uid"], *data]) == 1
    err = capsys.readouterr().err
    assert f"train --from {first['run_uid'][:8]}" in err
    assert "XOR does not separate (nor did it then)" in err  # it never did

    assert (
        main(["train", "--from", first["run_uid"][:8], "--quiet", "--json", str(out), *data]) == 0
    )
    (second,) = json.loads(out.read_text())["results"]
    assert second["gate"] == "XOR" and second["accuracy"] == 1.0
    captured = capsys.readouterr()
    assert f"Continuing run {first['run_uid'][:8]} (XOR" in captured.out
    assert "another device" not in captured.err  # the run's own device, seed 2
    past = load_run(tiled_server.client, first["run_uid"])
    ended = past["evaluation"]["evaluation_controls"].read()[-1]
    continued = load_run(tiled_server.client, second["run_uid"])
    start = continued.metadata["start"]
    assert start["source_run"] == first["run_uid"]
    assert start["source_device"] == past.metadata["start"]["detectors"][0]
    assert start["plan_args"]["initial_controls"] == pytest.approx(list(ended))
    # Its inputs and their trained levels too.
    assert start["plan_args"]["inputs"] == "e3,e4" == second["inputs"]
    zero = past["evaluation"]["evaluation_input_zero_v"].read()[-1]
    assert np.array(start["plan_args"]["initial_levels"])[:, 0] == pytest.approx(list(zero))
    # Its random restarts must not replay the past run's own starts.
    assert start["seed"] == past.metadata["start"]["seed"] + 1 == second["seed"]
    # The first step is taken where the past run ended.
    assert continued.primary["train_controls"].read()[0] == pytest.approx(ended)

    for extra, message in (
        (["--gates", "AND"], "drop --gates"),
        (["--method", "ga"], "the genetic algorithm starts afresh"),
        (["--devices", "2"], "give one device"),
    ):
        assert main(["train", "--from", first["run_uid"], *extra, "--quiet", *data]) == 2
        assert message in capsys.readouterr().err
    assert main(["train", "--device", "dnpu2", "--quiet", *data]) == 2
    assert "--device chooses the device of a --from run" in capsys.readouterr().err
    # Controls are applied in order: a setup with them on other channels is refused (the
    # run's inputs are the run's own, whatever roles the setup gives).
    swapped = tmp_path / "swapped.yaml"
    setup = (REPO / "profiles" / "setups" / "sim.yaml").read_text()
    swapped.write_text(
        setup.replace("channel: sim/ao1,", "channel: sim/aoX,")
        .replace("channel: sim/ao2,", "channel: sim/ao1,")
        .replace("channel: sim/aoX,", "channel: sim/ao2,")
    )
    for command in (["train", "--from"], ["evaluate"]):
        args = [*command, first["run_uid"], "--setup", str(swapped), *data]
        assert main(args) == 2
        assert _one_error(capsys.readouterr().err).endswith(
            f"run {first['run_uid'][:8]} had its controls on e0 (sim/ao0), e1 (sim/ao1), "
            "e2 (sim/ao2), e5 (sim/ao5), e6 (sim/ao6); this device has them on e0 (sim/ao0), "
            "e1 (sim/ao2), e2 (sim/ao1), e5 (sim/ao5), e6 (sim/ao6): give the setup it was "
            "measured with"
        )


def test_cli_continuation_trains_for_the_past_runs_margin(tmp_path, capsys, tiled_server):
    data = ["--tiled-uri", tiled_server.uri, "--quiet"]
    out = tmp_path / "results.json"
    # XNOR on device 0 is classified right early, but reaches no 30 nA separation.
    args = ["train", "--gates", "XNOR", "--margin", "30", "--max-iterations", "5"]
    assert main([*args, "--json", str(out), *data]) == 1
    (first,) = json.loads(out.read_text())["results"]
    uid = first["run_uid"][:8]
    capsys.readouterr()

    continued = ["train", "--from", uid, "--max-iterations", "5", "--json", str(out), *data]
    assert main(continued) == 1  # counted against the past run's 30 nA, as with --margin 30
    captured = capsys.readouterr()
    assert "from its final controls, for its 30 nA margin;" in captured.out
    (second,) = json.loads(out.read_text())["results"]
    assert f"not solved with a 30 nA margin: XNOR ({second['run_uid'][:8]})" in captured.err
    start = load_run(tiled_server.client, second["run_uid"]).metadata["start"]
    assert start["plan_args"]["target_margin_na"] == 30.0
    assert start["task"]["loss_params"] == {"offset_na": 30.0}
    # Classified right, yet trained on for all its iterations: not stopped at 2 nA.
    assert second["accuracy"] == 1.0 and second["margin_nA"] < 30.0
    assert second["iterations"] == 4 * 5

    # Naming the run's own margin again is no conflict; another one is.
    assert main(["train", "--from", uid, "--margin", "30", "--max-iterations", "1", *data]) == 1
    assert "for its 30 nA margin" in capsys.readouterr().out
    assert main(["train", "--from", uid, "--margin", "10", *data]) == 2
    error = _one_error(capsys.readouterr().err)
    assert (
        error == f"dnpu-bluesky train: --from keeps run {uid}'s own margin (30 nA); drop --margin"
    )


def test_cli_runs_shows_a_sphere_runs_test_accuracy(tmp_path, capsys, tiled_server):
    data = ["--tiled-uri", tiled_server.uri]
    out = tmp_path / "results.json"
    args = ["train", "--task", "sphere", "--max-iterations", "1", "--json", str(out), "--quiet"]
    assert main([*args, *data]) == 0
    (row,) = json.loads(out.read_text())["results"]
    capsys.readouterr()
    assert main(["runs", "--task", "sphere", "--limit", "1", *data]) == 0
    (line,) = capsys.readouterr().out.splitlines()[1:]
    assert line.startswith(row["run_uid"][:8])
    assert line.split()[3:5] == ["train", "hge"]
    assert line.endswith(f"  test {row['test_accuracy']:.0%}")
    assert main(["runs", "--task", "boolean", "--limit", "1000", *data]) == 0
    assert row["run_uid"][:8] not in capsys.readouterr().out


def test_cli_sphere_training_stops_at_a_target_accuracy(tmp_path, capsys, tiled_server):
    data = ["--tiled-uri", tiled_server.uri, "--quiet"]
    for args, message in [
        (["--gates", "XOR", "--target-accuracy", "0.9"], "a gate is trained to 100%"),
        (["--task", "sphere", "--target-accuracy", "1.5"], "must be in (0, 1], got 1.5"),
    ]:
        assert main(["train", *args, *data]) == 2
        assert message in _one_error(capsys.readouterr().err)
    out = tmp_path / "results.json"
    args = ["train", "--task", "sphere", "--batch-size", "16", "--target-accuracy", "0.5",
            "--max-iterations", "20", "--json", str(out)]  # fmt: skip
    assert main([*args, *data]) == 0
    (row,) = json.loads(out.read_text())["results"]
    run = load_run(tiled_server.client, row["run_uid"])
    assert run.metadata["start"]["plan_args"]["target_accuracy"] == 0.5
    assert row["accuracy"] >= 0.5 and row["iterations"] < 20


def test_cli_trains_several_devices_side_by_side(tmp_path, capsys, tiled_server):
    data = ["--tiled-uri", tiled_server.uri]
    out = tmp_path / "results.json"
    args = ["train", "--gates", "AND", "--devices", "2", "--json", str(out), "--quiet"]
    assert main([*args, *data]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [row["device"] for row in rows] == ["dnpu1", "dnpu2"]
    assert [row["device_seed"] for row in rows] == [0, 1]  # --seed 0, then one seed each
    uids = [row["run_uid"] for row in rows]
    assert len(set(uids)) == 2  # a run per device
    assert all(row["accuracy"] == 1.0 for row in rows)
    table = capsys.readouterr().out
    assert "dnpu1" in table and "dnpu2" in table
    assert main(["runs", "--gate", "AND", *data]) == 0
    listed = capsys.readouterr().out.splitlines()
    for row in rows:
        (line,) = [line for line in listed if line.startswith(row["run_uid"][:8])]
        assert line.split()[7:9] == ["100%", f"{row['margin_nA']:.2f}"]
    # Re-measuring a device's run; dnpu2 was the virtual DNPU of seed 1.
    assert main(["evaluate", uids[1], "--device", "dnpu3", *data]) == 2
    assert "not 'dnpu3'" in capsys.readouterr().err
    assert main(["evaluate", uids[1], "--seed", "1", *data]) == 0
    then, now = capsys.readouterr().out.strip().splitlines()[-2:]
    assert then.split()[2] == now.split()[2] == "100%"
    check = find_runs(tiled_server.client, plan_name="evaluate_controls").values().first()
    assert (check.start["source_run"], check.start["source_device"]) == (uids[1], "dnpu2")

    assert main(["train", "--devices", "0", "--quiet", *data]) == 2
    assert "--devices must be at least 1" in capsys.readouterr().err
    setup = str(REPO / "profiles" / "setups" / "sim.yaml")
    assert main(["train", "--devices", "2", "--setup", setup, "--quiet", *data]) == 2
    assert "one --setup per device" in capsys.readouterr().err


def test_cli_takes_seed_and_setup_from_the_environment(tmp_path, capsys, tiled_server, monkeypatch):
    data = ["--tiled-uri", tiled_server.uri]
    out = tmp_path / "results.json"
    monkeypatch.setenv("DNPU_SEED", "2")
    assert main(["train", "--gates", "OR", "--json", str(out), "--quiet", *data]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["seed"] == 2
    # Evaluated without --seed, the run is measured again on its own device (seed 2) ...
    monkeypatch.delenv("DNPU_SEED")
    assert main(["evaluate", row["run_uid"], *data]) == 0
    assert "another device" not in capsys.readouterr().err
    # ... and on another one only when asked, with a note saying so.
    assert main(["evaluate", row["run_uid"], "--seed", "0", *data]) in (0, 1)
    assert "was measured on another device" in capsys.readouterr().err

    monkeypatch.setenv("DNPU_SEED", "two")
    assert main(["train", "--quiet", *data]) == 2
    assert "DNPU_SEED must be an integer" in capsys.readouterr().err
    monkeypatch.setenv("DNPU_SEED", "-1")
    assert main(["train", "--quiet", *data]) == 2
    assert "DNPU_SEED must be 0 to 4294967295, got -1" in _one_error(capsys.readouterr().err)
    monkeypatch.delenv("DNPU_SEED")
    for command in ("train", "demo"):
        for seed in ("-2", "18446744073709551616"):
            assert main([command, "--seed", seed, "--quiet", *data]) == 2
            assert f"--seed must be 0 to 4294967295, got {seed}" in _one_error(
                capsys.readouterr().err
            )
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "profiles" / "setups" / "sim.yaml").read_text().replace(
        "max_v: 0.6", "max_v: 20.0", 1))  # fmt: skip
    monkeypatch.setenv("DNPU_SETUP", str(bad))
    assert main(["train", "--quiet", *data]) == 2
    assert "max_v" in capsys.readouterr().err


def test_cli_input_levels_outside_a_setups_limits(tmp_path, capsys, tiled_server):
    data = ["--tiled-uri", tiled_server.uri, "--quiet"]
    narrow = tmp_path / "narrow.yaml"  # inputs up to 0.2 V: the default logical 1 (0.3 V) is out
    narrow.write_text((REPO / "profiles" / "setups" / "sim.yaml").read_text().replace(
        "max_v: 0.3", "max_v: 0.2"))  # fmt: skip
    out = tmp_path / "results.json"
    listing = ["runs", "--plan", "train", "--limit", "1000", "--tiled-uri", tiled_server.uri]
    assert main(listing) == 0
    runs_before = capsys.readouterr().out
    fixed = ["--input-range=-0.7,0.3", "--inputs", "e3,e4"]
    args = ["train", "--gates", "OR", "--setup", str(narrow), *fixed, "--json", str(out)]
    assert main([*args, *data]) == 2
    error = _one_error(capsys.readouterr().err)  # one line, no traceback
    assert "+0.300 V on input dnpu_e3, outside its limits [-0.700, +0.200] V" in error
    assert "--input-range" in error and not out.exists()
    assert main(listing) == 0
    assert capsys.readouterr().out == runs_before  # refused before the run opened

    args = ["train", "--gates", "OR", "--setup", str(narrow), "--input-range=-0.6,0.2",
            "--inputs", "e3,e4"]  # fmt: skip
    assert main([*args, "--json", str(out), *data]) == 0
    (row,) = json.loads(out.read_text())["results"]
    run = load_run(tiled_server.client, row["run_uid"])
    assert run.metadata["start"]["task"]["input_high_v"] == 0.2
    cases = np.asarray(
        run["eval_raw"].metadata["configuration"]["dnpu"]["data"]["dnpu_input_cases"]
    )
    assert cases.min() == pytest.approx(-0.6) and cases.max() == pytest.approx(0.2)

    for text, message in (("0.3,-0.7", "LOW must be below HIGH"), ("0.3", "takes LOW,HIGH")):
        assert main(["train", f"--input-range={text}", *data]) == 2
        assert message in capsys.readouterr().err


def test_cli_does_not_count_a_gate_read_through_a_clipped_output(tmp_path, capsys, tiled_server):
    tiny = tmp_path / "tiny.yaml"  # +-1 nA full scale: every control setting clips
    tiny.write_text((REPO / "profiles" / "setups" / "sim.yaml").read_text().replace(
        "ai_range_v: 10", "ai_range_v: 0.01"))  # fmt: skip
    out = tmp_path / "results.json"
    args = ["train", "--gates", "AND", "--setup", str(tiny), "--inputs", "e3,e4"]
    args += ["--json", str(out)]
    assert main([*args, "--tiled-uri", tiled_server.uri, "--quiet"]) == 1
    (row,) = json.loads(out.read_text())["results"]
    # One step per attempt: each clipped at once, and there are 4 attempts.
    assert row["clipped_samples"] > 0 and row["iterations"] == 4
    error = capsys.readouterr().err
    assert f"1 of 1 not solved: AND ({row['run_uid'][:8]}, output clipped)" in error
    assert "left the AI range" in error and "attempt 4 of 4 ends there, no attempts left" in error
    # Measured again on the same setup: said, and not a pass.
    again = ["evaluate", row["run_uid"][:8], "--setup", str(tiny), "--tiled-uri", tiled_server.uri]
    assert main(again) == 1
    assert "the output left the AI range at these controls" in capsys.readouterr().err


def test_cli_output_paths_are_checked_first_and_results_survive_a_figure_failure(
    tmp_path, capsys, tiled_server
):
    data = ["--tiled-uri", tiled_server.uri, "--quiet"]
    listing = ["runs", "--plan", "train", "--limit", "1000", *data[:2]]
    assert main(listing) == 0
    runs_before = capsys.readouterr().out
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    for option, path, message in [
        ("--json", tmp_path / "missing" / "out.json", "cannot write a file there"),
        ("--json", tmp_path, "cannot write a file there"),
        ("--figures", a_file / "figures", "cannot create it"),
    ]:
        assert main(["train", "--gates", "OR", option, str(path), *data]) == 2
        assert message in _one_error(capsys.readouterr().err)
    assert main(listing) == 0
    assert capsys.readouterr().out == runs_before  # refused before any run opened

    # The folder is writable, but a folder sits where the figure would go: the figures fail
    # after training, and the table and the JSON are still written.
    figures = tmp_path / "figures"
    (figures / "gates_outputs.png").mkdir(parents=True)
    out = tmp_path / "out.json"
    args = ["train", "--gates", "OR", "--figures", str(figures), "--json", str(out), *data]
    assert main(args) == 0
    captured = capsys.readouterr()
    (row,) = json.loads(out.read_text())["results"]
    assert "OR        hge" in captured.out and row["run_uid"][:8] in captured.out
    assert f"could not write the figures to {figures}" in captured.err
    assert f"dnpu-bluesky report {row['run_uid'][:8]} --out DIR" in captured.err
    assert main(["report", row["run_uid"][:8], "--out", str(figures), *data[:2]]) == 1


def test_cli_trains_for_a_margin(tmp_path, capsys, tiled_server):
    data = ["--tiled-uri", tiled_server.uri, "--quiet"]
    out = tmp_path / "results.json"
    for method in ("hge", "ga"):
        args = ["train", "--gates", "AND", "--method", method, "--margin", "10"]
        assert main([*args, "--json", str(out), *data]) == 0
        (row,) = json.loads(out.read_text())["results"]
        assert row["accuracy"] == 1.0 and row["margin_nA"] >= 10.0
        start = load_run(tiled_server.client, row["run_uid"]).metadata["start"]
        assert start["plan_args"]["target_margin_na"] == 10.0
        assert start["task"]["loss_params"] == {"offset_na": 10.0}
        capsys.readouterr()
        assert main(["runs", "--gate", "AND", "--limit", "1", "--tiled-uri", tiled_server.uri]) == 0
        (line,) = capsys.readouterr().out.splitlines()[1:]
        plan = "train_genetic" if method == "ga" else "train"
        assert line.startswith(row["run_uid"][:8]) and line.split()[3:6] == [plan, method, "AND"]

    for extra, message in (
        (["--margin", "0"], "--margin must be positive"),
        (["--task", "sphere", "--margin", "5"], "--margin is for gates"),
        (["--max-iterations", "0"], "--max-iterations must be at least 1, got 0"),
        (["--lr", "inf"], "--lr must be positive (V per step), got inf"),
        (["--json", ""], "--json needs a file name"),
    ):
        assert main(["train", *extra, *data]) == 2
        assert message in capsys.readouterr().err


def test_cli_ctrl_c_aborts_the_run_between_steps(tiled_server, tmp_path, capsys):
    import signal
    import threading
    import time

    # XNOR on device 2's inputs e3,e4 at -0.7/0.3 V never reaches 10 nA (its ceiling there is
    # about 3 nA): the run would take all 480 iterations. OR, first, is done in about a
    # second, and its result is reported despite the Ctrl-C.
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "dnpu_bluesky.cli", "train", "--gates", "OR,XNOR",
               "--seed", "2", "--margin", "10", "--json", str(out), "--inputs", "e3,e4",
               "--input-range=-0.7,0.3",
               "--tiled-uri", tiled_server.uri]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: process.stderr.read(1), b"")))
    reader.start()
    deadline = time.monotonic() + 120
    while b"XNOR hge" not in b"".join(err) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the progress bar shows that training runs
    process.send_signal(signal.SIGINT)  # once, as an operator would
    status = process.wait(timeout=60)
    reader.join()
    lines = b"".join(err).decode().replace("\r", "\n").strip().splitlines()
    assert status == 130, "\n".join(lines[-5:])
    last = lines[-1]
    assert last.startswith("dnpu-bluesky train: interrupted; run ") and "aborted and stored" in last
    run = load_run(tiled_server.client, last.split("run ")[1].split()[0])
    assert run.metadata["stop"]["exit_status"] == "abort"
    assert 0 < run.primary["train_iteration"].read().size < 100
    assert "Traceback" not in b"".join(err).decode()
    assert not any("No open traces" in line for line in lines)  # bluesky's noise on abort
    (row,) = json.loads(out.read_text())["results"]
    assert row["gate"] == "OR" and row["margin_nA"] >= 10
    table = process.stdout.read().decode().splitlines()
    header = next(k for k, line in enumerate(table) if line.startswith("gate/task"))
    assert table[header + 2].split()[:2] == ["OR", "hge"]
    assert row["run_uid"][:8] in table[header + 2].split()
    # The aborted run has no final evaluation: its report is the loss curve, and says why.
    aborted = run.metadata["start"]["uid"][:8]
    report = ["report", aborted, "--out", str(tmp_path / "report")]
    assert main([*report, "--tiled-uri", tiled_server.uri]) == 0
    assert [p.name for p in (tmp_path / "report").iterdir()] == ["gates_loss.png"]
    assert f"note: run {aborted} (abort) has no unperturbed evaluation" in capsys.readouterr().err


def test_cli_reports_a_device_failure_mid_run_by_its_cause(capsys, monkeypatch, tiled_server):
    from dnpu_bluesky.sim import SimulatedBackend

    real_play = SimulatedBackend.play_and_record
    calls = []

    def failing_on_the_third_stream(self, ao_volts, sample_rate):
        calls.append(len(ao_volts))
        if len(calls) == 3:
            raise RuntimeError("AI buffer overflow (injected)")
        return real_play(self, ao_volts, sample_rate)

    monkeypatch.setattr(SimulatedBackend, "play_and_record", failing_on_the_third_stream)
    argv = ["train", "--gates", "XNOR", "--quiet", "--tiled-uri", tiled_server.uri]
    assert main(argv) == 1
    error = _one_error(capsys.readouterr().err)
    run = find_runs(tiled_server.client, plan_name="train", gate="XNOR").values().first()
    assert run.metadata["stop"]["exit_status"] == "fail"
    uid = run.metadata["start"]["uid"][:8]
    assert error.startswith(
        f"dnpu-bluesky train: run {uid} failed and was stored with exit status 'fail'"
    ), error
    assert error.endswith("RuntimeError: AI buffer overflow (injected)")


def test_cli_a_run_that_fails_in_the_plan_exits_1_saying_it_was_stored(
    capsys, monkeypatch, tiled_server
):
    from dnpu_bluesky.sim import VirtualDNPU

    # A model that gives NaN currents (as a surrogate with a NaN amplification did): the
    # plan refuses the outputs with a ValueError, which is not a bad argument (exit 2).
    monkeypatch.setattr(
        VirtualDNPU, "current", lambda self, volts: np.full(volts.shape[:-1], np.nan)
    )
    argv = ["train", "--gates", "NAND", "--quiet", "--tiled-uri", tiled_server.uri]
    assert main(argv) == 1
    error = _one_error(capsys.readouterr().err)
    run = find_runs(tiled_server.client, plan_name="train", gate="NAND").values().first()
    assert run.metadata["stop"]["exit_status"] == "fail"
    uid = run.metadata["start"]["uid"][:8]
    assert error.startswith(
        f"dnpu-bluesky train: run {uid} failed and was stored with exit status 'fail'"
    ), error
    assert "ValueError: outputs must be finite" in error


def test_cli_redacts_the_password_of_a_tiled_uri(capsys):
    uri = "http://alice:s3cret-pw@127.0.0.1:9/api"
    assert main(["runs", "--tiled-uri", uri]) == 1
    err = capsys.readouterr().err
    assert "s3cret-pw" not in err
    assert "alice:***@127.0.0.1:9" in _one_error(err)
    assert main(["runs", "--tiled-uri", "http://alice:s3cret-pw@[::1/api"]) == 2
    err = capsys.readouterr().err
    assert "s3cret-pw" not in err and err.count("\n") == 1, err


def test_storage_messages_redact_a_uris_password():
    from dnpu_bluesky.storage._config import redact

    message = "cannot reach Tiled at http://alice:p@ss:w0rd@host:8000/api?api_key=k1 (refused)"
    assert redact(message, "k1") == "cannot reach Tiled at http://alice:***@host:8000/api (refused)"
    assert redact("Tiled at https://bob@host/x") == "Tiled at https://bob@host/x"  # no password


def test_package_warnings_are_one_line_without_the_callers_source(capsys):
    import warnings

    from dnpu_bluesky._console_log import set_up_console_log
    from dnpu_bluesky.storage import StorageWarning

    showwarning = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            set_up_console_log()
            warnings.warn("Writing to Tiled failed: 503 (injected)", StorageWarning, stacklevel=1)
    finally:
        warnings.showwarning = showwarning
    err = capsys.readouterr().err
    assert err == "StorageWarning: Writing to Tiled failed: 503 (injected)\n"


def test_cli_reports_an_unreachable_storage_or_driver_in_one_line(capsys, tiled_server):
    assert main(["runs", "--tiled-uri", "http://127.0.0.1:9?api_key=secret"]) == 1
    error = _one_error(capsys.readouterr().err)
    assert (
        error == "dnpu-bluesky runs: cannot reach Tiled at http://127.0.0.1:9: connection refused"
    )

    import nidaqmx.system
    from nidaqmx.errors import DaqNotFoundError, DaqNotSupportedError

    try:
        version = nidaqmx.system.System.local().driver_version
    except (DaqNotFoundError, DaqNotSupportedError):
        pass
    else:
        pytest.skip(f"NI-DAQmx {version} is installed: a test must not drive real hardware")
    setup = str(REPO / "profiles" / "setups" / "cdaq-example.yaml")
    # The hardware is checked before the storage is opened (an unreachable one here).
    assert main(["train", "--setup", setup, "--quiet", "--tiled-uri", "http://127.0.0.1:9"]) == 1
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert "NI-DAQmx driver not found" in error


def test_cli_check_profile(tmp_path, capsys):
    good = REPO / "profiles" / "setups" / "sim.yaml"
    assert main(["check-profile", str(good)]) == 0
    out = capsys.readouterr().out
    assert "valid setup" in out
    # 10 V at 1e7 V/A: the current that fills the AI range.
    assert "full scale +-1000 nA (AI range +-10 V at 1e+07 V/A)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("max_v: 0.6", "max_v: 20.0", 1))
    assert main(["check-profile", str(bad)]) == 2
    assert "max_v" in capsys.readouterr().err


def test_cli_bad_arguments_exit_nonzero(tmp_path, capsys):
    # Refused before any storage is opened (none is configured here) or device is built.
    for args, message in (
        (["--gates="], "unknown gate(s) ''"),
        (["--gates", "XOR", "--batch-size", "4"], "--batch-size is for the sphere task"),
        (["--task", "sphere", "--gates", "XOR"], "--gates is for the boolean task"),
        (["--device", "dnpu2"], "--device chooses the device of a --from run"),
    ):
        assert main(["train", *args, "--tiled-uri", "http://127.0.0.1:9"]) == 2
        assert message in capsys.readouterr().err
    nowhere = ["--tiled-uri", "http://127.0.0.1:9"]
    # Two setups side by side on one DAQ channel (DAQmx names ignore case): refused before
    # any storage or device, not by DAQmx once the run is open.
    rig = REPO / "profiles" / "setups" / "cdaq-example.yaml"
    other = tmp_path / "rig2.yaml"
    other.write_text(
        rig.read_text()
        .replace("cDAQ1Mod1/ao", "cDAQ2Mod1/ao")
        .replace("cDAQ1Mod3/ai0", "CDAQ1MOD3/AI0")
    )
    for second, channel in ((rig, "cDAQ1Mod1/ao0"), (other, "CDAQ1MOD3/AI0")):
        assert main(["train", "--setup", str(rig), "--setup", str(second), *nowhere]) == 2
        error = _one_error(capsys.readouterr().err)
        assert f"--setup {second} uses DAQ channel {channel}, as does --setup {rig}" in error
    for limit in ("0", "-1"):
        assert main(["runs", "--limit", limit, *nowhere]) == 2
        error = _one_error(capsys.readouterr().err)
        assert error == f"dnpu-bluesky runs: --limit must be at least 1, got {limit}"
    # evaluate measures on the setup's device: a --seed would have no effect.
    setup = str(REPO / "profiles" / "setups" / "sim.yaml")
    assert main(["evaluate", "abcdef12", "--seed", "1", "--setup", setup, *nowhere]) == 2
    error = _one_error(capsys.readouterr().err)
    assert "--seed picks a virtual DNPU, but --setup gives the device" in error
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DNPU_SETUP", setup)
        assert main(["evaluate", "abcdef12", "--seed", "1", *nowhere]) == 2
        assert f"but DNPU_SETUP gives the device ({setup})" in capsys.readouterr().err
    assert main(["train", "--model", "no-such-file.pt", "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["train", "--method", "newton"])
    assert exited.value.code == 2
    assert "invalid choice: 'newton'" in capsys.readouterr().err


def test_cli_a_missing_run_names_the_data_directory(tmp_path):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNPU_")}
    completed = subprocess.run(
        [sys.executable, "-m", "dnpu_bluesky.cli", "report", "d3216930", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.strip().splitlines() == [
        f"Opening the run store in the data directory {data} (first use: creating its "
        "catalog takes longer)",
        f"dnpu-bluesky report: no run with uid 'd3216930' in the data directory {data} "
        "(container 'runs')",
    ]


def test_cli_help_states_the_defaults(capsys):
    import inspect

    from dnpu_bluesky.plans import train, train_genetic
    from dnpu_bluesky.tasks.losses import corrsig_loss

    def default(function, name):
        return inspect.signature(function).parameters[name].default

    def help_of(*command):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    text = help_of("train")
    attempts, iterations = default(train, "max_attempts"), default(train, "max_iterations")
    assert (
        "iterations per attempt; an unsolved attempt restarts from random controls, up to "
        f"{attempts} attempts, so up to {attempts}*N iterations in all (default: {iterations} "
        "per attempt)" in text
    )
    assert f"runs {default(train_genetic, 'generations')} generations and ignores it" in text
    # Without --margin the loss keeps its own centre: not the same as --margin 2.
    target, offset = default(train, "target_margin_na"), default(corrsig_loss, "offset_na")
    assert default(train_genetic, "target_margin_na") == target
    assert (
        f"(default: no margin asked; training stops at {target:g} nA with the sigmoid centred "
        f"at {offset:g} nA, and the exit status counts accuracy only)" in text
    )
    assert "with --setup (or DNPU_SETUP) the device is the setup's and SEED seeds the " in text
    assert "not with --setup or DNPU_SETUP" in help_of("evaluate", "x")
    assert "at most this many, newest first (default: 20)" in help_of("runs")


def _one_error(err: str) -> str:
    """The one error line on stderr, among the notes that storage is opening or flushing."""
    notes = ("Opening the run store ", "Waiting for ", "... ")
    (line,) = [x for x in err.strip().splitlines() if not x.startswith(notes)]
    return line


def test_cli_sets_the_learning_rate_and_optimizer(tmp_path, capsys, tiled_server):
    data = ["--tiled-uri", tiled_server.uri, "--quiet"]
    for args, message in [
        (["--method", "ga", "--lr", "0.1"], "not --method ga"),
        (["--lr", "0"], "--lr must be positive"),
    ]:
        assert main(["train", *args, *data]) == 2
        assert message in _one_error(capsys.readouterr().err)
    out = tmp_path / "out.json"
    args = ["train", "--gates", "OR", "--lr", "0.1", "--optimizer", "gd", "--json", str(out)]
    assert main([*args, *data]) in (0, 1)
    (row,) = json.loads(out.read_text())["results"]
    start = load_run(tiled_server.client, row["run_uid"]).metadata["start"]
    assert start["plan_args"]["lr"] == 0.1 and start["plan_args"]["optimizer"] == "gd"


def test_demo_exits_1_naming_the_gates_it_did_not_solve(tmp_path, capsys, tiled_server):
    figures = tmp_path / "figures"
    args = ["demo", "--max-iterations", "1", "--margin", "30", "--inputs", "e3,e4", "--quiet"]
    assert main([*args, "--figures", str(figures), "--tiled-uri", tiled_server.uri]) == 1
    captured = capsys.readouterr()
    assert "0/6 gates solved" in captured.out
    assert "6 of 6 not solved with a 30 nA margin: AND (" in captured.err
    assert sorted(p.name for p in figures.iterdir()) == ["gates_loss.png", "gates_outputs.png"]
