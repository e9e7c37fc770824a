"""The agent's start, up to ``READY`` (:func:`serve`): the token, the home directory, the
hardening, the stop-signal block, the listening socket, the stop-signal thread and the
deadline watchdog, importing only what those need. The server (:mod:`.server`: json,
runs, registry, ...) is imported after ``READY``, before the first connection is accepted
(a connection the host makes meanwhile waits in the listen queue); what only some
operations use (sessions, snapshots) is imported on first use."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

from .procs import ProcessTable, harden

#: Signals that shut the agent down (``docker stop`` sends SIGTERM).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
#: siginfo codes the kernel sets itself: kill() (SI_USER) and the kernel (SI_KERNEL). Any
#: process may queue a signal with a code below 0 and a sender pid of its choosing.
_KERNEL_SET_CODES = frozenset({0, 0x80})
#: Longest token the agent reads from its token fd (bytes).
MAX_TOKEN_BYTES = 1024


class Lifetime:
    """How the sandbox ends: at its deadline (:meth:`watchdog`), on a stop signal
    (:meth:`stop_on_signals`) or a ``shutdown``; :meth:`terminate` kills every process of
    the sandbox, removes what the agent made and exits."""

    def __init__(self, socket_path: str | None) -> None:
        self.procs = ProcessTable()
        self.socket_path = socket_path  # a path the agent bound (removed at the end)
        self.tmpdir: str | None = None  # the agent's temp directory, once made (removed)
        self._deadline: float | None = None
        self._deadline_cond = threading.Condition()
        self._terminating = threading.Lock()

    def set_deadline(self, at: float | None) -> None:
        with self._deadline_cond:
            self._deadline = at
            self._deadline_cond.notify_all()

    def watchdog(self) -> None:
        """End the sandbox when the deadline passes."""
        with self._deadline_cond:
            while True:
                at = self._deadline
                if at is None:
                    self._deadline_cond.wait()
                    continue
                left = at - time.time()
                if left <= 0:
                    break
                self._deadline_cond.wait(min(left, 3600))
        self.terminate()

    def stop_on_signals(self) -> None:
        """Shut down on a STOP_SIGNALS signal. They are blocked in every thread and taken
        here, so a signal never waits on whichever thread the kernel picked. As the
        sandbox's pid 1 the agent takes them only from outside its pid namespace (si_pid 0,
        in a siginfo the kernel filled): sandbox code cannot stop it (``pkill python3``, or
        a queued signal with a forged sender), as it cannot SIGKILL it."""
        while True:
            info = signal.sigwaitinfo(STOP_SIGNALS)
            if os.getpid() != 1 or (info.si_pid == 0 and info.si_code in _KERNEL_SET_CODES):
                self.terminate()

    def terminate(self) -> None:
        """Kill every process of the sandbox and exit with status 0."""
        if not self._terminating.acquire(blocking=False):
            return
        try:
            if self.socket_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.socket_path)
            self.procs.kill(everything=True)
            if self.tmpdir:
                for name in os.listdir(self.tmpdir):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.tmpdir, name))
                with contextlib.suppress(OSError):
                    os.rmdir(self.tmpdir)
        finally:
            os._exit(0)


def _read_token(fd: int) -> str:
    """The token: the first line read from ``fd`` (a pipe or the process's stdin, which
    the host writes it to), at most MAX_TOKEN_BYTES; ``fd`` is closed after."""
    data = b""
    try:
        while b"\n" not in data and len(data) <= MAX_TOKEN_BYTES:
            chunk = os.read(fd, 256)
            if not chunk:
                break
            data += chunk
    finally:
        if fd > 2:
            os.close(fd)
    return data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _listen(address: str | None, listen_fd: int | None):
    """The listening socket: ``listen_fd``, one the host made and listens on (its path is
    where sandbox code cannot reach), else a new one bound to ``address`` (``@name``: an
    abstract socket, nothing in the file system to rename or replace). A ``_socket.socket``,
    the C type ``socket.socket`` extends: the ``socket`` module (enums, selectors: ~3 ms) is
    imported after READY, where :meth:`.server.Agent.accept_forever` wraps it."""
    import _socket

    if listen_fd is not None:
        listener = _socket.socket(fileno=listen_fd)
        os.set_inheritable(listen_fd, False)  # never passed on to sandbox code
        if listener.family != _socket.AF_UNIX or listener.type != _socket.SOCK_STREAM:
            raise OSError(f"fd {listen_fd} is not a unix stream socket")
        return listener
    from .wire import unix_address

    listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    if not address.startswith("@"):
        with contextlib.suppress(OSError):
            os.unlink(address)
    old_umask = os.umask(0o177)
    try:
        listener.bind(unix_address(address))
        listener.listen(64)
    finally:
        os.umask(old_umask)
    return listener


def serve(address: str | None, listen_fd: int | None, token_fd: int, home: str | None,
          deadline: float | None) -> int:
    """Run the agent server: print ``READY`` once listening, then serve until terminated."""
    try:
        token = _read_token(token_fd)
    except OSError as exc:
        sys.stderr.write(f"sandbox_agent: cannot read the token: {exc}\n")
        return 2
    if not token:
        sys.stderr.write("sandbox_agent: no token on the token fd\n")
        return 2
    home = os.path.abspath(home or os.getcwd())
    try:
        os.chdir(home)
    except OSError as exc:
        sys.stderr.write(f"sandbox_agent: cannot use {home!r} as home: {exc.strerror}\n")
        return 2
    harden()
    # Before any thread starts: every thread inherits the block (see stop_on_signals).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    lifetime = Lifetime(address if listen_fd is None and not address.startswith("@") else None)
    try:
        listener = _listen(address, listen_fd)
    except OSError as exc:
        where = f"fd {listen_fd}" if listen_fd is not None else repr(address)
        sys.stderr.write(f"sandbox_agent: cannot listen on {where}: {exc}\n")
        return 2
    threading.Thread(target=lifetime.stop_on_signals, name="signals", daemon=True).start()
    lifetime.set_deadline(deadline)
    threading.Thread(target=lifetime.watchdog, name="watchdog", daemon=True).start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    from .server import Agent

    Agent(token, home, lifetime).accept_forever(listener)
