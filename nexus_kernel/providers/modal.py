"""The modal provider: one Modal Sandbox (a gVisor container) per nexus sandbox, on the
``modal`` SDK (``pip install 'nexus-kernel[modal]'``). The SDK is imported lazily, here only.

The common shape (TTL check, agent start and cleanup, relay stream, extend, destroy,
reconcile listing) is :class:`~nexus_kernel.providers._cloud.CloudProvider`'s; this module
says how Modal's SDK does each step.

Start: ``Sandbox.create`` under the app ``nexus-kernel`` (``App.lookup(create_if_missing=
True)``) with an image that has python3 and node (default: ``debian_slim`` + ``nodejs`` + the
data-science packages of ``DATASCIENCE_PACKAGES``, "minimal" without them;
``NEXUS_MODAL_IMAGE`` / ``template_id`` pick a registry image, or an ``im-…`` image id), the
agent file added with ``Image.add_local_file`` (mounted at start, no rebuild), tags carrying
our ids, ``block_network`` unless network was asked, and cpu / memory as (request, limit)
pairs from the limits (``gpu`` from the provider option). The entrypoint is a shell line that
prints its pid and execs into the agent, so the sandbox lives exactly as long as the agent
(its deadline watchdog ends the sandbox) and that pid is the agent's (``agent_pid`` in the
handle: whether Modal's entrypoint is the container's pid 1 is not documented, so it is not
assumed). The agent listens on an abstract socket named per sandbox and reads its token
from the sandbox's stdin: Modal carries it through its API (``SandboxStdinWrite``) to the
entrypoint; the documented outputs of a sandbox (logs) are its stdout and stderr, and there
is no more private documented channel (secrets are environment variables, files go
through the same API). The token write waits for Modal to give the sandbox a machine, with
no deadline of its own: it shares ``ready_timeout`` with the READY wait (:func:`_within`),
and then fails with one line.

Stream: every ``connect`` runs the agent's ``relay --peer-pid <agent>`` with
``Sandbox.exec(text=False)`` (in the same container, so the same pid namespace); its
``stdout`` iterator yields bytes and ``stdin.write`` + ``drain`` take bytes.

Modal runs the entrypoint and every exec as root in the container: sandbox code is root
there and can reach the agent, read its memory and kill it. The abstract socket and
``--peer-pid`` keep the channel from being taken by renaming a file or binding a name; the
host never trusts the agent beyond the stream's bounds and the ``auth`` handshake, and
Modal's timeouts end the sandbox from outside.

TTL: Modal's ``timeout`` (a hard lifetime, at most 24 h, fixed at create) is set to that
maximum; ``idle_timeout`` (restarted by every exec and stdin write) is the TTL plus grace. The
agent's watchdog ends the sandbox at its deadline, which the manager moves with every run;
neither timeout can be moved on a running sandbox, so ``extend`` has nothing to call.

Pause/resume: not offered (:class:`UnsupportedOperationError`). The stable SDK has no pause
for a running sandbox; ``_experimental_pause`` exists only for ``_experimental_persistent``
sandboxes, which resume from a filesystem snapshot in a new container (every process, so
every session, is lost) and reject tags; a memory snapshot restores into a new sandbox id,
which the stored handle cannot follow: it is a fork.

Snapshots and forks (``Capabilities.platform_snapshots``, as E2B's): a sandbox is created
with ``_experimental_enable_snapshot`` (Modal's memory snapshots, an early preview; Modal
documents no cost for it, but not with a GPU, which they do not support; provider option
``memory_snapshots=False`` turns it off), recorded in the handle (``snapshot_kind``).
``snapshot`` is ``Sandbox._experimental_snapshot`` (memory and files, the provider's relays
ended first: a copy of one would hold a connection to every fork's agent); Modal keeps it
7 days from then and has no call to delete it. A fork is
``Sandbox._experimental_from_snapshot``: a new sandbox whose processes run on where they
were, the agent included (its socket, pid and token are the source's: the manager rotates
the token at once, then sets the fork's deadline), tagged with the fork's own ids; Modal
restores no snapshot in place. A fork of the sandbox as it is now starts from a snapshot
taken for it (:meth:`ModalProvider.fork_point`). A sandbox made without memory snapshots
gets ``snapshot_filesystem`` instead: an image (files only; a fork boots a new agent on it,
interpreters restart), kept until deleted (``modal.experimental.image_delete``).

Reaching Modal: the SDK connects when a client is made (``Client.from_credentials``) and, when
nothing answers, retries for about a minute. The provider makes its one client in a helper
thread and waits at most :data:`~._cloud.REACH_SECONDS` for it and for ``hello`` (which checks
the token), so a refused token or an unreachable API is one line naming what to fix.
"""

