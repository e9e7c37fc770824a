"""The e2b provider: one E2B cloud sandbox (a Firecracker microVM) per nexus sandbox, on the
``e2b`` SDK (``pip install 'nexus-kernel[e2b]'``). The SDK is imported lazily, here only.

The common shape (TTL check, agent start and cleanup, relay stream, extend, destroy,
reconcile listing) is :class:`~nexus_kernel.providers._cloud.CloudProvider`'s; this module
says how E2B's SDK does each step.

Start: ``Sandbox.create`` with the template (``template_id`` > ``E2B_TEMPLATE_ID`` > E2B's
code-interpreter template; "minimal" = E2B's base), ``timeout`` mapped from the TTL, ``metadata`` carrying our ids for reconcile and
``allow_internet_access`` following the sandbox's network setting.

Agent: its zipapp is written as root (``files.write(user="root")``) into AGENT_DIR, made
0755 / 0644 by a root command: the sandbox user can run it, not replace it. The token is
never sent on stdin (E2B's daemon, envd, logs a command's stdin at debug level): it is
written as a file of the sandbox user's (a random name in the home), which the boot line
opens on fd 3 and deletes before it becomes the agent (``--token-fd 3``), so it is gone
before any user code runs. The agent runs as the sandbox user, as a background command
(``commands.run(background=True, timeout=0, retain_output=False)``: E2B's daemon would end
it after the SDK's 60 s default, and the SDK's handle would keep every byte of its output)
whose shell execs into it, so the command's ``pid`` is the agent's (``agent_pid`` in the
handle). It listens on an abstract socket named per sandbox and prints ``READY``; the
command's stream is then detached (the process keeps running).

Stream: every ``connect`` starts the agent's ``relay --peer-pid <agent>`` as another
background command, as root: the sandbox user can neither kill it, read its memory, nor
change what its login shell runs (``bash -l`` reads the user's dotfiles, not root's). Its
stdout (the SDK hands it over as ``str``, decoded incrementally as UTF-8) is re-encoded to
bytes, and ``send_stdin`` takes bytes. The agent only writes valid UTF-8 JSON lines, so the
round trip is byte-exact and framing is intact (file contents travel base64 inside JSON).
What passes a relay (code, files) is protocol traffic on its stdin, which envd may log.

E2B's templates give the sandbox user passwordless sudo: code that uses it can reach the
agent and its channel as root can. The host never trusts the agent beyond the stream's
bounds and the ``auth`` handshake, and E2B's own timeout ends the microVM from outside.

TTL: E2B's own timeout is the backstop that ends the microVM (the agent's watchdog only ends
the agent): at create it is the agent's deadline plus :data:`TIMEOUT_GRACE`, and every
:meth:`~nexus_kernel.providers.base.Provider.extend` (the manager calls it whenever the
deadline moves) moves it with ``set_timeout``.

Runtime cap: the handle's hard end (the plan's cap after create or resume) bounds the
timeout. By default the sandbox is created with ``lifecycle={"on_timeout": {"action":
"pause", "mode": "full"}, "auto_resume": False}``: E2B pauses it at its timeout, whether
the cap or the TTL's, instead of killing it. A stream opened to a sandbox past its hard end
that E2B shows paused resumes it (``Sandbox.connect`` with the timeout), restarting the hard
end; the sessions continue. A sandbox paused at its TTL is ended by the next nexus command's
reap (``Sandbox.kill`` ends paused sandboxes too); one the user paused is never resumed here
(the manager opens streams to active sandboxes only). Option ``auto_pause=False`` or
``NEXUS_E2B_AUTO_PAUSE=0`` (or an SDK without ``lifecycle``) keeps E2B's kill.

Pause/resume: the provider's relays end first (while the microVM still answers), then
``Sandbox.pause(mode="full")`` snapshots memory and filesystem (sessions survive);
``Sandbox.connect`` resumes. Destroy: ``Sandbox.kill`` (idempotent). Reconcile:
``Sandbox.list(query=SandboxQuery(metadata={"nexus_store": ...}))``.

Reaching E2B: the first call of a provider lists one sandbox with a short ``request_timeout``
(:meth:`E2BProvider._reach`), so a refused key (401/403) or an API that cannot be reached is
one line within :data:`~._cloud.REACH_SECONDS`, naming ``E2B_API_KEY`` or ``E2B_DOMAIN``.
"""

from __future__ import annotations

