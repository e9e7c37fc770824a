"""An in-memory provider for tests: the provider contract without a jail, a container or a
cloud, so manager, reaper, pool and kernel logic runs in milliseconds.

Test-only: it is never registered for users; tests register it for their own duration with
:func:`registered` (``Settings(provider="memory")`` then selects it).

A sandbox is a :class:`MemorySandbox` in this process (create, pause, resume, destroy, alive,
list_resources and extend only change it), so a create and a stop start no process. Its
channel answers the ``auth`` handshake as the agent would (it holds the token) and the
agent's control requests itself (``deadline``, recorded as the watchdog deadline;
``interrupt`` and ``sessions``, which have nothing to act on yet) as long as no code has
run. The first request it cannot answer (a run, a file, a malformed request ...) starts the
REAL agent lazily, as a host subprocess in a private directory
(:class:`~tests.fakes._vm.FakeVM`, as the e2b and modal fakes do), with the recorded
deadline; the channel authenticates to it, and from then on forwards bytes both ways.

Not a jail: the agent and the code it runs are plain host processes, with the host's network
and no resource caps; pause is SIGSTOP/SIGCONT. Sandboxes live in this process only (another
process cannot reach them). Its watchdog is the real agent's once it runs; before that it is
kept here, on the provider's ``clock`` option (default ``time.time``). ``extend`` records the
provider timeout it is given (:attr:`MemorySandbox.extended`) without enforcing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nexus_kernel.agent.deploy import PACKAGE_DIR
from nexus_kernel.agent.sandbox_agent.wire import proof
from nexus_kernel.config import Settings
from nexus_kernel.models import SandboxSpec
from nexus_kernel.providers import register_provider, unregister_provider
from nexus_kernel.providers._launch import agent_command, serve_args, wait_for_ready
from nexus_kernel.providers.base import Capabilities, Handle, Provider

from ._vm import FakeVM

NAME = "memory"
#: Where the agent keeps its socket, inside its FakeVM.
RUN_DIR = "/run/nexus"
READY_TIMEOUT = 30.0

_LOCK = threading.Lock()
_SANDBOXES: dict[str, MemorySandbox] = {}  # by handle["memory_id"]


@dataclass(eq=False)
class MemorySandbox:
    """One in-memory sandbox: what tests may assert on, and the agent once it is started."""

    memory_id: str
    sandbox_id: str
    store_id: str
    owner: str
    token: str
    #: The agent's watchdog deadline (epoch s; None = off): the spec's, then every
    #: ``deadline`` request answered here. Once the agent runs, the agent keeps it.
    deadline: float | None
    #: Every deadline ``Provider.extend`` was given, in order.
    extended: list[float] = field(default_factory=list)
    paused: bool = False
    ended: bool = False
    vm: FakeVM | None = None
    agent: Any = None  # the agent's subprocess.Popen, once code has run
    lock: threading.RLock = field(default_factory=threading.RLock)
    channels: set[MemoryChannel] = field(default_factory=set)

    @property
    def handle(self) -> Handle:
        return {"memory_id": self.memory_id, "sandbox_id": self.sandbox_id, "token": self.token}

    @property
    def started(self) -> bool:
        """Whether the real agent was started (some request needed it)."""
        return self.agent is not None

    def running(self, now: float) -> bool:
        """Not ended, its agent (started or not) not past its watchdog deadline."""
        with self.lock:
            if self.ended:
                return False
            if self.agent is not None:
                return self.agent.poll() is None
            return self.paused or self.deadline is None or now < self.deadline

    def answer(self, line: bytes) -> bytes | None:
        """The reply to one request line when it can be given without the agent, else None
        (then the caller starts the agent and forwards the line)."""
        try:
            msg = json.loads(line)
        except ValueError:
            return None
        if not isinstance(msg, dict):
            return None  # the agent says what is wrong, in its own words
        op = msg.get("op")
        with self.lock:
            if self.agent is not None or self.ended:
                return None
            if op == "deadline" and _epoch_or_none(msg.get("at")):
                self.deadline = msg["at"]
                done: dict[str, Any] = {}
            elif op == "interrupt" and (msg.get("session") is None or isinstance(msg["session"], str)):
                done = {"interrupted": 0}
            elif op == "sessions":
                done = {"sessions": []}
            else:
                return None
        reply = {"id": msg.get("id"), "ev": "done", **done}
        return json.dumps(reply, separators=(",", ":")).encode() + b"\n"

    def agent_socket(self) -> str:
        """The path of the agent's socket, starting the agent first if needed."""
        with self.lock:
            if self.ended:
                raise ConnectionRefusedError(f"memory sandbox {self.sandbox_id} has ended")
            if self.vm is None:
                self._start_agent()
            assert self.vm is not None
            return str(self.vm.host_path(f"{RUN_DIR}/agent.sock"))

    def _start_agent(self) -> None:
        vm = FakeVM("nexus-mem-")
        run_dir = vm.host_path(RUN_DIR)
        run_dir.mkdir(mode=0o700, parents=True)
        argv = agent_command(sys.executable, str(PACKAGE_DIR.parent),
                             *serve_args("/home/user", self.deadline, socket=f"{RUN_DIR}/agent.sock"))
        agent = vm.spawn(argv, stdin=True)
        try:
            agent.stdin.write(self.token.encode() + b"\n")
            agent.stdin.close()
            wait_for_ready(iter(lambda: os.read(agent.stdout.fileno(), 4096), b""), READY_TIMEOUT,
                           stop=agent.kill, detail=lambda: agent.stderr.read(4096).decode())
        except BaseException:
            vm.kill()
            raise
        for stream in (agent.stdout, agent.stderr):  # never let the agent block on a full pipe
            threading.Thread(target=_drain, args=(stream,), daemon=True).start()
        if self.paused:
            vm.pause()
        self.vm, self.agent = vm, agent

    def end(self) -> None:
        """Kill the agent (if any), hang up every channel, delete the directory. Idempotent."""
        with self.lock:
            self.ended = True
            channels, self.channels = list(self.channels), set()
            vm = self.vm
        for channel in channels:
            channel.hang_up()
        if vm is not None:
            vm.kill()


