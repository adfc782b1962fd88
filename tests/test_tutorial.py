"""docs/tutorial.md, run top to bottom as written in the IPython profile: every command works.

The commands run in one session of the repository's profile (virtual DNPU, embedded Tiled on a
fresh data directory), through ``benchmarks.tutorial``, which also times them.
"""

from __future__ import annotations

from benchmarks.tutorial import run_tutorial, tutorial_steps


def test_the_tutorial_reads_every_command_and_the_refusal_it_shows():
    steps = tutorial_steps()
    sources = [step.source for step in steps]
    assert len(steps) >= 30
    assert sources[0].startswith("dnpu.describe_configuration()")
    assert any("RE(bp.scan([dnpu], dnpu.e0" in source for source in sources)
    refusals = [step for step in steps if step.error]
    assert [(step.source, step.error) for step in refusals] == [
        ("RE(bps.mv(dnpu.e0, 2.0))", "LimitError")
    ]
    continued = next(step for step in steps if step.source.startswith("RE(evaluate_controls("))
    assert continued.source.count("\n") == 2 and continued.source.endswith("xor_uid}))")


def test_every_tutorial_command_runs_as_written(tmp_path):
    results = run_tutorial(tmp_path, timeout_s=280)
    failed = [
        f"line {r['line']}: {r['source']!r} raised {r['error']}: {r['message']} "
        f"(expected {r['expected_error']})"
        for r in results
        if not r["ok"]
    ]
    assert failed == []
    assert len(results) == len(tutorial_steps())
    refusal = next(r for r in results if r["expected_error"])
    assert refusal["error"] == "LimitError" and "nothing was applied" in refusal["message"]
