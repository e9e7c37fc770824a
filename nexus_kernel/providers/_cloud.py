"""What the cloud providers (e2b, modal) share: :class:`CloudProvider`, the base of the
providers on a cloud SDK, whose only route to the agent is the stdio of a process started
through that SDK.

It holds the common shape: the credential check, the TTL check and the mapping of the
agent's deadline onto the service's own timeout (at create and on :meth:`extend`), the agent
started and awaited with cleanup on failure, the relay stream, the cache of SDK sandbox
objects, destroy and the reconcile listing. A subclass says how its SDK does each step.

The channel: the agent listens on an abstract unix socket named per sandbox
(:func:`new_socket`, in the handle as ``socket``): nothing in the file system for sandbox
code to rename or replace, and bound before any user code runs. Every relay is started with
``--peer-pid`` of the agent (``agent_pid`` in the handle), so it refuses a socket that
another process listens on (SO_PEERCRED), before the ``auth`` handshake.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
import weakref
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, suppress
from typing import Any

from ..agent.deploy import ZIPAPP_NAME
from ..config import Settings
from ..errors import AgentError, InvalidArgumentError, MissingCredentialsError, SandboxError
from ..models import AT_CAP, HARD_END, SandboxSpec
from ._launch import (
    agent_command,
    boot_script,
    import_sdk,
    relay_args,
    require_sdk,
    serve_args,
)
from ._stream import PumpChannel
from .base import Handle, Provider

#: Seconds the first contact with a cloud API may take before the provider reports it
#: unreachable. Left alone, the SDKs wait much longer for a host that does not answer
#: (E2B: two minutes per request; Modal: about a minute of connection retries).
REACH_SECONDS = 5.0
#: The sandbox user's home in every cloud sandbox.
HOME = "/home/user"
#: A new deadline closer than this to the timeout already set does not call the service.
REFRESH_SLACK = 60.0
#: The fd on which a boot line opens a token file for the agent (``--token-fd``).
TOKEN_FD = 3


def new_socket() -> str:
    """A new agent socket name: abstract, unique per sandbox (names are per network
    namespace, and the fakes run many sandboxes in one)."""
    return f"@nexus-{secrets.token_hex(8)}"
#: Seconds before its hard end from which a sandbox may already have been paused or ended
#: at its cap (the service's timeout is whole seconds from a request's start).
CAP_SLACK = 5.0


def one_line(exc: BaseException) -> str:
    """The exception's text on one line (SDK messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def timeout_for(deadline: float | None, now: float, maximum: int, grace: int) -> int:
    """The service's timeout (seconds from ``now``) that keeps the sandbox until
    ``deadline`` plus ``grace``, capped at ``maximum``."""
    if deadline is None:
        return maximum
    return int(min(maximum, max(1, math.ceil(deadline - now + grace))))