class MemoryChannel:
    """A channel to a memory sandbox: answers what :meth:`MemorySandbox.answer` can, then
    becomes a unix socket to the real agent (replies already queued are read first)."""

    def __init__(self, sandbox: MemorySandbox):
        self._sandbox = sandbox
        self._cond = threading.Condition()
        self._unsent = b""  # a request line not complete yet
        self._replies = b""
        self._sock: socket.socket | None = None
        self._closed = False
        self._nonces: tuple[str, str] | None = None  # of the auth handshake answered here
        self._authenticated = False

    def sendall(self, data: bytes) -> None:
        with self._cond:
            if self._closed:
                raise BrokenPipeError("the memory sandbox channel is closed")
            sock = self._sock
            if sock is None:
                self._unsent += data
                while sock is None and b"\n" in self._unsent:
                    line, _, rest = self._unsent.partition(b"\n")
                    reply = self._auth(line)
                    if reply is None and self._authenticated:
                        reply = self._sandbox.answer(line)
                    if reply is None:
                        sock = self._sock = self._open()
                        data = self._unsent  # this line and whatever follows it
                    else:
                        self._unsent = rest
                        self._replies += reply
                    self._cond.notify_all()
                if sock is None:
                    return
                self._unsent = b""
        sock.sendall(data)

    def _auth(self, line: bytes) -> bytes | None:
        """The agent's side of the ``auth`` handshake, answered here; None for other lines."""
        try:
            msg = json.loads(line)
        except ValueError:
            return None
        if not isinstance(msg, dict) or msg.get("op") != "auth" or self._authenticated:
            return None
        token = self._sandbox.token
        if self._nonces is None and isinstance(msg.get("nonce"), str):
            self._nonces = (msg["nonce"], secrets.token_hex(16))
            reply = {"nonce": self._nonces[1], "proof": proof(token, "agent", *self._nonces)}
        elif self._nonces is not None and msg.get("proof") == proof(token, "host", *self._nonces):
            self._authenticated = True
            reply = {}
        else:
            return None  # the agent refuses it, in its own words
        return json.dumps({"id": msg.get("id"), "ev": "done", **reply}).encode() + b"\n"

    def _open(self) -> socket.socket:
        """A socket to the real agent, authenticated when this channel is."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self._sandbox.agent_socket())
            if self._authenticated:
                token, mine = self._sandbox.token, secrets.token_hex(16)
                sock.sendall(json.dumps({"id": "fake", "op": "auth", "nonce": mine}).encode() + b"\n")
                answer = json.loads(sock.makefile("rb").readline())
                assert answer["proof"] == proof(token, "agent", mine, answer["nonce"]), answer
                sock.sendall(json.dumps({"id": "fake", "op": "auth",
                                         "proof": proof(token, "host", mine, answer["nonce"])}
                                        ).encode() + b"\n")
        except BaseException:
            sock.close()
            raise
        return sock

    def recv(self, size: int) -> bytes:
        with self._cond:
            while not self._replies and self._sock is None and not self._closed:
                self._cond.wait()
            if self._replies:
                data, self._replies = self._replies[:size], self._replies[size:]
                return data
            if self._closed or self._sock is None:
                return b""
            sock = self._sock
        return sock.recv(size)

    def hang_up(self) -> None:
        """End the stream from the sandbox's side (it ended): reads return b"", sends fail."""
        with self._cond:
            self._closed = True
            sock = self._sock
            self._cond.notify_all()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.hang_up()
        with self._sandbox.lock:
            self._sandbox.channels.discard(self)
        if self._sock is not None:
            self._sock.close()


