"""Run accounting on the host side: what an agent reports is kept to known, sane values, an
older agent's result still says why it ended, and the totals and lines shown to users."""

from __future__ import annotations

from nexus_kernel.agent.client import _ended_by, _usage
from nexus_kernel.models import add_usage, run_totals, usage_summary, usage_table

USAGE = {"wall_s": 0.41, "cpu_user_s": 0.3, "cpu_system_s": 0.08,
         "peak_memory_bytes": 23_100_000, "processes": 3, "source": "cgroup"}


def test_an_agents_report_keeps_known_keys_and_sane_numbers_only() -> None:
    assert _usage(USAGE) == USAGE
    hostile = {**USAGE, "wall_s": float("nan"), "processes": True, "cpu_user_s": -1,
               "peak_memory_bytes": "big", "source": "<script>", "extra": "x" * 10**6}
    assert _usage(hostile) == {"wall_s": None, "cpu_user_s": None, "cpu_system_s": 0.08,
                               "peak_memory_bytes": None, "processes": None,
                               "source": "rusage"}
    assert _usage(None) is None and _usage([1]) is None  # an agent that does not measure


def test_an_older_agent_gets_ended_by_from_its_flags() -> None:
    assert _ended_by({"exit_code": 0}) == "exit"
    assert _ended_by({"timed_out": True}) == "timeout"
    assert _ended_by({"interrupted": True, "truncated": True}) == "interrupt"
    assert _ended_by({"truncated": True}) == "output_cap"
    assert _ended_by({"timed_out": True, "oom_killed": True}) == "oom"
    assert _ended_by({"ended_by": "pids_cap", "timed_out": True}) == "pids_cap"
    assert _ended_by({"ended_by": "bogus", "timed_out": True}) == "timeout"


def test_totals_summary_line_and_table() -> None:
    totals = add_usage(add_usage(None, USAGE), None)  # the second run's usage is unknown
    assert totals == {"runs": 2, "cpu_s": 0.38, "max_peak_memory_bytes": 23_100_000}
    assert run_totals({}) == {"runs": 0, "cpu_s": 0.0, "max_peak_memory_bytes": None}
    assert usage_summary("exit", USAGE) == (
        "ended by exit · 0.41 s wall · 0.38 s CPU · peak 23.1 MB · 3 processes")
    assert usage_summary("timeout", None).startswith("ended by timeout · usage not measured")
    table = usage_table([("In [1]", "exit", USAGE), ("In [2]", "oom", None)]).splitlines()
    assert table[1].split() == ["In", "[1]", "exit", "0.41", "0.38", "23.1", "3", "cgroup"]
    assert table[2].split() == ["In", "[2]", "oom", "?", "?", "?", "?", "-"]