from __future__ import annotations

import importlib
import os
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

from ..agent.deploy import ZIPAPP_NAME, zipapp_file
from ..config import Settings
from ..egress import by_host_only
from ..errors import (
    AgentError,
    MissingCredentialsError,
    ProviderError,
    ProviderUnavailableError,
    SandboxError,
    SandboxStateError,
    UnsupportedOperationError,
)
from ..models import AT_CAP, HARD_END, SandboxSpec
from ._cloud import REACH_SECONDS, CloudProvider, new_socket, one_line
from ._launch import (
    announced_pid,
    import_sdk,
    resource_labels,
    wait_for_ready,
)
from .base import (
    DATASCIENCE_PACKAGES,
    KEEPS_FILES,
    KEEPS_MEMORY,
    LEAN_TEMPLATES,
    Capabilities,
    Handle,
)

APP_NAME = "nexus-kernel"
AGENT_DIR = "/opt/nexus-agent"
AGENT_PATH = f"{AGENT_DIR}/{ZIPAPP_NAME}"
PYTHON_VERSION = "3.12"

#: Modal's longest sandbox lifetime (``timeout``), seconds.
MAX_LIFETIME = 24 * 3600
#: Seconds of idleness past the agent's deadline before Modal ends the sandbox itself.
IDLE_GRACE = 120
READY_TIMEOUT = 300.0  # a first create may build the default image
#: Largest piece written before a ``drain`` (the SDK refuses buffers over 2 MiB).
STDIN_CHUNK = 1024 * 1024
#: Seconds Modal keeps a memory snapshot, from its creation (it cannot be extended).
MEMORY_SNAPSHOT_SECONDS = 7 * 24 * 3600
#: Id prefix of Modal's memory snapshots (a filesystem snapshot is an image: "im-").
MEMORY_SNAPSHOT_PREFIX = "sn-"

MISSING_TOKEN = (
    "Modal needs a token: run 'modal token new' or export MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
)
FIX_NETWORK = "check the network connection, and MODAL_SERVER_URL if you set it"
FIX_ENV_TOKEN = (
    "export a valid MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or unset them and run 'modal token new'"
)
NOT_SCHEDULED = (
    "Modal did not start the sandbox within {seconds:g} s (no machine free for its image, "
    "cpu, memory or gpu): try again later, ask for fewer resources, or raise ready_timeout"
)
NO_PAUSE = (
    "the modal provider cannot pause or resume sandboxes (Modal has no pause for a running "
    "sandbox that keeps its processes); stop it and create a new one instead"
)
NO_DELETE = (
    "Modal has no call to delete a memory snapshot: {snapshot_id} expires at Modal 7 days "
    "after it was taken (`expires` in nexus sandbox snapshots)"
)


def _config(sdk: Any) -> Any:
    """The SDK's settings (``modal.config.config``: environment, then ~/.modal.toml)."""
    module = getattr(sdk, "config", None) or importlib.import_module("modal.config")
    return getattr(module, "config", module)


def _token(options: dict[str, Any]) -> tuple[str, str, str] | None:
    """(token id, token secret, where they were found): the options, the environment or
    ~/.modal.toml; None when there is no token."""
    if options.get("token_id") and options.get("token_secret"):
        return options["token_id"], options["token_secret"], "options"
    token_id, secret = os.environ.get("MODAL_TOKEN_ID"), os.environ.get("MODAL_TOKEN_SECRET")
    if token_id and secret:
        return token_id, secret, "environment"
    config = _config(import_sdk("modal", "modal", options))
    try:
        token_id, secret = config.get("token_id"), config.get("token_secret")
    except Exception:  # an unreadable ~/.modal.toml: treat as no token
        return None
    return (token_id, secret, "file") if token_id and secret else None


def _refused(exc: Exception, source: str) -> str:
    """One line for a token Modal refused, naming where it came from and the fix."""
    if source == "options":
        where = "the token_id/token_secret provider options"
        fix = "pass a valid token_id and token_secret"
    elif source == "environment":
        where, fix = "MODAL_TOKEN_ID/MODAL_TOKEN_SECRET", FIX_ENV_TOKEN
    else:
        where = os.environ.get("MODAL_CONFIG_PATH") or "~/.modal.toml"
        fix = "run 'modal token new'"
    return f"Modal refused the token from {where} ({one_line(exc)}): {fix}"


