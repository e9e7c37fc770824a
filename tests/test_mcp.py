"""`nexus mcp` as a subprocess, driven by the MCP SDK's own client over stdio and HTTP, on
the local provider: tools and their schemas, sessions, three languages, streamed progress,
cancellation that interrupts and keeps state, files, tool errors, images, client scopes and
the disconnect that stops a client's sandboxes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from .conftest import ROOT, nexus

pytestmark = pytest.mark.bwrap


def stdio_client(mode: str = "legacy", *options: str) -> Client:
    """The SDK's client launching `nexus mcp`; "legacy" is the initialize handshake (the
    2025 protocol most clients speak), "auto" the SDK's default (the 2026 protocol)."""
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "nexus_kernel.cli", "mcp", *options],
                                   env=dict(os.environ), cwd=str(ROOT))
    return Client(params, mode=mode)


def status_of(sandbox_id: str) -> str:
    from nexus_kernel import NexusFS

    nx = NexusFS()
    try:
        return nx.sandbox_status(sandbox_id)["status"]
    finally:
        nx.close()


async def run(client: Client, sandbox_id: str, code: str, **more):
    return await client.call_tool("sandbox_run", {"sandbox_id": sandbox_id, "code": code, **more})


def test_stdio_session(nexus_home: Path) -> None:
    """One client over stdio: everything a model does in a session, then its disconnect."""

    async def main() -> tuple[str, str]:
        async with stdio_client() as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert {"sandbox_create", "sandbox_run", "sandbox_write_file", "sandbox_read_file",
                    "sandbox_list_files", "sandbox_pause", "sandbox_resume", "sandbox_stop",
                    "sandbox_list", "sandbox_status"} <= set(tools)
            schema = tools["sandbox_run"].input_schema
            assert schema["required"] == ["sandbox_id", "code"]
            assert schema["properties"]["language"]["enum"] == ["python", "javascript", "bash"]
            assert tools["sandbox_run"].description.startswith("Run code in a sandbox")

            created = await client.call_tool("sandbox_create", {"name": "agent", "ttl_minutes": 5})
            sid = created.structured_content["sandbox_id"]
            assert created.structured_content["ttl_minutes"] == 5
            kept = await client.call_tool("sandbox_create", {"name": "kept", "keep": True})
            kept_id = kept.structured_content["sandbox_id"]

            # three languages; a python session keeps its variables between calls
            assert not (await run(client, sid, "x = 41")).is_error
            out = await run(client, sid, "print(x + 1)")
            assert out.structured_content["stdout"] == "42\n", out.content
            assert "stdout:\n42" in out.content[0].text
            assert out.structured_content["ended_by"] == "exit"
            assert out.structured_content["usage"]["wall_s"] > 0
            assert "usage: ended by exit · " in out.content[0].text
            out = await run(client, sid, "console.log([1, 2].map(n => n * 2).join(','))",
                            language="javascript")
            assert out.structured_content["stdout"] == "2,4\n"
            out = await run(client, sid, "cd /tmp && X=7; echo $((X * 6)) $PWD", language="bash")
            assert out.structured_content["stdout"] == "42 /tmp\n"
            out = await run(client, sid, "echo $X $PWD", language="bash")
            assert out.structured_content["stdout"] == "7 /tmp\n"  # the bash session too

            # an error: a tool error carrying the traceback, the exit code, no ANSI colours
            out = await run(client, sid, "def f():\n    return 1 / 0\nf()")
            assert out.is_error and out.structured_content["exit_code"] != 0
            assert out.structured_content["error"]["ename"] == "ZeroDivisionError"
            assert "return 1 / 0" in out.structured_content["error"]["traceback"]
            assert "\x1b[" not in out.content[0].text

            # streamed output as progress notifications, before the run ends
            seen: list[tuple[float, str, float]] = []

            async def progress(value: float, total: float | None, message: str | None) -> None:
                seen.append((value, message or "", time.monotonic()))

            code = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n" \
                   "    time.sleep(0.4)"
            out = await client.call_tool("sandbox_run", {"sandbox_id": sid, "code": code},
                                         progress_callback=progress)
            ended = time.monotonic()
            assert "".join(m for _, m, _ in seen) == "tick 0\ntick 1\ntick 2\n", seen
            assert [v for v, _, _ in seen] == sorted(v for v, _, _ in seen)  # increasing
            # the first line came while the run went on (chunks may split a line)
            first = next(t for i, (_, _, t) in enumerate(seen)
                         if "tick 0\n" in "".join(m for _, m, _ in seen[:i + 1]))
            assert ended - first > 0.6

            # the client cancels a long run: it is interrupted, the session keeps its state
            started = time.monotonic()
            with anyio.move_on_after(1.5):
                await run(client, sid, "import time\ntime.sleep(60)\nafter = 1")
            out = await run(client, sid, "print(x, 'after' in dir())", timeout=10)
            assert out.structured_content["stdout"] == "41 False\n", out.content
            assert time.monotonic() - started < 8  # the sleep was interrupted, not waited out

            # bad arguments are tool errors with one message; the server carries on
            bad = await run(client, sid, "1", timeout=-1, language="ruby")
            assert bad.is_error
            assert bad.content[0].text == (
                "Error executing tool sandbox_run: invalid arguments: language: Input should be "
                "'python', 'javascript' or 'bash'; timeout: Input should be greater than 0")
            bad = await run(client, "sb_0000000000000000", "1")
            assert bad.is_error
            assert bad.content[0].text.endswith(": no sandbox 'sb_0000000000000000' for this "
                                                "MCP client; sandbox_list shows yours")
            bad = await client.call_tool("sandbox_create", {"name": "x", "template": "no-such"})
            assert bad.is_error and "no-such" in bad.content[0].text
            assert "\n" not in bad.content[0].text.strip()

            # files round trip (text and binary) and a listing
            wrote = await client.call_tool("sandbox_write_file", {
                "sandbox_id": sid, "path": "data/notes.txt", "content": "héllo\n"})
            assert wrote.structured_content["size"] == len("héllo\n".encode())
            await client.call_tool("sandbox_write_file", {
                "sandbox_id": sid, "path": "data/raw.bin", "content": "AAEC/w==",
                "encoding": "base64"})
            out = await run(client, sid, "print(open('data/notes.txt').read().upper(), end='')")
            assert out.structured_content["stdout"] == "HÉLLO\n"
            listing = await client.call_tool("sandbox_list_files",
                                             {"sandbox_id": sid, "path": "data"})
            assert "notes.txt" in listing.content[0].text and "raw.bin" in listing.content[0].text
            read = await client.call_tool("sandbox_read_file",
                                          {"sandbox_id": sid, "path": "data/raw.bin",
                                           "encoding": "base64"})
            assert read.structured_content["content"] == "AAEC/w=="
            read = await client.call_tool("sandbox_read_file",
                                          {"sandbox_id": sid, "path": "data/raw.bin"})
            assert read.is_error and "encoding base64" in read.content[0].text

            # lifecycle
            paused = await client.call_tool("sandbox_pause", {"sandbox_id": sid})
            assert paused.structured_content["status"] == "paused"
            assert (await run(client, sid, "1")).is_error  # paused: resume first
            resumed = await client.call_tool("sandbox_resume", {"sandbox_id": sid})
            assert resumed.structured_content["status"] == "active"
            assert (await run(client, sid, "print(x)")).structured_content["stdout"] == "41\n"
            listed = await client.call_tool("sandbox_list", {})
            assert {s["sandbox_id"] for s in listed.structured_content["sandboxes"]} == \
                {sid, kept_id}
            assert status_of(sid) == "active"
        return sid, kept_id

    sid, kept_id = anyio.run(main)
    # the client went away: its sandbox is stopped, the one it asked to keep is not
    assert status_of(sid) == "stopped"
    assert status_of(kept_id) == "active"

    async def admin() -> None:  # an --admin server's client sees and uses every sandbox
        async with stdio_client("legacy", "--admin") as client:
            listed = await client.call_tool("sandbox_list", {})
            assert {s["sandbox_id"] for s in listed.structured_content["sandboxes"]} == \
                {sid, kept_id}
            out = await run(client, kept_id, "print('kept')")
            assert out.structured_content["stdout"] == "kept\n"
            await client.call_tool("sandbox_stop", {"sandbox_id": kept_id})

    anyio.run(admin)
    assert status_of(kept_id) == "stopped"