import inspect
import os
import secrets
import shlex
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ..agent.deploy import ZIPAPP_NAME, zipapp_bytes
from ..config import Settings
from ..egress import by_host_only
from ..errors import (
    ProviderError,
    ProviderUnavailableError,
    SandboxError,
    SandboxStateError,
)
from ..models import AT_CAP, HARD_END, SandboxSpec
from ._cloud import CAP_SLACK, HOME, REACH_SECONDS, CloudProvider, new_socket, one_line
from ._launch import resource_labels, wait_for_ready
from .base import KEEPS_MEMORY, LEAN_TEMPLATES, Capabilities, Handle

#: E2B's code-interpreter template (IPython and the PyData stack): the default environment,
#: as a local sandbox's "datascience" template. ``--template minimal`` gives E2B's "base".
DEFAULT_TEMPLATE = "code-interpreter-v1"
LEAN_TEMPLATE = "base"
#: The agent's zipapp: root's, in a root directory, out of the sandbox user's reach.
AGENT_DIR = "/opt/nexus-agent"
AGENT_PATH = f"{AGENT_DIR}/{ZIPAPP_NAME}"
#: E2B's users: root, and the sandbox user that runs the agent and user code.
ROOT = "root"
USER = "user"
#: Run as root after the upload: the agent's dir and file are root's whatever envd's modes.
SEAL_AGENT = f"chmod 0755 {shlex.quote(AGENT_DIR)} && chmod 0644 {shlex.quote(AGENT_PATH)}"
SEAL_TIMEOUT = 30

#: Seconds E2B keeps the microVM past the agent's deadline (the host reaper and the agent's
#: watchdog act first; E2B's timeout is the last resort).
TIMEOUT_GRACE = 120
#: E2B's longest sandbox timeout (Pro plan; Hobby allows 3600: E2B then refuses the create).
DEFAULT_MAX_TIMEOUT = 24 * 3600
READY_TIMEOUT = 60.0
#: What a pause keeps: memory and filesystem (sessions survive), said explicitly.
PAUSE_MODE = "full"
#: ``Sandbox.create``'s lifecycle with auto-pause: at its timeout E2B pauses the sandbox
#: (memory kept) instead of killing it; no resume on traffic (nexus resumes it, so the hard
#: end and the TTL stay its own).
LIFECYCLE = {"on_timeout": {"action": "pause", "mode": PAUSE_MODE}, "auto_resume": False}
NO_LIFECYCLE = (
    "the installed e2b SDK has no lifecycle option: a sandbox reaching the runtime cap is "
    "ended, not paused (pip install 'nexus-kernel[e2b]' installs one that has it)"
)
#: Largest piece handed to one ``send_stdin`` call.
STDIN_CHUNK = 512 * 1024
STDERR_KEEP = 16 * 1024

MISSING_KEY = (
    "E2B needs an API key: export E2B_API_KEY=... (get one at e2b.dev) "
    "or pass e2b_api_key= to NexusFS"
)
FIX_KEY = "set a valid E2B_API_KEY or pass e2b_api_key= to NexusFS"
FIX_NETWORK = "check the network connection, or E2B_DOMAIN if you use your own E2B deployment"


def _api_key(settings: Settings, options: dict[str, Any]) -> str:
    return options.get("api_key") or settings.e2b_api_key or os.environ.get("E2B_API_KEY", "")


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


def _network(allow: tuple[str, ...]) -> dict[str, Any]:
    """``Sandbox.create``'s ``network`` for an allow-list: E2B's own egress filter (allowed
    names and addresses out, everything else denied). E2B filters by host, not port, and
    reports no denials: ``nexus sandbox events`` has none for E2B sandboxes."""
    if not allow:
        return {}
    names, addresses = by_host_only(allow, "E2B")
    return {"network": {"allow_out": names + addresses, "deny_out": ["0.0.0.0/0"]}}


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