def _unreachable(sdk: Any, why: str) -> str:
    """One line for Modal's API not answering, naming its (first) host."""
    url = str(_config(sdk).get("server_url") or "").split(",")[0].strip()
    host = urllib.parse.urlparse(url).hostname or "api.modal.com"
    return f"Modal's API at {host} could not be reached ({why}): {FIX_NETWORK}"


def _network(allow: tuple[str, ...]) -> dict[str, Any]:
    """``Sandbox.create``'s outbound allow-lists for an allow-list (Modal 1.x: names in
    ``outbound_domain_allowlist``, addresses in ``outbound_cidr_allowlist``). Modal filters
    by host, not port, and reports no denials: ``nexus sandbox events`` has none for Modal
    sandboxes."""
    if not allow:
        return {}
    names, addresses = by_host_only(allow, "Modal")
    options: dict[str, Any] = {}
    if names:
        options["outbound_domain_allowlist"] = names
    if addresses:
        options["outbound_cidr_allowlist"] = [f"{a}/{128 if ':' in a else 32}" for a in addresses]
    return options


@contextmanager
def _sdk_errors(sdk: Any, what: str):
    """Map Modal SDK failures to nexus errors with one-line messages."""
    try:
        yield
    except SandboxError:
        raise
    except sdk.exception.AuthError as exc:  # the token was accepted before (see _client)
        raise ProviderUnavailableError(
            f"Modal refused the token ({one_line(exc)}): run 'modal token new' or "
            "export a valid MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
        ) from exc
    except sdk.exception.NotFoundError as exc:
        raise SandboxStateError(
            f"the Modal sandbox is gone (stopped or expired): {one_line(exc)}"
        ) from exc
    except sdk.exception.ConnectionError as exc:
        raise ProviderUnavailableError(_unreachable(sdk, one_line(exc))) from exc
    except Exception as exc:
        raise ProviderError(f"Modal failed to {what}: {one_line(exc)}") from exc


class _Opening:
    """One attempt to open a Modal client, in a daemon thread that ends with it: callers
    wait for it as long as they choose, and a later caller takes over the same attempt."""

    def __init__(self, open_client: Callable[[], Any]):
        self.client: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(open_client,), name="nexus-modal-connect", daemon=True
        )
        thread.start()

    def _run(self, open_client: Callable[[], Any]) -> None:
        try:
            self.client = open_client()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


def _open_client(sdk: Any, token_id: str, token_secret: str) -> Any:
    """A client the server has greeted: ``hello`` raises AuthError for a refused token."""
    client = sdk.Client.from_credentials(token_id, token_secret)
    try:
        client.hello()
    except BaseException:
        client.close()
        raise
    return client


