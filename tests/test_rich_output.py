"""Rich output from python sessions: MIME bundles, display(), matplotlib figures, and the
agent's complete / inspect / input paths, through the API on real local sandboxes."""

from __future__ import annotations

import base64
import json

import pytest

from nexus_kernel import LocalBackend, NexusFS

from .conftest import needs_bwrap, nexus

pytestmark = needs_bwrap


@pytest.fixture(autouse=True)
def _trusted_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the agent's bundles as it makes them; what an untrusted caller
    gets is tested in tests/security/test_output_safety.py."""
    monkeypatch.setenv("NEXUS_TRUSTED_OUTPUT", "1")

RICH_CLASSES = '''
class Rich:
    def _repr_html_(self): return "<b>rich</b>"
    def _repr_markdown_(self): return "**rich**"
    def _repr_svg_(self): return ("<svg/>", {"isolated": True})
    def _repr_png_(self): return b"\\x89PNG-bytes"
    def _repr_json_(self): return {"answer": 42}
    def _repr_latex_(self): return r"$x^2$"
    def __repr__(self): return "Rich()"

class Bundle:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": "<i>from bundle</i>", "text/csv": "a,b"}, {"text/csv": {"sep": ","}}
    def _repr_html_(self): return "<i>from method</i>"
    def _repr_markdown_(self): return "md"
'''


def run(nx, sandbox, code, **kw):
    events = []
    result = nx.sandbox_run(sandbox, "python", code, session="s", on_event=events.append, **kw)
    return result, events


def test_last_expression_carries_every_repr(nx, sandbox):
    result, events = run(nx, sandbox, RICH_CLASSES + "Rich()")
    assert result["result"] == {
        "text/html": "<b>rich</b>",
        "text/markdown": "**rich**",
        "image/svg+xml": "<svg/>",
        "image/png": base64.b64encode(b"\x89PNG-bytes").decode(),
        "application/json": {"answer": 42},
        "text/latex": "$x^2$",
        "text/plain": "Rich()",
    }
    [event] = [e for e in events if e.kind == "result"]
    assert event.data["metadata"] == {"image/svg+xml": {"isolated": True}}
    assert result["display"] == [] and result["stdout"] == ""


def test_mimebundle_comes_first_and_methods_fill_in(nx, sandbox):
    result, events = run(nx, sandbox, RICH_CLASSES + "Bundle()")
    bundle = result["result"]
    assert bundle["text/html"] == "<i>from bundle</i>"  # _repr_mimebundle_ wins
    assert bundle["text/csv"] == "a,b" and bundle["text/markdown"] == "md"
    assert bundle["text/plain"].startswith("<__main__.Bundle object")
    [event] = [e for e in events if e.kind == "result"]
    assert event.data["metadata"] == {"text/csv": {"sep": ","}}


def test_classes_and_plain_values_are_text_only(nx, sandbox):
    assert run(nx, sandbox, RICH_CLASSES + "Rich")[0]["result"] == {
        "text/plain": "<class '__main__.Rich'>"}
    assert run(nx, sandbox, "{'a': [1, 2]}")[0]["result"] == {"text/plain": "{'a': [1, 2]}"}


def test_display_is_a_builtin_and_keeps_order_with_prints(nx, sandbox):
    code = RICH_CLASSES + (
        "print('before')\n"
        "display(Rich(), 'plain', include=['text/html', 'text/plain'])\n"
        "print('after')\n"
        "display({'text/plain': 'raw one', 'text/html': '<p>raw</p>'}, raw=True)\n"
        "display('first', display_id='d1')\n"
        "display('second', display_id='d1', update=True)\n"
        "clear_output(wait=True)\n"
    )
    result, events = run(nx, sandbox, code)
    assert result["display"][:3] == [
        {"text/html": "<b>rich</b>", "text/plain": "Rich()"},
        {"text/plain": "'plain'"},
        {"text/plain": "raw one", "text/html": "<p>raw</p>"},
    ]
    kinds = []  # adjacent stdout chunks joined (print writes text and newline apart)
    for e in events:
        if e.kind == "stdout" and kinds and kinds[-1][0] == "stdout":
            kinds[-1] = ("stdout", kinds[-1][1] + e.data)
        else:
            kinds.append((e.kind, e.data if e.kind == "stdout" else None))
    assert kinds[:5] == [("stdout", "before\n"), ("display", None), ("display", None),
                         ("stdout", "after\n"), ("display", None)]
    first, second = [e.data for e in events if e.kind == "display"][3:5]
    assert first["transient"] == {"display_id": "d1"} and "update" not in first
    assert second["transient"] == {"display_id": "d1"} and second["update"] is True
    assert [e.data for e in events if e.kind == "clear_output"] == [{"wait": True}]
    assert result["result"] is None  # clear_output() returns None


def test_broken_reprs_are_skipped_with_a_warning(nx, sandbox):
    code = (
        "class Bad:\n"
        "    def _repr_html_(self): raise ValueError('no html')\n"
        "    def _repr_json_(self): return {'x': object()}\n"
        "    def __repr__(self): return 'Bad()'\n"
        "Bad()"
    )
    result, _ = run(nx, sandbox, code)
    assert result["result"] == {"text/plain": "Bad()"}
    assert "Bad._repr_html_ failed: ValueError: no html" in result["stderr"]
    assert "Bad.application/json output failed" in result["stderr"]
    failing = run(nx, sandbox, "class R:\n    def __repr__(self): raise KeyError('r')\nR()")[0]
    assert failing["error"]["ename"] == "KeyError" and failing["exit_code"] == 1


def test_stateless_runs_stay_text_only(nx, sandbox):
    result = nx.sandbox_run(sandbox, "python", "print(1)\n2")
    assert result["stdout"] == "1\n" and result["result"] is None and result["display"] == []


def test_display_output_counts_against_the_output_cap(nexus_home):
    api = NexusFS(backend=LocalBackend(nexus_home / "files"), output_bytes=20_000)
    sandbox = api.sandbox_create("capped")["sandbox_id"]
    try:
        code = "for i in range(100):\n    display({'text/plain': 'x' * 1000}, raw=True)"
        result = api.sandbox_run(sandbox, "python", code, session="s")
        assert result["truncated"] is True
        assert 5 <= len(result["display"]) < 20
    finally:
        api.sandbox_stop(sandbox)
        api.close()


def test_cli_json_has_display_and_result(nx, sandbox):
    code = "display({'text/html': '<b>x</b>', 'text/plain': 'x'}, raw=True)\n6 * 7"
    out = nexus("sandbox", "run", sandbox, "--session", "s", "--json", "-c", code)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["display"] == [{"text/html": "<b>x</b>", "text/plain": "x"}]
    assert data["result"] == {"text/plain": "42"}
    human = nexus("sandbox", "run", sandbox, "--session", "s", "-c", code)
    assert human.stdout == "x\n42\n"


def test_errors_can_stay_off_stderr(nx, sandbox):
    events = []
    result = nx.manager.run(sandbox, "python", "print('out')\n1/0", session="s",
                            on_event=events.append, stderr_traceback=False)
    assert result.stderr == "" and result.stdout == "out\n"
    assert result.error["ename"] == "ZeroDivisionError"
    assert any("1/0" in line for line in result.error["traceback"])
    js = nx.manager.run(sandbox, "javascript", "null.x", session="s", stderr_traceback=False)
    assert js.stderr == "" and js.error["ename"] == "TypeError"


def test_complete_and_inspect_use_the_session_namespace(nx, sandbox):
    run(nx, sandbox, "import os\nmy_counter = 5\ndef helper(a, b=2):\n    'Adds things.'\n    return a")
    manager = nx.manager
    found = manager.complete(sandbox, "s", "x = my_co")
    assert found["matches"] == ["my_counter"] and found["cursor_start"] == 4
    assert found["cursor_end"] == 9 and found["busy"] is False
    assert "os.path" in manager.complete(sandbox, "s", "os.pa")["matches"]
    assert manager.complete(sandbox, "s", "zi")["matches"] == ["zip"]
    assert manager.complete(sandbox, "s", "f().a")["matches"] == []  # nothing is called
    info = manager.inspect(sandbox, "s", "helper(", 7)
    assert info["found"] is True
    text = info["data"]["text/plain"]
    assert "Signature: helper(a, b=2)" in text and "Adds things." in text
    assert manager.inspect(sandbox, "s", "nope", 2)["found"] is False


def test_input_is_answered_through_the_client(nx, sandbox):
    manager = nx.manager
    prompts = []

    def on_event(event):
        if event.kind == "input_request":
            prompts.append(event.data)
            manager.input_reply(sandbox, "s", None if len(prompts) == 3 else f"v{len(prompts)}")

    code = ("a = input('first? ')\nimport getpass\nb = getpass.getpass('secret? ')\n"
            "try:\n    input()\nexcept EOFError:\n    print('eof')\nprint(a, b)")
    result = manager.run(sandbox, "python", code, session="s", on_event=on_event, stdin=True)
    assert prompts == [{"prompt": "first? ", "password": False},
                       {"prompt": "secret? ", "password": True},
                       {"prompt": "", "password": False}]
    assert result.stdout == "eof\nv1 v2\n" and result.exit_code == 0
    without = manager.run(sandbox, "python", "input()", session="s")
    assert without.error["ename"] == "EOFError"  # no stdin: input() reads /dev/null


@pytest.mark.slow
def test_matplotlib_figures_arrive_as_png_and_are_closed(nexus_home, matplotlib_template):
    api = NexusFS(backend=LocalBackend(nexus_home / "files"))
    sandbox = api.sandbox_create("plots", template_id=matplotlib_template)["sandbox_id"]
    try:
        code = ("import matplotlib.pyplot as plt\n"
                "plt.plot([1, 3, 2])\nplt.figure()\nplt.bar([1, 2], [3, 4])\nplt.show()\n"
                "import matplotlib\nprint(matplotlib.get_backend())")
        result = api.sandbox_run(sandbox, "python", code, session="s", timeout=120)
        assert result["exit_code"] == 0, result["stderr"]
        assert result["stdout"].strip().lower() == "agg" and result["stderr"] == ""
        assert len(result["display"]) == 2
        for bundle in result["display"]:
            assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
            assert bundle["text/plain"].startswith("<Figure size")
        again = api.sandbox_run(sandbox, "python", "len(plt.get_fignums())", session="s")
        assert again["display"] == [] and again["result"] == {"text/plain": "0"}
    finally:
        api.sandbox_stop(sandbox)
        api.close()
