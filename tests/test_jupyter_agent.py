"""A JupyterLab agent's path (jupyter-mcp-server, jupyter-ai): a real Jupyter Server, the
Nexus Sandbox kernel started by its kernelspec name over REST, then driven over the kernel's
websocket as such agents do: execute, streamed output, interrupt (state kept), input()."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import websocket

from .conftest import nexus
from .jupyter_server import JupyterServer

pytestmark = pytest.mark.bwrap


@pytest.fixture
def lab(tmp_path: Path, nexus_home: Path):
    prefix = tmp_path / "prefix"
    out = nexus("kernel", "install", "--prefix", str(prefix))
    assert out.returncode == 0, out.stderr
    root = tmp_path / "root"
    root.mkdir()
    server = JupyterServer(root, tmp_path, {"JUPYTER_PATH": str(prefix / "share" / "jupyter")})
    yield server
    server.stop()


def rest(lab: JupyterServer, method: str, path: str, body: dict | None = None) -> Any:
    request = urllib.request.Request(
        f"{lab.base}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {lab.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        data = response.read()
    return json.loads(data) if data else None


class KernelSocket:
    """The kernel's channels websocket, with Jupyter's message envelope."""

    def __init__(self, lab: JupyterServer, kernel_id: str):
        url = f"ws://127.0.0.1:{lab.port}/api/kernels/{kernel_id}/channels"
        self.ws = websocket.create_connection(
            url, header=[f"Authorization: token {lab.token}"], timeout=60)
        self.session = uuid.uuid4().hex

    def send(self, channel: str, msg_type: str, content: dict, parent: dict | None = None) -> str:
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "session": self.session,
                       "username": "agent", "version": "5.3", "date": ""},
            "parent_header": parent or {}, "metadata": {}, "content": content,
            "channel": channel, "buffers": []}))
        return msg_id

    def execute(self, code: str, *, allow_stdin: bool = False) -> str:
        return self.send("shell", "execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": allow_stdin, "stop_on_error": True})

    def replies(self, msg_id: str, on_input: Any = None) -> tuple[list[tuple[float, dict]], dict]:
        """Every iopub message of the request (with arrival times) and its execute_reply,
        once the kernel is idle again."""
        iopub: list[tuple[float, dict]] = []
        reply: dict | None = None
        idle = False
        while reply is None or not idle:
            msg = json.loads(self.ws.recv())
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["channel"] == "stdin" and msg["msg_type"] == "input_request":
                self.send("stdin", "input_reply", {"value": on_input(msg["content"]["prompt"])},
                          parent=msg["header"])
            elif msg["channel"] == "shell" and msg["msg_type"] == "execute_reply":
                reply = msg["content"]
            elif msg["channel"] == "iopub":
                iopub.append((time.monotonic(), msg))
                idle = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
        return iopub, reply

    def run(self, code: str, **kwargs: Any) -> tuple[str, dict]:
        iopub, reply = self.replies(self.execute(code), **kwargs)
        text = "".join(m["content"]["text"] for _, m in iopub if m["msg_type"] == "stream")
        return text, reply


def test_agent_drives_the_nexus_kernel_over_jupyter_server(lab: JupyterServer) -> None:
    specs = rest(lab, "GET", "/api/kernelspecs")["kernelspecs"]
    assert specs["nexus-sandbox"]["spec"]["display_name"] == "Nexus Sandbox"
    kernel = rest(lab, "POST", "/api/kernels", {"name": "nexus-sandbox"})
    assert kernel["name"] == "nexus-sandbox"
    channel = KernelSocket(lab, kernel["id"])
    try:
        text, reply = channel.run("import os\nx = 6 * 7\nprint('pid', os.getpid())")
        assert reply["status"] == "ok", reply
        assert text.startswith("pid ") and int(text.split()[1]) < 100  # in the sandbox's pidns

        # output streams: each line reaches the client while the cell still runs
        iopub, reply = channel.replies(channel.execute(
            "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n"
            "    time.sleep(0.4)"))
        ticks = [(t, m["content"]["text"]) for t, m in iopub if m["msg_type"] == "stream"]
        assert "".join(text for _, text in ticks) == "tick 0\ntick 1\ntick 2\n"
        assert ticks[-1][0] - ticks[0][0] > 0.6

        # interrupt over REST: the cell ends with KeyboardInterrupt, the variables stay
        msg_id = channel.execute("import time\ntime.sleep(60)\nafter = 1")
        time.sleep(1.5)
        started = time.monotonic()
        rest(lab, "POST", f"/api/kernels/{kernel['id']}/interrupt")
        _, reply = channel.replies(msg_id)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
        assert time.monotonic() - started < 10
        text, reply = channel.run("print(x, 'after' in dir())")
        assert text == "42 False\n"

        # input(): the kernel asks on the stdin channel, the agent answers
        prompts: list[str] = []

        def answer(prompt: str) -> str:
            prompts.append(prompt)
            return "nexus"

        iopub, reply = channel.replies(
            channel.execute("name = input('who? ')\nprint('hello', name)", allow_stdin=True),
            on_input=answer)
        assert prompts == ["who? "]
        assert "hello nexus\n" in "".join(m["content"]["text"] for _, m in iopub
                                          if m["msg_type"] == "stream")
    finally:
        channel.ws.close()
    sandboxes = json.loads(nexus("sandbox", "list", "--json").stdout)["sandboxes"]
    assert [s["status"] for s in sandboxes] == ["active"]
    rest(lab, "DELETE", f"/api/kernels/{kernel['id']}")
    sandboxes = json.loads(nexus("sandbox", "list", "--json").stdout)["sandboxes"]
    assert [s["status"] for s in sandboxes] == ["stopped"]  # the kernel's shutdown stopped it
