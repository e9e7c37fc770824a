"""The e2b provider: one E2B cloud sandbox (a Firecracker microVM) per nexus sandbox, on the
``e2b`` SDK (``pip install 'nexus-kernel[e2b]'``). The SDK is imported lazily, here only.

Start: ``Sandbox.create`` with the template (``template_id`` > ``E2B_TEMPLATE_ID`` > E2B's
default), ``timeout`` mapped from the TTL, ``metadata`` carrying our ids for reconcile and
``allow_internet_access`` following the sandbox's network setting. The agent (a zipapp) is
uploaded with ``files.write`` and started as a background command (``commands.run(background=True,
stdin=True, timeout=0)``): a shell line reads the token from stdin into a 0600 file and
becomes the agent, which prints ``READY``; the command's stream is then detached (the
process keeps running).

Stream: every ``connect`` starts the agent's ``relay`` as another background command;
its stdout (the SDK hands it over as ``str``, decoded incrementally as UTF-8) is re-encoded
to bytes, and ``send_stdin`` takes bytes. The agent only writes valid UTF-8 JSON lines, so
the round trip is byte-exact and framing is intact (file contents travel base64 inside JSON).

TTL: E2B's own timeout is the backstop that ends the microVM (the agent's watchdog only ends
the agent): at create it is the agent's deadline plus :data:`TIMEOUT_GRACE`, and every
``deadline`` request the client sends (the manager sends one before each run) moves it with
``set_timeout`` (see :class:`~nexus_kernel.providers._stream.DeadlineWatcher`).

Pause/resume: ``Sandbox.pause`` snapshots memory and filesystem (sessions survive);
``Sandbox.connect`` resumes. Destroy: ``Sandbox.kill`` (idempotent). Reconcile:
``Sandbox.list(query=SandboxQuery(metadata={"nexus_store": ...}))``.

Reaching E2B: the first call of a provider lists one sandbox with a short ``request_timeout``
(:meth:`E2BProvider._reach`), so a refused key (401/403) or an API that cannot be reached is
one line within :data:`~._cloud.REACH_SECONDS`, naming ``E2B_API_KEY`` or ``E2B_DOMAIN``.
"""

from __future__ import annotations

import math
import os
import secrets
import shlex
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ..agent.deploy import ZIPAPP_NAME, zipapp_bytes
from ..config import Settings
from ..errors import (
    AgentError,
    InvalidArgumentError,
    MissingCredentialsError,
    MissingDependencyError,
    ProviderError,
    ProviderUnavailableError,
    SandboxError,
    SandboxStateError,
)
from ..models import SandboxSpec
from ._cloud import REACH_SECONDS, one_line
from ._stream import (
    DeadlineWatcher,
    PumpChannel,
    relay_argv,
    serve_script,
    wait_for_ready,
)
from .base import Capabilities, Handle, Provider, import_sdk, resource_labels, sdk_installed

HOME = "/home/user"
#: Agent file and run dir live under the sandbox user's home: no root needed, any template.
BASE_DIR = f"{HOME}/.nexus"
AGENT_PATH = f"{BASE_DIR}/{ZIPAPP_NAME}"
RUN_DIR = f"{BASE_DIR}/run"

#: Seconds E2B keeps the microVM past the agent's deadline (the host reaper and the agent's
#: watchdog act first; E2B's timeout is the last resort).
TIMEOUT_GRACE = 120
#: E2B's longest sandbox timeout (Pro plan; Hobby allows 3600: E2B then refuses the create).
DEFAULT_MAX_TIMEOUT = 24 * 3600
#: A new deadline closer than this to the timeout already set does not call set_timeout.
REFRESH_SLACK = 60.0
READY_TIMEOUT = 60.0
#: Largest piece handed to one ``send_stdin`` call.
STDIN_CHUNK = 512 * 1024
STDERR_KEEP = 16 * 1024

MISSING_KEY = (
    "E2B needs an API key: export E2B_API_KEY=... (get one at e2b.dev) "
    "or pass e2b_api_key= to NexusFS"
)
FIX_KEY = "set a valid E2B_API_KEY or pass e2b_api_key= to NexusFS"
FIX_NETWORK = "check the network connection, or E2B_DOMAIN if you use your own E2B deployment"


def _sdk(options: dict[str, Any]) -> Any:
    return import_sdk("e2b", "e2b", options)


def _require_sdk(options: dict[str, Any]) -> None:
    """MissingDependencyError when the SDK is absent, without importing it (cheap)."""
    if options.get("sdk") is None and not sdk_installed("e2b"):
        raise MissingDependencyError("e2b", "e2b")