def test_stdio_sdk_default_protocol(nexus_home: Path) -> None:
    """The SDK's default negotiation picks the 2026 protocol (no connection state): runs
    stream and the server process is the client's scope, ended with it."""
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    async def main() -> str:
        async with stdio_client("auto") as client:
            assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
            sid = (await client.call_tool("sandbox_create", {"name": "modern"})
                   ).structured_content["sandbox_id"]
            seen: list[str] = []

            async def progress(value: float, total: float | None, message: str | None) -> None:
                seen.append(message or "")

            out = await client.call_tool("sandbox_run", {
                "sandbox_id": sid, "code": "print('a', flush=True)\nprint('b')"},
                progress_callback=progress)
            assert out.structured_content["stdout"] == "a\nb\n"
            assert "".join(seen) == "a\nb\n"
            listed = await client.call_tool("sandbox_list", {})
            assert [s["sandbox_id"] for s in listed.structured_content["sandboxes"]] == [sid]
            assert status_of(sid) == "active"
        return sid

    assert status_of(anyio.run(main)) == "stopped"


def test_stdio_server_terminated_stops_its_sandboxes(nexus_home: Path) -> None:
    """Clients end a stdio server by closing stdin, then SIGTERM after a grace period (a user
    by Ctrl-C: the same handler): the server stops its clients' sandboxes and exits at once."""
    signum = signal.SIGTERM
    server = subprocess.Popen([sys.executable, "-m", "nexus_kernel.cli", "mcp"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)

    def call(request: dict) -> dict | None:
        server.stdin.write(json.dumps({"jsonrpc": "2.0", **request}) + "\n")
        server.stdin.flush()
        return json.loads(server.stdout.readline()) if "id" in request else None

    call({"id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}})
    call({"method": "notifications/initialized"})
    created = call({"id": 2, "method": "tools/call", "params": {
        "name": "sandbox_create", "arguments": {"name": "signalled"}}})
    sid = created["result"]["structuredContent"]["sandbox_id"]
    server.send_signal(signum)
    assert server.wait(timeout=15) == 128 + signum
    assert status_of(sid) == "stopped"


def test_image_content(nexus_home: Path, matplotlib_template: str | None) -> None:
    """A matplotlib figure comes back as MCP image content (a PNG), HTML as text."""

    async def main() -> None:
        async with stdio_client() as client:
            args = {"name": "plots"} if matplotlib_template is None else \
                {"name": "plots", "template": matplotlib_template}
            sid = (await client.call_tool("sandbox_create", args)).structured_content["sandbox_id"]
            out = await run(client, sid, "import matplotlib.pyplot as plt\n"
                                         "plt.plot([1, 3, 2]); plt.show()\n"
                                         "class Page:\n"
                                         "    def _repr_html_(self):\n"
                                         "        return '<b>bold</b><script>alert(1)</script>'\n"
                                         "Page()")
            assert not out.is_error, out.content
            images = [c for c in out.content if c.type == "image"]
            assert len(images) == 1 and images[0].mime_type == "image/png"
            import base64

            assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")
            text = out.content[0].text
            assert "<b>bold</b>" in text and "<script>" not in text  # the untrusted filter ran
            assert "images: 1 attached" in text

    anyio.run(main)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_token_and_client_scopes(nexus_home: Path) -> None:
    """Over HTTP: no token, no service; each client sees only its own sandboxes; a client
    that disconnects has its sandboxes stopped, while the server keeps serving others."""
    port, token = free_port(), "test-token-0123456789"
    server = subprocess.Popen(
        [sys.executable, "-m", "nexus_kernel.cli", "mcp", "--transport", "http", "--port",
         str(port), "--token", token], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        line = server.stderr.readline()
        assert url in line, line
        assert httpx2.post(url, json={}).status_code == 401
        rebound = httpx2.post(url, json={}, headers={"Authorization": f"Bearer {token}",
                                                     "Host": f"evil.example:{port}"})
        assert rebound.status_code == 421  # the SDK's DNS-rebinding guard for a loopback bind
        busy = nexus("mcp", "--transport", "http", "--port", str(port))
        assert busy.returncode == 1 and busy.stderr == (
            f"nexus: cannot listen on 127.0.0.1:{port} (Address already in use); choose "
            "another port with --port\n")
        assert httpx2.post(url, json={}, headers={"Authorization": "Bearer wrong"}).status_code \
            == 401

        def http_client() -> Client:
            auth = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                      timeout=httpx2.Timeout(30, read=60))
            return Client(streamable_http_client(url, http_client=auth), mode="legacy")

        async def main() -> str:
            async with http_client() as b:
                async with http_client() as a:
                    sid = (await a.call_tool("sandbox_create", {"name": "a"})
                           ).structured_content["sandbox_id"]
                    out = await run(a, sid, "print('from a')")
                    assert out.structured_content["stdout"] == "from a\n"
                    listed = await b.call_tool("sandbox_list", {})
                    assert listed.structured_content["sandboxes"] == []
                    other = await run(b, sid, "print('from b')")
                    assert other.is_error and "for this MCP client" in other.content[0].text
                    stolen = await b.call_tool("sandbox_stop", {"sandbox_id": sid})
                    assert stolen.is_error
                    bid = (await b.call_tool("sandbox_create", {"name": "b"})
                           ).structured_content["sandbox_id"]
                # a left (its session was DELETEd): its sandbox is stopped, b's is not
                for _ in range(50):
                    if status_of(sid) == "stopped":
                        break
                    await anyio.sleep(0.1)
                assert status_of(sid) == "stopped"
                assert status_of(bid) == "active"
                out = await run(b, bid, "print('still serving')")
                assert out.structured_content["stdout"] == "still serving\n"
                # over HTTP too: output streams, a cancelled call interrupts the run
                seen: list[str] = []

                async def progress(value: float, total: float | None, message: str | None):
                    seen.append(message or "")

                await b.call_tool("sandbox_run", {"sandbox_id": bid, "code": "import time\n"
                                  "for i in range(2):\n    print(i, flush=True); time.sleep(0.3)"},
                                  progress_callback=progress)
                assert "".join(seen) == "0\n1\n"
                await run(b, bid, "x = 5")
                started = time.monotonic()
                with anyio.move_on_after(1.5):
                    await run(b, bid, "import time\ntime.sleep(60)\nafter = 1")
                out = await run(b, bid, "print(x, 'after' in dir())", timeout=10)
                assert out.structured_content["stdout"] == "5 False\n"
                assert time.monotonic() - started < 8
                return bid

        bid = anyio.run(main)
        for _ in range(50):
            if status_of(bid) == "stopped":
                break
            time.sleep(0.1)
        assert status_of(bid) == "stopped"
    finally:
        server.terminate()
        server.wait(timeout=15)