class CloudProvider(Provider):
    """Base of the SDK-backed cloud providers. Subclasses set the class attributes below
    and implement the SDK steps (the abstract methods)."""

    #: The service's name in messages ("E2B", "Modal").
    service = ""
    #: MissingCredentialsError's message: how to set the credentials.
    missing_credentials = ""
    #: Directory of the agent inside the sandbox.
    agent_dir = ""
    #: Seconds the service keeps the sandbox past the agent's deadline (the host reaper and
    #: the agent's watchdog act first; the service's own timeout is the last resort).
    grace = 120
    #: Option naming the platform's runtime cap (seconds a sandbox may run, whatever its
    #: TTL), its default, and the message naming it (``{minutes}``): for a longer TTL, and
    #: when a sandbox past it is gone.
    max_seconds_option = ""
    default_max_seconds = 24 * 3600
    too_long = ""
    capped = ""
    #: What the service does at the cap (the handle's AT_CAP): "end", or "pause" (the next
    #: stream resumes it); then ``capped_paused`` names the cap when that resume fails.
    at_cap = "end"
    capped_paused = ""
    #: Seconds to wait for the agent's READY line (option ``ready_timeout``).
    ready_timeout = 60.0

    def __init__(self, settings: Settings, **options: Any):
        super().__init__(settings, **options)
        self._sandboxes: dict[str, Any] = {}
        #: sandbox id -> epoch seconds at which the service's timeout was last set to end it.
        self._ends: dict[str, float] = {}
        #: sandbox id -> the streams this provider opened to its agent and not yet closed.
        self._relays: dict[str, weakref.WeakSet[PumpChannel]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ availability

    @classmethod
    def check_available(cls, settings: Settings, **options: Any) -> None:
        """The SDK is installed and credentials are set (no network call)."""
        require_sdk(cls.name, cls.name, options)
        if not cls._has_credentials(settings, options):
            raise MissingCredentialsError(cls.missing_credentials)

    @classmethod
    @abstractmethod
    def _has_credentials(cls, settings: Settings, options: dict[str, Any]) -> bool:
        """Credentials are configured (cheap, no network)."""

    @property
    def sdk(self) -> Any:
        """The SDK module (or the object injected as option ``sdk``)."""
        return import_sdk(self.name, self.name, self.options)

    @property
    def _python(self) -> str:
        return str(self.options.get("python") or "python3")

    @property
    def _max_seconds(self) -> int:
        """The runtime cap (seconds): the provider option, else the plan's (settings)."""
        return int(self.options.get(self.max_seconds_option) or self._plan_seconds())

    def _plan_seconds(self) -> float:
        return self.default_max_seconds

    def timeout_for(self, deadline: float | None, now: float, hard_end: float | None = None) -> int:
        """The service's timeout for the agent's ``deadline`` (see :func:`timeout_for`),
        never past the sandbox's ``hard_end`` (the service would cut it there silently)."""
        maximum = self._max_seconds
        if hard_end is not None:
            maximum = max(1, min(maximum, int(hard_end - now)))
        return timeout_for(deadline, now, maximum, self.grace)

    def cap_reached(self, handle: Handle) -> str:
        """The runtime cap named (``capped``, or ``capped_paused`` for a sandbox the service
        pauses there), once the sandbox has passed its hard end; else ""."""
        end = handle.get(HARD_END)
        if end is None or time.time() < end - CAP_SLACK:
            return ""
        text = self.capped_paused if handle.get(AT_CAP) == "pause" else self.capped
        return text.format(minutes=self._max_seconds // 60)

    def boot_script(
        self,
        deadline: float | None,
        socket: str,
        *,
        token_file: str | None = None,
        announce_pid: bool = False,
    ) -> str:
        """The shell line that becomes the agent listening on ``socket``: it takes its token
        on stdin, or from ``token_file`` (opened, then deleted before the agent starts)."""
        token_fd = None if token_file is None else TOKEN_FD
        command = agent_command(  # the uploaded zipapp, run as a script (no -I)
            self._python, self.agent_path,
            *serve_args(HOME, deadline, socket=socket, token_fd=token_fd), flags=()
        )
        return boot_script(command, make_dirs=(HOME,), token_file=token_file, token_fd=TOKEN_FD,
                           announce_pid=announce_pid)

    def relay_command(self, handle: Handle) -> list[str]:
        """The command whose stdio is a stream to the handle's agent (``--peer-pid``: only
        to a socket the agent listens on). It may run as root: isolated mode and no
        ``site`` (no PYTHON* variables, no .pth file of a writable site-packages runs)."""
        socket, pid = handle.get("socket"), handle.get("agent_pid")
        if not socket or not pid:
            raise AgentError(
                f"{self.service} sandbox {handle.get('sandbox_id')} was started by an older "
                "nexus-kernel (its agent listens on a file socket): stop it and create a new one"
            )
        return agent_command(self._python, self.agent_path,
                             *relay_args(socket, peer_pid=int(pid)), flags=("-I", "-S"))

    @property
    def agent_path(self) -> str:
        """Where the agent's zipapp is uploaded in the sandbox."""
        return f"{self.agent_dir}/{ZIPAPP_NAME}"

    # ------------------------------------------------------------------ SDK steps

    @abstractmethod
    def _errors(self, what: str) -> AbstractContextManager[None]:
        """A context mapping the SDK's failures to nexus errors (``what``: "create the
        sandbox", ...). May check that the service answers before returning it."""

    @abstractmethod
    def _new_sandbox(self, spec: SandboxSpec, now: float) -> tuple[Any, Handle]:
        """Create the service's sandbox; (SDK sandbox object, handle with a token)."""

    @abstractmethod
    def _start_agent(self, sandbox: Any, handle: Handle, deadline: float | None) -> None:
        """Start the agent with ``handle["token"]`` on a socket of :func:`new_socket` (set
        here or by :meth:`_new_sandbox`, as ``handle["socket"]``), wait for its READY line
        and set ``handle["agent_pid"]``."""

    @abstractmethod
    def _attach(self, sandbox_id: str) -> Any:
        """The SDK object of a running sandbox created elsewhere (another process)."""

    @abstractmethod
    def _open_relay(
        self, sandbox: Any, argv: list[str]
    ) -> tuple[Iterable[bytes], Callable[[bytes], None], Callable[[], None]]:
        """Start the relay ``argv``: (its stdout as bytes, a stdin writer, a function
        ending it)."""

    @abstractmethod
    def _set_timeout(self, sandbox_id: str, seconds: int) -> None:
        """Make the service end the sandbox ``seconds`` from now."""

    @abstractmethod
    def _kill(self, sandbox_id: str) -> None:
        """End the sandbox; nothing when it is already gone."""

    @abstractmethod
    def _labelled(self, store_id: str) -> Iterator[tuple[str, dict[str, str]]]:
        """(service sandbox id, labels) of our sandboxes labelled ``nexus_store=store_id``."""

    # ------------------------------------------------------------------ lifecycle

    def create(self, spec: SandboxSpec) -> Handle:
        """Create the service's sandbox and start the agent in it; return once it is READY."""
        now = time.time()
        if spec.deadline is not None and spec.deadline - now > self._max_seconds:
            raise InvalidArgumentError(self.too_long.format(minutes=self._max_seconds // 60))
        sandbox, handle = self._new_sandbox(spec, now)
        handle[HARD_END] = round(now + self._max_seconds, 3)
        handle.setdefault(AT_CAP, self.at_cap)
        try:
            with self._errors("start the sandbox agent"):
                self._start_agent(sandbox, handle, spec.deadline)
        except BaseException:
            with suppress(Exception):  # keep the original error
                self.destroy(handle)
            raise
        return handle

    def connect(self, handle: Handle) -> PumpChannel:
        """A new stream to the agent: a relay process's stdin/stdout, through the SDK."""
        argv = self.relay_command(handle)
        errors = self._errors("open a stream to the sandbox")
        try:
            with errors:
                chunks, write, end = self._open_relay(self._sandbox(handle), argv)
        except SandboxError as exc:
            self._forget(handle)
            raise AgentError(
                f"cannot reach the agent of {self.service} sandbox {handle.get('sandbox_id')}: "
                + ": ".join(filter(None, (str(exc), self.cap_reached(handle))))
            ) from exc
        channel = PumpChannel(
            chunks, write, on_close=end, name=f"nexus-{self.name}-{handle.get('sandbox_id', '')}"
        )
        with self._lock:
            self._relays.setdefault(handle["sandbox_id"], weakref.WeakSet()).add(channel)
        return channel

    def close_relays(self, handle: Handle) -> None:
        """End every stream this provider opened to the sandbox's agent (before a pause:
        a relay can only be ended while the sandbox runs; left to the pause, it would hold
        an agent connection until the sandbox ends)."""
        with self._lock:
            relays = list(self._relays.pop(handle.get("sandbox_id"), ()))
        for channel in relays:
            channel.close()

    def extend(self, handle: Handle, deadline: float) -> None:
        """Move the service's timeout to ``deadline`` + grace (best effort, never raises: a
        failed refresh must not fail the run; the service then ends the sandbox at the
        previous timeout). A deadline within REFRESH_SLACK of the last one set is skipped, as
        is a sandbox at its hard end (paused or ended there; a resume sets the timeout)."""
        sandbox_id = handle.get("sandbox_id")
        now = time.time()
        end = handle.get(HARD_END)
        if end is not None and now >= end - CAP_SLACK:
            return
        timeout = self.timeout_for(deadline, now, end)
        known = self._ends.get(sandbox_id)
        if known is not None and abs(now + timeout - known) < REFRESH_SLACK:
            return
        try:
            self._set_timeout(sandbox_id, timeout)
        except Exception:
            return
        self._ends[sandbox_id] = now + timeout

    def destroy(self, handle: Handle) -> None:
        """End the service's sandbox. Idempotent."""
        sandbox_id = handle.get("sandbox_id")
        if not sandbox_id:
            return
        self._forget(handle)
        self._kill(sandbox_id)

    def list_resources(self, store_id: str) -> list[dict[str, Any]]:
        """The service's sandboxes labelled ``nexus_store=store_id``."""
        with self._errors("list sandboxes"):
            return [
                {
                    "sandbox_id": labels.get("nexus_sandbox_id", ""),
                    "handle": {"token": "", "sandbox_id": sandbox_id},
                }
                for sandbox_id, labels in self._labelled(store_id)
            ]

    # ------------------------------------------------------------------ SDK objects

    def _sandbox(self, handle: Handle) -> Any:
        """The SDK object of a running sandbox (cached per provider instance)."""
        sandbox_id = handle["sandbox_id"]
        with self._lock:
            sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            sandbox = self._attach(sandbox_id)
            with self._lock:
                sandbox = self._sandboxes.setdefault(sandbox_id, sandbox)
        return sandbox

    def _remember(self, sandbox_id: str, sandbox: Any, end: float | None = None) -> None:
        with self._lock:
            self._sandboxes[sandbox_id] = sandbox
            if end is not None:
                self._ends[sandbox_id] = end

    def _forget(self, handle: Handle) -> None:
        with self._lock:
            self._sandboxes.pop(handle.get("sandbox_id"), None)
            self._ends.pop(handle.get("sandbox_id"), None)