def _api_key(settings: Settings, options: dict[str, Any]) -> str:
    return options.get("api_key") or settings.e2b_api_key or os.environ.get("E2B_API_KEY", "")


def timeout_for(deadline: float | None, now: float, maximum: int) -> int:
    """E2B timeout (seconds from ``now``) that keeps the sandbox until ``deadline`` plus
    :data:`TIMEOUT_GRACE`, capped at ``maximum``."""
    if deadline is None:
        return maximum
    return int(min(maximum, max(1, math.ceil(deadline - now + TIMEOUT_GRACE))))


@contextmanager
def _sdk_errors(sdk: Any, what: str):
    """Map E2B SDK failures to nexus errors with one-line messages."""
    import httpx  # the SDK's HTTP layer: a host that cannot be reached is an httpx error

    try:
        yield
    except SandboxError:
        raise
    except sdk.AuthenticationException as exc:  # 401
        raise _refused(exc) from exc
    except sdk.SandboxNotFoundException as exc:
        raise SandboxStateError(
            f"the E2B sandbox is gone (stopped or expired): {one_line(exc)}"
        ) from exc
    except httpx.TransportError as exc:
        timed_out = isinstance(exc, httpx.TimeoutException)
        raise ProviderUnavailableError(_unreachable(exc, timed_out)) from exc
    except Exception as exc:
        if isinstance(exc, sdk.SandboxException) and exc.status_code == 403:
            raise _refused(exc) from exc
        raise ProviderError(f"E2B failed to {what}: {one_line(exc)}") from exc


def _refused(exc: Exception) -> ProviderUnavailableError:
    return ProviderUnavailableError(f"E2B refused the API key ({one_line(exc)}): {FIX_KEY}")


def _unreachable(exc: Any, timed_out: bool) -> str:
    """One line for an httpx transport error: which host, and why in a few words."""
    try:
        where = f" at {exc.request.url.host}"
    except RuntimeError:  # raised without its request
        where = ""
    text = str(exc).lower()
    if timed_out:
        why = "it did not answer"
    elif "dns" in text:
        why = "its name does not resolve"
    elif "certificate" in text:
        why = "its TLS certificate is not trusted"
    else:
        why = "the connection failed"
    return f"E2B's API{where} could not be reached ({why}): {FIX_NETWORK}"


