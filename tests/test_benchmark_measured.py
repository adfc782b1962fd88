"""benchmarks.measured: the headline figures from run rows, the targets, the figure, a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import measured
from benchmarks.measured import Config, check_targets, make_config, peer_ratio, summarise


def _row(method: str, gate: str, seed: int, solved: bool, margin: float, device_s: float):
    return {
        "method": method,
        "gate": gate,
        "seed": seed,
        "solved": solved,
        "margin_na": margin,
        "device_s": device_s,
    }


@pytest.fixture
def rows() -> list[dict]:
    # Two gates x five seeds; XOR fails at seed 4 (4/5 = 80 %: found), AND at seeds 3, 4.
    out = []
    for seed in range(5):
        out.append(_row("hge", "XOR", seed, seed != 4, 30.0 + seed, 10.0))
        out.append(_row("hge", "AND", seed, seed < 3, 50.0 - 10 * seed, 2.0 + seed))
        out.append(_row("fd", "XOR", seed, seed < 2, 25.0, 40.0))
        out.append(_row("fd", "AND", seed, False, 5.0, 90.0))
    return out


def test_summary_figures(rows: list[dict]) -> None:
    config = Config(quick=False, seeds=tuple(range(5)), gates=("AND", "XOR"))
    summary = summarise(rows, config)
    assert summary["found"] == ["XOR"]
    assert summary["gates_found"] == 1
    # Weakest gate per seed: 30, 31, 30, 20, 10 (AND below XOR from seed 2 on).
    assert summary["min_margin_na"] == pytest.approx(30.0)
    assert summary["hge_device_s_median"] == {"AND": 4.0, "XOR": 10.0}
    assert summary["success"]["hge"] == {"solved": 7, "runs": 10}
    assert summary["success"]["fd"] == {"solved": 2, "runs": 10}
    assert summary["success"]["ga"] == {"solved": 0, "runs": 0}


def test_peer_ratio_counts_only_runs_both_solved(rows: list[dict]) -> None:
    fd = peer_ratio(rows, "fd")
    assert fd["pairs"] == 2  # XOR seeds 0 and 1
    assert fd["ratio"] == pytest.approx(80.0 / 20.0)
    # The peer solved a run HGE did not: it does not count.
    rows.append(_row("spsa", "XOR", 4, True, 22.0, 5.0))
    assert peer_ratio(rows, "spsa") == {
        "ratio": None,
        "pairs": 0,
        "peer_device_s": 0,
        "hge_device_s": 0,
    }


def test_targets() -> None:
    met = check_targets(
        {
            "gates_found": 6,
            "min_margin_na": 19.9,
            "hge_device_s_median": {"AND": 3.0, "XNOR": 61.0},
            "fd_over_hge": 3.0,
            "spsa_over_hge": 1.0,
            "ga_over_hge": None,
            "surrogate_speedup": 150.0,
            "sphere_test_accuracy": 0.9,
        }
    )
    assert met == {
        "gates_found": True,
        "min_margin_na": False,
        "hge_device_s_median": False,
        "fd_over_hge": True,
        "spsa_over_hge": False,
        "ga_over_hge": None,
        "surrogate_speedup": True,
        "sphere_test_accuracy": True,
    }


def test_configs() -> None:
    quick = make_config(quick=True)
    assert quick.seeds == (0,) and not quick.sphere and "fd" in quick.caps
    full = make_config(quick=False)
    assert len(full.seeds) >= 5 and full.sphere and not full.caps
    assert make_config(quick=True, n_seeds=3).seeds == (0, 1, 2)
    with pytest.raises(ValueError, match="at least 1"):
        make_config(quick=False, n_seeds=0)


def test_plot_writes_a_png(rows: list[dict], tmp_path: Path) -> None:
    config = Config(quick=True, seeds=tuple(range(5)), gates=("AND", "XOR"))
    path = tmp_path / "figs" / "measured.png"
    measured.plot(rows, config, {"AND": 100.0, "XOR": 60.0}, "test device", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_run_on_the_virtual_dnpu() -> None:
    from bluesky import RunEngine

    RE = RunEngine({}, call_returns_result=True)
    row = measured.run_gate(
        RE,
        measured.device_profile(None),
        "AND",
        "hge",
        seed=0,
        options={"max_iterations": 3, "max_attempts": 1, "screen_budget_s": 2.0},
    )
    assert row["method"] == "hge" and row["gate"] == "AND"
    assert row["device_s"] > 0 and row["measurements"] >= 1
    if row["solved"]:  # solved means at the benchmark's margin, not only 100 % accurate
        assert row["accuracy"] == 1.0 and row["margin_na"] >= measured.MARGIN_NA


MEASURED_DNPU = Path(__file__).resolve().parents[2] / "shared" / "devices" / "measured-dnpu-b.pt"


@pytest.mark.skipif(not MEASURED_DNPU.is_file(), reason=f"no surrogate at {MEASURED_DNPU}")
def test_stream_speedup_measured_here(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fallback for when benchmarks.surrogate_speed is not there.
    monkeypatch.setattr(measured, "_optional", lambda module: None)
    speed = measured.stream_speedup(str(MEASURED_DNPU), repeats=2)
    assert speed["source"].startswith("benchmarks.measured")
    assert speed["device_s"] > 0 and speed["wall_s"] > 0
    assert speed["speedup"] == pytest.approx(speed["device_s"] / speed["wall_s"])


def test_ceiling_missing_is_null(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measured, "_optional", lambda module: None)
    ceiling = measured.oracle_ceilings(measured.device_profile(None), ("AND",))
    assert ceiling["margin_na"] is None and "not importable" in ceiling["note"]
