"""Everything the host reads from a sandbox is bounded (issue: security round 2, items 4 and
8): every event kind counts against the output cap, file transfers take regular files only
and of a bounded size, and the host client drops an agent that sends more than a run may.
On local and docker."""

from __future__ import annotations

import json
import time

import pytest

from nexus_kernel.agent.client import AgentClient
from nexus_kernel.agent.sandbox_agent.wire import LineBuffer
from nexus_kernel.errors import AgentError, SandboxError

from .conftest import ATTACK_LIMITS

pytestmark = pytest.mark.timeout(180)

CAP = ATTACK_LIMITS["output_bytes"]  # 1 MiB

#: Forged in-band events, the way the session worker sends real ones on stdout.
FLOOD = (
    "import sys, json\n"
    "line = '\\x00nexus-ev:' + json.dumps({ev!r}) + '\\n'\n"
    "for _ in range({count}):\n"
    "    sys.stdout.write(line)\n"
    "sys.stdout.flush()\n"
)


@pytest.mark.parametrize("event", [
    {"ev": "clear_output", "wait": False},
    {"ev": "error", "ename": "E", "evalue": "x" * 1000, "traceback": ["y" * 4000]},
    {"ev": "display", "data": {"text/plain": "z" * 4000}, "metadata": {}},
])
def test_every_event_kind_counts_against_the_output_cap(shared_box, event):
    received = []
    count = 20 * CAP // len(json.dumps(event))  # about 20x the cap
    result = shared_box.run("python", FLOOD.format(ev=event, count=count), timeout=60,
                            session="flood",
                            on_event=lambda e: received.append(len(json.dumps(e.data)) + 20))
    assert result.truncated
    assert sum(received) < 2 * CAP, f"{sum(received)} bytes of events passed a {CAP}-byte cap"


def test_downloading_a_fifo_fails_at_once_instead_of_hanging(env, shared_box):
    shared_box.ok("bash", "rm -f pipe; mkfifo pipe")
    started = time.monotonic()
    with pytest.raises(SandboxError, match="not a regular file"):
        env.manager.get_file(shared_box.id, "pipe")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "/proc/self/fd/0", "."])
def test_downloads_of_devices_and_directories_are_refused(env, shared_box, target):
    shared_box.ok("bash", f"ln -sfn {target} special")
    with pytest.raises(SandboxError, match="not a regular file"):
        env.manager.get_file(shared_box.id, "special")


def test_uploading_over_a_fifo_is_refused_instead_of_hanging(env, shared_box):
    shared_box.ok("bash", "rm -f inbox; mkfifo inbox")
    started = time.monotonic()
    with pytest.raises(SandboxError):
        env.manager.put_file(shared_box.id, "inbox", b"data")
    assert time.monotonic() - started < 5


def test_the_host_client_drops_an_agent_that_floods_it():
    """An impostor on the agent's channel (or a broken agent): an endless line, or more
    bytes for one run than its cap allows, ends the request with one error, in bounded
    memory."""
    import socket
    import threading

    def serve(peer: socket.socket, reply: bytes) -> None:
        peer.recv(65536)
        try:
            while True:
                peer.sendall(reply)
        except OSError:
            pass

    for reply in (b"x" * 65536,  # one endless line
                  b'{"id":"c1","ev":"stdout","data":"' + b"y" * 60000 + b'"}\n'):
        host, agent = socket.socketpair()
        threading.Thread(target=serve, args=(agent, reply), daemon=True).start()
        client = AgentClient(lambda host=host: host, "token")
        with pytest.raises(AgentError):
            client.run("python", "print(1)", timeout=30, output_limit=1 << 20)
        client.close()
        agent.close()


def test_line_buffer_refuses_a_line_past_its_bound():
    lines = LineBuffer(max_line=10)
    assert lines.feed(b"12345\n678") == [b"12345"]
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        lines.feed(b"90123456")