class MemoryProvider(Provider):
    """The in-memory provider (module docstring). Option ``clock``: the watchdog's clock
    while the agent is not started (default ``time.time``)."""

    name = NAME
    capabilities = Capabilities(pause=True, resume=True, network=True)

    def __init__(self, settings: Settings, **options: Any):
        super().__init__(settings, **options)
        self.clock: Callable[[], float] = options.get("clock") or time.time

    def create(self, spec: SandboxSpec) -> Handle:
        sandbox = MemorySandbox(
            memory_id="mem_" + secrets.token_hex(8), sandbox_id=spec.sandbox_id,
            store_id=spec.store_id, owner=spec.owner, token=secrets.token_hex(16),
            deadline=spec.deadline,
        )
        with _LOCK:
            _SANDBOXES[sandbox.memory_id] = sandbox
        return sandbox.handle

    def connect(self, handle: Handle) -> MemoryChannel:
        sandbox = self._running(handle)
        if sandbox is None:
            raise ConnectionRefusedError(f"memory sandbox {handle.get('sandbox_id')} is gone")
        channel = MemoryChannel(sandbox)
        with sandbox.lock:
            sandbox.channels.add(channel)
        return channel

    def pause(self, handle: Handle) -> None:
        self._freeze(handle, True)

    def resume(self, handle: Handle) -> None:
        self._freeze(handle, False)

    def _freeze(self, handle: Handle, paused: bool) -> None:
        sandbox = self._running(handle)
        if sandbox is not None:
            with sandbox.lock:
                sandbox.paused = paused
                if sandbox.vm is not None:
                    (sandbox.vm.pause if paused else sandbox.vm.resume)()

    def extend(self, handle: Handle, deadline: float) -> None:
        sandbox = _SANDBOXES.get(handle.get("memory_id", ""))
        if sandbox is not None:
            sandbox.extended.append(deadline)

    def destroy(self, handle: Handle) -> None:
        with _LOCK:
            sandbox = _SANDBOXES.pop(handle.get("memory_id", ""), None)
        if sandbox is not None:
            sandbox.end()

    def alive(self, handle: Handle) -> bool:
        return self._running(handle) is not None

    def list_resources(self, store_id: str) -> list[dict[str, Any]]:
        with _LOCK:
            found = [s for s in _SANDBOXES.values() if s.store_id == store_id]
        return [{"sandbox_id": s.sandbox_id, "handle": s.handle}
                for s in found if s.running(self.clock())]

    def _running(self, handle: Handle) -> MemorySandbox | None:
        """The sandbox while it runs; one whose watchdog deadline passed is ended first (what
        its agent would have done)."""
        sandbox = _SANDBOXES.get(handle.get("memory_id", ""))
        if sandbox is None or sandbox.running(self.clock()):
            return sandbox
        if not sandbox.ended and sandbox.agent is None:
            sandbox.end()  # the watchdog's doing: the resource stays until destroy, like an agent's
        return None


# ---------------------------------------------------------------------------- for tests


def sandbox(handle: Handle) -> MemorySandbox:
    """The in-memory sandbox of ``handle`` (KeyError once destroyed)."""
    return _SANDBOXES[handle["memory_id"]]


def sandboxes() -> list[MemorySandbox]:
    """Every memory sandbox not destroyed yet."""
    with _LOCK:
        return list(_SANDBOXES.values())


def reset() -> None:
    """Destroy every memory sandbox (a test's clean-up)."""
    with _LOCK:
        doomed = list(_SANDBOXES.values())
        _SANDBOXES.clear()
    for sb in doomed:
        sb.end()


@contextlib.contextmanager
def registered() -> Iterator[str]:
    """Provider ``memory`` registered for the duration; yields its name. Leaves no sandbox."""
    register_provider(NAME, f"{__name__}:MemoryProvider")
    try:
        yield NAME
    finally:
        unregister_provider(NAME)
        reset()


def _epoch_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _drain(stream: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        while stream.read(65536):
            pass