class E2BProvider(Provider):
    """Sandboxes as E2B cloud sandboxes running the agent (see the module doc).

    Options (``provider_options={"e2b": {...}}``): ``api_key`` (else ``e2b_api_key`` /
    ``E2B_API_KEY``), ``domain``, ``python`` (in the template, default ``python3``),
    ``max_timeout`` (seconds, default 86400), ``ready_timeout``, ``sdk`` (an object with
    the e2b module's names, for tests).
    """

    name = "e2b"
    capabilities = Capabilities(pause=True, resume=True, network=True, gpu=False)

    def __init__(self, settings: Settings, **options: Any):
        super().__init__(settings, **options)
        self._sandboxes: dict[str, Any] = {}
        #: sandbox id -> epoch seconds at which E2B's timeout was last set to end it.
        self._ends: dict[str, float] = {}
        self._lock = threading.Lock()
        self._reached = False

    # ------------------------------------------------------------------ availability

    @classmethod
    def check_available(cls, settings: Settings, **options: Any) -> None:
        """The SDK is installed and an API key is set (no import of the SDK, no network)."""
        _require_sdk(options)
        if not _api_key(settings, options):
            raise MissingCredentialsError(MISSING_KEY)

    @property
    def sdk(self) -> Any:
        return _sdk(self.options)

    def _reach(self) -> Any:
        """The SDK, once E2B's API has accepted the key (checked once per provider).

        One cheap call, listing one sandbox, bounded by :data:`REACH_SECONDS`: by default the
        SDK waits two minutes for an API that does not answer."""
        sdk = self.sdk
        if not self._reached:
            with _sdk_errors(sdk, "reach the E2B API"):
                # the SDK's transport bounds a whole exchange by twice request_timeout
                paginator = sdk.Sandbox.list(
                    limit=1, request_timeout=REACH_SECONDS / 2, **self._api()
                )
                paginator.next_items()
            self._reached = True
        return sdk

    def _api(self) -> dict[str, Any]:
        params = {"api_key": _api_key(self.settings, self.options)}
        if self.options.get("domain"):
            params["domain"] = self.options["domain"]
        return params

    @property
    def _max_timeout(self) -> int:
        return int(self.options.get("max_timeout") or DEFAULT_MAX_TIMEOUT)

    @property
    def _python(self) -> str:
        return str(self.options.get("python") or "python3")

    # ------------------------------------------------------------------ lifecycle

    def create(self, spec: SandboxSpec) -> Handle:
        """Create the E2B sandbox, upload and start the agent; return once it is READY."""
        now = time.time()
        if spec.deadline is not None and spec.deadline - now > self._max_timeout:
            raise InvalidArgumentError(
                f"E2B keeps a sandbox at most {self._max_timeout // 60} minutes between runs; "
                "use a shorter ttl_minutes"
            )
        sdk = self._reach()
        timeout = timeout_for(spec.deadline, now, self._max_timeout)
        template = spec.template_id or self.settings.e2b_template_id or None
        with _sdk_errors(sdk, "create the sandbox"):
            sandbox = sdk.Sandbox.create(
                template=template,
                timeout=timeout,
                metadata=resource_labels(spec),
                envs={},
                allow_internet_access=bool(spec.network),
                **self._api(),
            )
        handle = {
            "token": secrets.token_urlsafe(32),
            "sandbox_id": sandbox.sandbox_id,
            "template": template or "",
            "timeout": timeout,
        }
        self._remember(sandbox, now + timeout)
        try:
            with _sdk_errors(sdk, "start the sandbox agent"):
                self._start_agent(sandbox, handle["token"], spec.deadline)
        except BaseException:
            with suppress(Exception):  # keep the original error
                self.destroy(handle)
            raise
        return handle

    def _start_agent(self, sandbox: Any, token: str, deadline: float | None) -> None:
        sandbox.files.write(AGENT_PATH, zipapp_bytes())
        script = serve_script(
            python=self._python, agent_path=AGENT_PATH, run_dir=RUN_DIR, home=HOME,
            deadline=deadline,
        )  # fmt: skip
        command = sandbox.commands.run(script, background=True, stdin=True, timeout=0)
        command.send_stdin(token + "\n")
        stderr = bytearray()
        wait_for_ready(
            _stdout_of(command, stderr),
            float(self.options.get("ready_timeout") or READY_TIMEOUT),
            stop=command.kill,
            detail=lambda: stderr.decode("utf-8", "replace"),
        )
        with suppress(Exception):
            command.disconnect()  # the agent keeps running; we stop receiving its output

    def connect(self, handle: Handle) -> PumpChannel:
        """A new stream to the agent: a background ``relay`` command's stdin/stdout."""
        sdk = self._reach()
        try:
            with _sdk_errors(sdk, "open a stream to the sandbox"):
                sandbox = self._sandbox(handle)
                command = sandbox.commands.run(
                    "exec " + shlex.join(relay_argv(self._python, AGENT_PATH, RUN_DIR)),
                    background=True,
                    stdin=True,
                    timeout=0,
                )
        except SandboxError as exc:
            self._forget(handle)
            raise AgentError(
                f"cannot reach the agent of E2B sandbox {handle.get('sandbox_id')}: {exc}"
            ) from exc
        watcher = DeadlineWatcher(lambda at: self.extend(handle, at))
        return PumpChannel(
            _stdout_of(command, bytearray()),
            _stdin_writer(command),
            on_close=lambda: _end_command(command),
            on_send=watcher.feed,
            name=f"nexus-e2b-{handle.get('sandbox_id', '')}",
        )

    def extend(self, handle: Handle, deadline: float | None) -> None:
        """Move E2B's timeout to ``deadline`` + grace (best effort, never raises: a failed
        refresh must not fail the run; E2B then ends the sandbox at the previous timeout)."""
        if deadline is None:
            return
        sandbox_id = handle.get("sandbox_id")
        now = time.time()
        timeout = timeout_for(deadline, now, self._max_timeout)
        end = now + timeout
        known = self._ends.get(sandbox_id)
        if known is not None and abs(end - known) < REFRESH_SLACK:
            return
        try:
            self.sdk.Sandbox.set_timeout(sandbox_id, timeout, **self._api())
        except Exception:
            return
        self._ends[sandbox_id] = end

    def pause(self, handle: Handle) -> None:
        """Snapshot memory and filesystem and stop the microVM (``Sandbox.pause``).
        Idempotent: pausing a paused sandbox is a no-op."""
        sdk = self._reach()
        with _sdk_errors(sdk, "pause the sandbox"):
            sdk.Sandbox.pause(handle["sandbox_id"], **self._api())
        self._forget(handle)

    def resume(self, handle: Handle) -> None:
        """Restore the paused microVM (``Sandbox.connect`` resumes); the agent and its
        sessions continue where they were. Idempotent on a running sandbox."""
        sdk = self._reach()
        timeout = int(handle.get("timeout") or DEFAULT_MAX_TIMEOUT)
        with _sdk_errors(sdk, "resume the sandbox"):
            sandbox = sdk.Sandbox.connect(handle["sandbox_id"], timeout=timeout, **self._api())
        self._remember(sandbox, time.time() + timeout)

    def destroy(self, handle: Handle) -> None:
        """Kill the E2B sandbox (``Sandbox.kill``). Idempotent."""
        sandbox_id = handle.get("sandbox_id")
        if not sandbox_id:
            return
        self._forget(handle)
        sdk = self._reach()
        with _sdk_errors(sdk, "kill the sandbox"):
            try:
                sdk.Sandbox.kill(sandbox_id, **self._api())
            except sdk.NotFoundException:
                return

    def alive(self, handle: Handle) -> bool:
        """True while E2B knows the sandbox as running or paused."""
        sdk = self._reach()
        with _sdk_errors(sdk, "look up the sandbox"):
            try:
                info = sdk.Sandbox.get_info(handle["sandbox_id"], **self._api())
            except sdk.NotFoundException:
                return False
        return _state_name(info.state) in ("running", "paused")

    def list_resources(self, store_id: str) -> list[dict[str, Any]]:
        """E2B sandboxes (running or paused) whose metadata says ``nexus_store=store_id``."""
        sdk = self._reach()
        rows = []
        with _sdk_errors(sdk, "list sandboxes"):
            pages = sdk.Sandbox.list(
                query=sdk.SandboxQuery(metadata={"nexus_store": store_id}), **self._api()
            )
            while pages.has_next:
                for info in pages.next_items():
                    rows.append(
                        {
                            "sandbox_id": (info.metadata or {}).get("nexus_sandbox_id", ""),
                            "handle": {"token": "", "sandbox_id": info.sandbox_id},
                        }
                    )
        return rows

    # ------------------------------------------------------------------ files

    def put_file(self, handle: Handle, path: str, data: bytes) -> int:
        """Write ``data`` to ``path`` (relative to /home/user) with the SDK's files API."""
        with _sdk_errors(self._reach(), "write the file"):
            self._sandbox(handle).files.write(_sandbox_path(path), bytes(data))
        return len(data)

    def get_file(self, handle: Handle, path: str) -> bytes:
        """Read ``path`` (relative to /home/user) with the SDK's files API."""
        with _sdk_errors(self._reach(), "read the file"):
            return bytes(self._sandbox(handle).files.read(_sandbox_path(path), format="bytes"))

    # ------------------------------------------------------------------ helpers

    def _sandbox(self, handle: Handle) -> Any:
        """A connected SDK ``Sandbox`` for a running sandbox (cached per provider instance).
        Raises SandboxStateError when it is paused."""
        sandbox_id = handle["sandbox_id"]
        with self._lock:
            sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            # Sandbox.connect resumes a paused sandbox: never do that behind a pause.
            info = self.sdk.Sandbox.get_info(sandbox_id, **self._api())
            if _state_name(info.state) == "paused":
                raise SandboxStateError(f"the E2B sandbox {sandbox_id} is paused; resume it first")
            sandbox = self.sdk.Sandbox.connect(sandbox_id, **self._api())
            with self._lock:
                sandbox = self._sandboxes.setdefault(sandbox_id, sandbox)
        return sandbox

    def _remember(self, sandbox: Any, end: float) -> None:
        with self._lock:
            self._sandboxes[sandbox.sandbox_id] = sandbox
            self._ends[sandbox.sandbox_id] = end

    def _forget(self, handle: Handle) -> None:
        with self._lock:
            self._sandboxes.pop(handle.get("sandbox_id"), None)
            self._ends.pop(handle.get("sandbox_id"), None)


def _stdout_of(command: Any, stderr: bytearray) -> Iterator[bytes]:
    """The command's stdout as bytes; stderr (last 16 KiB) goes into ``stderr``."""
    for out, err, _pty in command:
        if out:
            yield out.encode("utf-8", "surrogatepass")
        elif err:
            stderr.extend(err.encode("utf-8", "replace"))
            del stderr[: max(0, len(stderr) - STDERR_KEEP)]


def _stdin_writer(command: Any):
    def write(data: bytes) -> None:
        for start in range(0, len(data), STDIN_CHUNK):
            command.send_stdin(data[start : start + STDIN_CHUNK])

    return write


def _end_command(command: Any) -> None:
    """Kill the relay (the agent sees its connection close; sessions survive) and stop
    receiving its events."""
    with suppress(Exception):
        command.kill()
    with suppress(Exception):
        command.disconnect()


def _state_name(state: Any) -> str:
    return str(getattr(state, "value", state)).lower()


def _sandbox_path(path: str) -> str:
    if not isinstance(path, str) or not path or "\0" in path:
        raise InvalidArgumentError("path must be a non-empty string without NUL bytes")
    return path if path.startswith("/") else f"{HOME}/{path}"