class ModalProvider(CloudProvider):
    """Sandboxes as Modal Sandboxes running the agent (see the module doc).

    Options (``provider_options={"modal": {...}}``): ``app_name`` (default
    ``nexus-kernel``), ``token_id`` / ``token_secret`` (else the environment or
    ~/.modal.toml), ``gpu`` (e.g. ``"T4"``), ``python`` (in the image, default ``python3``),
    ``max_lifetime`` (seconds, default 86400), ``memory_snapshots`` (default True: sandboxes
    are made for memory snapshots, except with a GPU), ``ready_timeout``, ``sdk`` (tests).
    """

    name = "modal"
    service = "Modal"
    capabilities = Capabilities(pause=False, resume=False, network=True, egress_allow=True, gpu=True,
                                snapshots=True, platform_snapshots=True)
    missing_credentials = MISSING_TOKEN
    agent_dir = AGENT_DIR
    grace = IDLE_GRACE
    max_seconds_option = "max_lifetime"
    default_max_seconds = MAX_LIFETIME
    too_long = (
        "a Modal sandbox lives at most {minutes} minutes after its start, whatever its TTL; "
        "use a shorter ttl_minutes"
    )
    capped = "Modal ends a sandbox {minutes} minutes after its start, whatever its TTL"
    ready_timeout = READY_TIMEOUT

    def __init__(self, settings: Settings, **options: Any):
        super().__init__(settings, **options)
        self._app_obj: Any = None
        self._client_obj: Any = None
        self._opening: _Opening | None = None

    @classmethod
    def _has_credentials(cls, settings: Settings, options: dict[str, Any]) -> bool:
        """A token is passed as options, set in the environment or in ~/.modal.toml (the
        SDK is imported only to read that file)."""
        return _token(options) is not None

    def _client(self) -> Any:
        """The provider's Modal client (token from the options, the environment or
        ~/.modal.toml), greeted by the server; waits at most REACH_SECONDS for it."""
        if self._client_obj is not None:
            return self._client_obj
        sdk, token = self.sdk, _token(self.options)
        if token is None:
            raise MissingCredentialsError(MISSING_TOKEN)
        with self._lock:
            if self._client_obj is not None:
                return self._client_obj
            if self._opening is None or self._opening.error is not None:
                self._opening = _Opening(lambda: _open_client(sdk, token[0], token[1]))
            opening = self._opening
        if not opening.done.wait(REACH_SECONDS):
            # the SDK goes on retrying in the thread, up to about a minute; the next call
            # waits for that same attempt
            raise ProviderUnavailableError(
                _unreachable(sdk, f"no answer within {REACH_SECONDS:g} s")
            )
        if isinstance(opening.error, sdk.exception.AuthError):
            raise ProviderUnavailableError(_refused(opening.error, token[2])) from opening.error
        if opening.error is not None:
            raise opening.error
        with self._lock:
            self._client_obj, self._opening = opening.client, None
        return opening.client

    def _app(self) -> Any:
        if self._app_obj is None:
            name = self.options.get("app_name") or APP_NAME
            self._app_obj = self.sdk.App.lookup(name, create_if_missing=True, client=self._client())
        return self._app_obj

    def _image(self, spec: SandboxSpec) -> Any:
        """The sandbox image with the agent file added (mounted at start)."""
        image_cls = self.sdk.Image
        name = spec.template_id or self.settings.modal_image
        if name and name.startswith("im-"):
            base = image_cls.from_id(name, client=self._client())
        elif name and name not in LEAN_TEMPLATES:
            base = image_cls.from_registry(name)
        else:  # no name: the default environment; "minimal": the lean image
            base = image_cls.debian_slim(python_version=PYTHON_VERSION).apt_install("nodejs")
            if not name:
                base = base.pip_install(*DATASCIENCE_PACKAGES)
        # the zipapp as a local file, content-addressed (a clear error when the agent is missing)
        return base.add_local_file(zipapp_file(self.settings.home / "agent-cache"), AGENT_PATH)

    def _resources(self, spec: SandboxSpec) -> dict[str, Any]:
        limits = spec.limits
        resources: dict[str, Any] = {"memory": (limits.memory_mb, limits.memory_mb)}
        if limits.cpus and limits.cpus > 0:
            resources["cpu"] = (float(limits.cpus), float(limits.cpus))
        gpu = self.options.get("gpu") or getattr(spec, "gpu", None)
        if gpu:
            resources["gpu"] = gpu
        return resources

    def _errors(self, what: str) -> Any:
        return _sdk_errors(self.sdk, what)

    def _snapshot_kind(self, resources: dict[str, Any]) -> str:
        """"memory" when the sandbox is made for memory snapshots (the option, and no GPU:
        Modal's memory snapshots do not support one), else "files"."""
        wanted = self.options.get("memory_snapshots")
        return "memory" if (wanted is None or wanted) and not resources.get("gpu") else "files"

    # ------------------------------------------------------------------ SDK steps

    def _new_sandbox(self, spec: SandboxSpec, now: float) -> tuple[Any, Handle]:
        """The sandbox with the agent as its entrypoint (it lives as long as the agent)."""
        socket = new_socket()
        resources = self._resources(spec)
        kind = self._snapshot_kind(resources)
        with _sdk_errors(self.sdk, "create the sandbox"):
            sandbox = self.sdk.Sandbox.create(
                "/bin/sh", "-c", self.boot_script(spec.deadline, socket, announce_pid=True),
                app=self._app(),
                image=self._image(spec),
                tags=resource_labels(spec),
                timeout=self._max_seconds,
                idle_timeout=self.timeout_for(spec.deadline, now),
                block_network=not (spec.network or spec.allow),
                **_network(spec.allow),
                client=self._client(),
                _experimental_enable_snapshot=kind == "memory",
                **resources,
            )  # fmt: skip
        handle = {
            "token": secrets.token_urlsafe(32),
            "sandbox_id": sandbox.object_id,
            "app": self.options.get("app_name") or APP_NAME,
            "socket": socket,
            "snapshot_kind": kind,
        }
        self._remember(sandbox.object_id, sandbox)
        return sandbox, handle

    def _start_agent(self, sandbox: Any, handle: Handle, deadline: float | None) -> None:
        """Write the token, then wait for READY: one budget (``ready_timeout``) for both, as
        the write waits for Modal to schedule the sandbox, with no deadline of its own. The
        agent's pid is the one its boot line printed before it (no user code ran yet)."""
        budget = float(self.options.get("ready_timeout") or self.ready_timeout)
        start = time.monotonic()

        def hand_over() -> None:
            sandbox.stdin.write((handle["token"] + "\n").encode())
            sandbox.stdin.drain()

        # ended before reading its token: the READY wait reports its exit, not the write
        with suppress(self.sdk.exception.SandboxTerminatedError):
            _within(hand_over, budget, NOT_SCHEDULED.format(seconds=budget))
        before = wait_for_ready(
            iter(sandbox.stdout),
            max(1.0, budget - (time.monotonic() - start)),
            stop=sandbox.terminate,
            detail=lambda: _read_briefly(sandbox.stderr),
        )
        pid = announced_pid(before)
        if pid is None:
            raise AgentError("the sandbox agent started without its boot line's PID line")
        handle["agent_pid"] = pid

    def _attach(self, sandbox_id: str) -> Any:
        return self.sdk.Sandbox.from_id(sandbox_id, client=self._client())

    def _open_relay(
        self, sandbox: Any, argv: list[str]
    ) -> tuple[Iterable[bytes], Callable[[bytes], None], Callable[[], None]]:
        """``Sandbox.exec`` of the relay, bytes both ways."""
        process = sandbox.exec(*argv, text=False)
        return iter(process.stdout), _stdin_writer(process), lambda: _end_exec(process)

    def _set_timeout(self, sandbox_id: str, seconds: int) -> None:
        """Nothing to call: Modal fixes both timeouts at create (see the module doc)."""

    def _kill(self, sandbox_id: str) -> None:
        """``Sandbox.terminate``; nothing when Modal does not know the sandbox."""
        sdk = self.sdk
        with _sdk_errors(sdk, "terminate the sandbox"):
            try:
                sandbox = sdk.Sandbox.from_id(sandbox_id, client=self._client())
            except sdk.exception.NotFoundError:
                return
            sandbox.terminate()

    def _labelled(self, store_id: str) -> Iterator[tuple[str, dict[str, str]]]:
        """Running sandboxes of our app tagged ``nexus_store=store_id``."""
        found = self.sdk.Sandbox.list(
            app_id=self._app().app_id, tags={"nexus_store": store_id}, client=self._client()
        )
        for sandbox in found:
            yield sandbox.object_id, sandbox.get_tags()

    # ------------------------------------------------------------------ snapshots

    def create(self, spec: SandboxSpec) -> Handle:
        """As :meth:`CloudProvider.create`; a fork (``spec.origin``) starts from a snapshot:
        a memory one restores into a new sandbox whose agent runs already (the source's
        socket, pid and token), an image (files only) boots a new agent on it."""
        if spec.origin is None:
            return super().create(spec)
        source, snapshot_id = spec.origin["handle"], spec.origin["snapshot"]
        if not snapshot_id.startswith(MEMORY_SNAPSHOT_PREFIX):
            return super().create(replace(spec, template_id=snapshot_id, origin=None))
        sdk = self.sdk
        with _sdk_errors(sdk, "restore the memory snapshot"):
            snapshot = sdk.SandboxSnapshot.from_id(snapshot_id, client=self._client())
            sandbox = sdk.Sandbox._experimental_from_snapshot(snapshot, client=self._client())
        handle = {key: source[key] for key in ("token", "socket", "agent_pid", "app", "snapshot_kind")}
        # the lifetime Modal counts for a restored sandbox is not documented: the source's
        # hard end is the earliest it can be
        handle.update({"sandbox_id": sandbox.object_id, AT_CAP: self.at_cap,
                       HARD_END: source.get(HARD_END) or round(time.time() + self._max_seconds, 3)})
        self._remember(sandbox.object_id, sandbox)
        try:
            with _sdk_errors(sdk, "tag the forked sandbox"):
                sandbox.set_tags(resource_labels(spec))  # its own ids, not the source's
        except BaseException:
            with suppress(Exception):  # keep the original error
                self.destroy(handle)
            raise
        return handle

    def snapshot(self, handle: Handle) -> dict[str, Any]:
        """A memory snapshot where the sandbox was made for them, else a filesystem one
        kept until deleted (see the module doc)."""
        return self._snapshot(handle, ttl=None)

    def fork_point(self, handle: Handle) -> dict[str, Any]:
        """A snapshot for forks of the sandbox as it is now (Modal has no live fork); a
        filesystem one is kept as long as a fork may live."""
        return self._snapshot(handle, ttl=self._max_seconds)

    def _snapshot(self, handle: Handle, ttl: int | None) -> dict[str, Any]:
        sdk, sandbox, now = self.sdk, self._sandbox(handle), time.time()
        if handle.get("snapshot_kind") == "memory":
            self.close_relays(handle)  # a relay copied into the snapshot would outlive it
            with _sdk_errors(sdk, "snapshot the sandbox's memory"):
                snapshot_id = sandbox._experimental_snapshot().object_id
            return {"snapshot_id": snapshot_id, "keeps": KEEPS_MEMORY,
                    "expires": round(now + MEMORY_SNAPSHOT_SECONDS, 3)}
        with _sdk_errors(sdk, "snapshot the sandbox's files"):
            image = sandbox.snapshot_filesystem(ttl=ttl)
        return {"snapshot_id": image.object_id, "keeps": KEEPS_FILES,
                "expires": None if ttl is None else round(now + ttl, 3)}

    def delete_snapshot(self, snapshot_id: str) -> bool:
        """A filesystem snapshot: ``modal.experimental.image_delete``; False when Modal
        no longer has it. A memory snapshot cannot be deleted (it expires at Modal)."""
        if snapshot_id.startswith(MEMORY_SNAPSHOT_PREFIX):
            raise UnsupportedOperationError(NO_DELETE.format(snapshot_id=snapshot_id))
        sdk = self.sdk
        experimental = getattr(sdk, "experimental", None) or importlib.import_module(
            "modal.experimental")
        with _sdk_errors(sdk, "delete the snapshot"):
            try:
                experimental.image_delete(snapshot_id, client=self._client())
            except sdk.exception.NotFoundError:
                return False
        return True

    # ------------------------------------------------------------------ lifecycle

    def pause(self, handle: Handle) -> None:
        """Not offered by Modal for a running sandbox (see the module doc)."""
        raise UnsupportedOperationError(NO_PAUSE)

    def resume(self, handle: Handle) -> None:
        """Not offered by Modal (see the module doc)."""
        raise UnsupportedOperationError(NO_PAUSE)

    def alive(self, handle: Handle) -> bool:
        """True while the sandbox has not finished (``poll()`` is None)."""
        sdk = self.sdk
        with _sdk_errors(sdk, "look up the sandbox"):
            try:
                sandbox = sdk.Sandbox.from_id(handle["sandbox_id"], client=self._client())
            except sdk.exception.NotFoundError:
                return False
            return sandbox.poll() is None


def _stdin_writer(process: Any):
    def write(data: bytes) -> None:
        for start in range(0, len(data), STDIN_CHUNK):
            process.stdin.write(data[start : start + STDIN_CHUNK])
            process.stdin.drain()

    return write


def _end_exec(process: Any) -> None:
    """End of input for the relay: it closes its agent connection and exits (sessions
    survive). Modal has no kill for an exec'd process."""
    process.stdin.write_eof()
    process.stdin.drain()


def _within(call: Callable[[], None], seconds: float, late: str) -> None:
    """``call()`` in a helper thread, waited for at most ``seconds``: its error is raised
    here; ProviderUnavailableError(``late``) when it has not returned in time (the thread
    is left to the SDK)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="nexus-modal-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ProviderUnavailableError(late)
    if errors:
        raise errors[0]


def _read_briefly(stream: Any, seconds: float = 5.0) -> str:
    """What a finished process left on ``stream`` (bounded wait; '' when none)."""
    result: list[str] = []

    def read() -> None:
        with suppress(Exception):
            data = stream.read()
            result.append(data.decode("utf-8", "replace") if isinstance(data, bytes) else data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    return result[0] if result else ""