class E2BProvider(CloudProvider):
    """Sandboxes as E2B cloud sandboxes running the agent (see the module doc).

    Options (``provider_options={"e2b": {...}}``): ``api_key`` (else ``e2b_api_key`` /
    ``E2B_API_KEY``), ``domain`` (else ``e2b_domain`` / ``E2B_DOMAIN``: a self-hosted,
    E2B-compatible deployment; the SDK's own ``E2B_API_URL`` is honoured too), ``python`` (in the template, default ``python3``),
    ``max_timeout`` (the plan's runtime cap in seconds, else ``NEXUS_E2B_MAX_MINUTES``, default
    1440 minutes: Pro; Hobby is 60), ``auto_pause`` (pause at the cap and resume on the next
    run, else ``NEXUS_E2B_AUTO_PAUSE``, default on), ``ready_timeout``, ``sdk`` (an object with
    the e2b module's names, for tests).
    """

    name = "e2b"
    service = "E2B"
    capabilities = Capabilities(pause=True, resume=True, network=True, egress_allow=True, gpu=False,
                                snapshots=True, platform_snapshots=True)
    missing_credentials = MISSING_KEY
    agent_dir = AGENT_DIR
    grace = TIMEOUT_GRACE
    max_seconds_option = "max_timeout"
    default_max_seconds = DEFAULT_MAX_TIMEOUT
    too_long = (
        "E2B runs a sandbox at most {minutes} minutes without a pause (the plan's runtime "
        "cap, NEXUS_E2B_MAX_MINUTES: 60 on Hobby, 1440 on Pro); use a shorter ttl_minutes"
    )
    capped = (
        "E2B ends a sandbox after {minutes} minutes of running (the plan's runtime cap; a "
        "pause and resume restarts it)"
    )
    capped_paused = (
        "E2B paused it after {minutes} minutes of running (the plan's runtime cap) and it "
        "could not be resumed"
    )
    ready_timeout = READY_TIMEOUT

    def __init__(self, settings: Settings, **options: Any):
        super().__init__(settings, **options)
        self._reached = False
        #: sandbox id -> the agent's deadline last asked by extend (a resume at the cap
        #: sets E2B's timeout from it).
        self._deadlines: dict[str, float] = {}

    @property
    def at_cap(self) -> str:  # type: ignore[override]
        """"pause" when sandboxes are created with E2B's auto-pause (see the module doc)."""
        wanted = self.options.get("auto_pause")
        if wanted is None:
            wanted = self.settings.e2b_auto_pause
        if not wanted:
            return "end"
        if "lifecycle" not in inspect.signature(self.sdk.Sandbox.create).parameters:
            warnings.warn(NO_LIFECYCLE, RuntimeWarning, stacklevel=2)
            return "end"
        return "pause"

    @classmethod
    def _has_credentials(cls, settings: Settings, options: dict[str, Any]) -> bool:
        return bool(_api_key(settings, options))

    def _plan_seconds(self) -> float:
        return self.settings.e2b_max_minutes * 60

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
        domain = self.options.get("domain") or self.settings.e2b_domain
        if domain:
            params["domain"] = domain
        return params

    def _errors(self, what: str) -> Any:
        """E2B's failures as nexus errors, once the API has been reached."""
        return _sdk_errors(self._reach(), what)

    # ------------------------------------------------------------------ SDK steps

    def _new_sandbox(self, spec: SandboxSpec, now: float) -> tuple[Any, Handle]:
        sdk = self._reach()
        timeout = self.timeout_for(spec.deadline, now)
        template = spec.template_id or self.settings.e2b_template_id or DEFAULT_TEMPLATE
        if template in LEAN_TEMPLATES:
            template = LEAN_TEMPLATE
        at_cap = self.at_cap
        lifecycle = {"lifecycle": LIFECYCLE} if at_cap == "pause" else {}
        with _sdk_errors(sdk, "create the sandbox"):
            sandbox = sdk.Sandbox.create(
                template=template,
                timeout=timeout,
                metadata=resource_labels(spec),
                envs={},
                allow_internet_access=bool(spec.network or spec.allow),
                **_network(spec.allow),
                **lifecycle,
                **self._api(),
            )
        handle = {
            "token": secrets.token_urlsafe(32),
            "sandbox_id": sandbox.sandbox_id,
            "template": template or "",
            "timeout": timeout,
            AT_CAP: at_cap,
        }
        self._remember(sandbox.sandbox_id, sandbox, now + timeout)
        return sandbox, handle

    def _start_agent(self, sandbox: Any, handle: Handle, deadline: float | None) -> None:
        sandbox.files.write(AGENT_PATH, zipapp_bytes(), user=ROOT)
        sandbox.commands.run(SEAL_AGENT, user=ROOT, timeout=SEAL_TIMEOUT)
        # never stdin (envd logs it): a file the boot line opens and deletes first
        token_file = f"{HOME}/.nexus-token-{secrets.token_hex(8)}"
        sandbox.files.write(token_file, handle["token"] + "\n", user=USER)
        handle["socket"] = new_socket()
        command = sandbox.commands.run(
            self.boot_script(deadline, handle["socket"], token_file=token_file),
            background=True, user=USER, timeout=0, retain_output=False,
        )  # fmt: skip
        handle["agent_pid"] = command.pid  # the shell execs into the agent: the same pid
        stderr = bytearray()
        wait_for_ready(
            _stdout_of(command, stderr),
            float(self.options.get("ready_timeout") or self.ready_timeout),
            stop=command.kill,
            detail=lambda: stderr.decode("utf-8", "replace"),
        )
        with suppress(Exception):
            command.disconnect()  # the agent keeps running; we stop receiving its output

    def _attach(self, sandbox_id: str) -> Any:
        """A connected SDK ``Sandbox``; SandboxStateError when it is paused."""
        # Sandbox.connect resumes a paused sandbox: never do that behind a pause.
        info = self.sdk.Sandbox.get_info(sandbox_id, **self._api())
        if _state_name(info.state) == "paused":
            raise SandboxStateError(f"the E2B sandbox {sandbox_id} is paused; resume it first")
        return self.sdk.Sandbox.connect(sandbox_id, **self._api())

    def _open_relay(
        self, sandbox: Any, argv: list[str]
    ) -> tuple[Iterable[bytes], Callable[[bytes], None], Callable[[], None]]:
        """The relay as a root background command (see the module doc)."""
        command = sandbox.commands.run(
            "exec " + shlex.join(argv),
            background=True,
            stdin=True,
            user=ROOT,
            timeout=0,
            retain_output=False,
        )
        return _stdout_of(command, bytearray()), _stdin_writer(command), lambda: _end_command(command)

    def _set_timeout(self, sandbox_id: str, seconds: int) -> None:
        """Bounded by REACH_SECONDS: the refresh runs with every request (SDK default: 60 s
        per attempt, twice)."""
        self.sdk.Sandbox.set_timeout(
            sandbox_id, seconds, request_timeout=REACH_SECONDS / 2, **self._api()
        )

    def _kill(self, sandbox_id: str) -> None:
        """``Sandbox.kill`` (running or paused); nothing when E2B does not know the sandbox."""
        self._deadlines.pop(sandbox_id, None)
        sdk = self._reach()
        with _sdk_errors(sdk, "kill the sandbox"):
            try:
                sdk.Sandbox.kill(sandbox_id, **self._api())
            except sdk.NotFoundException:
                return

    def _labelled(self, store_id: str) -> Iterator[tuple[str, dict[str, str]]]:
        """Running or paused sandboxes whose metadata says ``nexus_store=store_id``."""
        sdk = self.sdk
        pages = sdk.Sandbox.list(
            query=sdk.SandboxQuery(metadata={"nexus_store": store_id}), **self._api()
        )
        while pages.has_next:
            for info in pages.next_items():
                yield info.sandbox_id, info.metadata or {}

    # ------------------------------------------------------------------ snapshots

    def create(self, spec: SandboxSpec) -> Handle:
        """As :meth:`CloudProvider.create`; a fork (``spec.origin``) is made by E2B from the
        source's memory: ``Sandbox.fork`` (the source now) or ``Sandbox.create`` from a
        snapshot. Its agent runs already: same socket, pid and token as the source's."""
        if spec.origin is None:
            return super().create(spec)
        source, snapshot = spec.origin["handle"], spec.origin.get("snapshot")
        sdk, now = self._reach(), time.time()
        timeout = self.timeout_for(spec.deadline, now)
        if snapshot is None:
            self.close_relays(source)  # E2B pauses the source for the checkpoint
            with _sdk_errors(sdk, "fork the sandbox"):
                [sandbox] = sdk.Sandbox.fork(source["sandbox_id"], timeout=timeout, count=1,
                                             **self._api())
            if isinstance(sandbox, Exception):
                raise ProviderError(f"E2B could not fork the sandbox: {one_line(sandbox)}")
        else:
            at_cap = self.at_cap
            with _sdk_errors(sdk, "create the sandbox from the snapshot"):
                sandbox = sdk.Sandbox.create(
                    template=snapshot, timeout=timeout, metadata=resource_labels(spec), envs={},
                    allow_internet_access=bool(spec.network or spec.allow), **_network(spec.allow),
                    **({"lifecycle": LIFECYCLE} if at_cap == "pause" else {}), **self._api())
        handle = {key: source[key] for key in ("token", "socket", "agent_pid", "template")}
        handle.update({"sandbox_id": sandbox.sandbox_id, "timeout": timeout, AT_CAP: self.at_cap,
                       HARD_END: round(now + self._max_seconds, 3)})
        self._remember(sandbox.sandbox_id, sandbox, now + timeout)
        return handle

    def snapshot(self, handle: Handle) -> dict[str, Any]:
        """``Sandbox.create_snapshot``: memory and files, kept by E2B after the sandbox ends
        until deleted (no name is passed: E2B's snapshot names are the team's, shared
        across users)."""
        sdk = self._reach()
        self.close_relays(handle)  # E2B pauses the sandbox while it snapshots
        with _sdk_errors(sdk, "snapshot the sandbox"):
            info = sdk.Sandbox.create_snapshot(handle["sandbox_id"], **self._api())
        return {"snapshot_id": str(info.snapshot_id), "keeps": KEEPS_MEMORY, "expires": None}

    def delete_snapshot(self, snapshot_id: str) -> bool:
        """``Sandbox.delete_snapshot``; False when E2B no longer has it."""
        sdk = self._reach()
        with _sdk_errors(sdk, "delete the snapshot"):
            return bool(sdk.Sandbox.delete_snapshot(snapshot_id, **self._api()))

    # ------------------------------------------------------------------ lifecycle

    def pause(self, handle: Handle) -> None:
        """Snapshot memory and filesystem and stop the microVM (``Sandbox.pause`` with
        ``mode="full"``, not the API's default, which may change). The relays this provider
        opened end first. Idempotent: pausing a paused sandbox is a no-op."""
        sdk = self._reach()
        self.close_relays(handle)
        with _sdk_errors(sdk, "pause the sandbox"):
            sdk.Sandbox.pause(handle["sandbox_id"], mode=PAUSE_MODE, **self._api())
        self._forget(handle)
        self._deadlines.pop(handle["sandbox_id"], None)

    def resume(self, handle: Handle) -> None:
        """Restore the paused microVM (``Sandbox.connect`` resumes); the agent and its
        sessions continue where they were. Idempotent on a running sandbox."""
        sdk = self._reach()
        with _sdk_errors(sdk, "resume the sandbox"):
            self._resumed(handle, None)

    def extend(self, handle: Handle, deadline: float) -> None:
        """As :meth:`CloudProvider.extend`; the deadline is kept for a resume at the cap."""
        self._deadlines[handle.get("sandbox_id")] = deadline
        super().extend(handle, deadline)

    def _sandbox(self, handle: Handle) -> Any:
        """The SDK object, as :meth:`CloudProvider._sandbox`; a sandbox at its hard end is
        looked up again: E2B paused it there (auto-pause), so it is resumed, or it still
        runs. A user's pause never gets here (the manager streams to active sandboxes)."""
        end = handle.get(HARD_END)
        if end is None or time.time() < end - CAP_SLACK:
            return super()._sandbox(handle)
        self._forget(handle)  # a cached object may be that of the paused microVM
        sandbox_id = handle["sandbox_id"]
        info = self.sdk.Sandbox.get_info(sandbox_id, **self._api())
        if _state_name(info.state) == "paused":
            return self._resumed(handle, self._deadlines.get(sandbox_id))
        sandbox = self.sdk.Sandbox.connect(sandbox_id, **self._api())
        self._remember(sandbox_id, sandbox)
        return sandbox

    def _resumed(self, handle: Handle, deadline: float | None) -> Any:
        """``Sandbox.connect`` with a timeout (it resumes a paused sandbox); the hard end
        restarts (a resume restarts the plan's window). The timeout follows ``deadline`` when
        known, else the one set at create."""
        now = time.time()
        end = now + self._max_seconds
        if deadline is None:
            timeout = min(int(handle.get("timeout") or DEFAULT_MAX_TIMEOUT), self._max_seconds)
        else:
            timeout = self.timeout_for(deadline, now, end)
        sandbox = self.sdk.Sandbox.connect(handle["sandbox_id"], timeout=timeout, **self._api())
        handle[HARD_END] = round(end, 3)
        self._remember(sandbox.sandbox_id, sandbox, now + timeout)
        return sandbox

    def alive(self, handle: Handle) -> bool:
        """True while E2B knows the sandbox as running or paused."""
        sdk = self._reach()
        with _sdk_errors(sdk, "look up the sandbox"):
            try:
                info = sdk.Sandbox.get_info(handle["sandbox_id"], **self._api())
            except sdk.NotFoundException:
                return False
        return _state_name(info.state) in ("running", "paused")


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
