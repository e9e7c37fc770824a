"""llm_output: how a run is described for a model (bounds, images, errors), on results built
by hand (the sandbox side is covered by tests/test_mcp.py and tests/test_integrations.py)."""

from __future__ import annotations

from nexus_kernel import llm_output
from nexus_kernel.models import ExecResult


def result(**fields) -> ExecResult:
    return ExecResult(**{"stdout": "", "stderr": "", "exit_code": 0, "execution_time": 0.5,
                         **fields})


def test_long_output_keeps_head_and_tail_and_says_what_was_cut() -> None:
    lines = "".join(f"line {i}\n" for i in range(10_000))
    out = llm_output.describe(result(stdout=lines))
    stdout = out.fields["stdout"]
    assert len(stdout) < llm_output.TEXT_LIMIT + 100
    assert stdout.startswith("line 0\n") and stdout.endswith("line 9999\n")
    cut = len(lines) - llm_output.TEXT_LIMIT
    assert f"[... {cut} characters cut ...]" in stdout
    assert not out.is_error


def test_images_apart_and_bounded_text_outputs_readable() -> None:
    png = {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480 with 1 Axes>"}
    page = {"text/html": "<b>table</b>", "text/plain": "<__main__.Page object at 0x7f00aa>"}
    frame = {"text/html": "<table/>", "text/plain": "   a\n0  1"}
    out = llm_output.describe(result(display=(png,) * 12 + (page,), result=frame))
    assert len(out.images) == llm_output.IMAGE_LIMIT
    assert out.images[0].mime == "image/png" and out.images[0].data == "iVBORw0KGgo="
    assert out.fields["outputs"] == ["<b>table</b>", "   a\n0  1"]  # a bare repr gives way
    assert f"images: {llm_output.IMAGE_LIMIT} attached" in out.text


def test_an_error_reads_as_its_traceback_without_colours() -> None:
    error = {"ename": "ZeroDivisionError", "evalue": "division by zero",
             "traceback": ["\x1b[0;31mTraceback\x1b[0m (most recent call last):",
                           '  File "<cell-1>", line 1', "ZeroDivisionError: division by zero"]}
    out = llm_output.describe(result(exit_code=1, error=error, stdout="partial\n",
                                     interrupted=False, session_restarted=True))
    assert out.is_error
    assert out.fields["error"]["traceback"].startswith("Traceback (most recent call last):")
    assert out.text.splitlines()[:3] == ["exit_code: 1  execution_time: 0.500 s", "stdout:",
                                         "partial"]
    assert "note: the session was restarted: its variables are gone" in out.text


def test_a_timeout_is_an_outcome_with_the_partial_output() -> None:
    out = llm_output.describe(result(stdout="started\n", exit_code=-9, timed_out=True),
                              note="Code execution exceeded 2 second timeout")
    assert out.is_error and out.fields["stdout"] == "started\n"
    assert out.fields["notes"] == ["Code execution exceeded 2 second timeout"]


def test_network_denials_are_named_to_the_model_and_bounded() -> None:
    denials = tuple({"time": 1.0, "host": f"h{i}.test", "port": 443, "reason": "host not in "
                     "the allow-list", "run": "sb_1:r1"} for i in range(10))
    out = llm_output.describe(result(network_denials=denials))
    assert out.fields["notes"][0] == ("network denied h0.test:443: host not in the allow-list "
                                      "(the sandbox's network allow-list)")
    assert out.fields["notes"][-1] == "2 more network denials"
    assert "note: network denied h7.test:443" in out.text
