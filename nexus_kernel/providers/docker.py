"""The docker provider: one hardened container per sandbox, on docker-py.

The container's long-lived process is the agent, as its pid 1 (it reaps every orphan, and
sandbox code cannot SIGKILL a namespace's init: ``kill -9 -1`` spares it), so the container
ends when the agent ends: the agent's deadline watchdog enforces the TTL inside the container
even when no client is alive, and ``auto_remove`` deletes it then.

Hardening applied to every container (checked by ``tests/test_docker_provider.py``):
no network unless asked (an allow-list: ``network none`` plus the host-side egress proxy of
:mod:`.docker_egress`), every capability dropped, ``no-new-privileges``, pids / memory
(swap equal) / CPU / open-files limits, a read-only root with tmpfs ``/tmp``, ``/home/user``
(the working directory) and ``/dev/shm`` (each ``scratch_mb`` with an inode cap: their
pages count against the memory cap), a host uid of the sandbox's own (below), no host mounts
(only the agent's read-only volume) and no docker socket, plus labels ``nexus.sandbox_id`` /
``nexus.owner`` / ``nexus.store`` / ``nexus.expires_at`` for reconcile.

The engine's OCI runtime is runc unless ``NEXUS_DOCKER_RUNTIME`` names another one the engine
has registered, e.g. gVisor's ``runsc`` (see :mod:`.docker_runtime`); the hardening is the
same under every runtime, and the handle records the one used (``runtime``).

Any image with python3 >= 3.8 is a template: the agent is not in the image but in a
read-only docker volume per agent version, mounted at AGENT_DIR (see :mod:`.docker_agent`).
The image's entrypoint is replaced by the agent; an image without python3 fails create in
one line. The default image (``nexus-sandbox:latest``) is only the default environment. A
``template_id`` naming a docker template (``nexus template create NAME --provider docker``,
:mod:`.docker_template`) runs that template's image.

One host identity per sandbox: each container runs as a uid (and gid) U of its own, and its
relays as U+1, a pair from ``[UID_BASE, UID_BASE + UID_COUNT)``: reserved for nexus, beside
the local provider's range (``providers/uids.py``), no account's. So kernel per-uid quotas
(inotify instances, keys, ``RLIMIT_NPROC``), keyrings and ptrace-by-uid never cross
sandboxes or reach a real account. The pair lives in the engine, so a remote engine works
too: the container's label ``nexus.uid``, picked at random, and checked after create: a
creator that then sees another container with its uid removes its own and picks again,
among the pairs no container of the engine is labelled with (of two racing creates at most
one keeps the uid). No /etc/passwd entry names U (the root is the image's, read-only): HOME,
USER and LOGNAME are set in the environment (``whoami`` finds no name).

The agent's token never touches the image, the container config or any file: the agent
(the container's command) reads it as one line from its stdin before any user code runs;
the host writes it over a ``docker attach`` stream opened before start, and reads the
agent's ``READY`` line on the same stream.

The agent listens on the abstract unix socket SOCKET (in the container's network namespace):
no file sandbox code could rename, replace or point elsewhere, and bound before any user
code runs, so no one else can hold the name. Where this process may join the container's
network namespace (root, a local engine, runc), the stream is a unix socket it connects there
itself, to a listener that must be the container's init (:mod:`.docker_direct`: no exec, no
engine call, no docker SDK). Elsewhere it is a ``docker exec -i`` of the agent's ``relay``
(it works against remote engines and gVisor too), which talks only to a socket whose listener
is pid 1, the agent (SO_PEERCRED), run as the sandbox's uid + 1: another uid, so sandbox code
can neither kill it nor read its memory. Each stream then authenticates the agent (the
``auth`` challenge) before anything is sent. :class:`DockerStreamChannel` removes Docker's
stream framing.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import time
from contextlib import contextmanager, suppress
from typing import Any

from ..config import Settings
from ..errors import (
    AgentError,
    ProviderError,
    ProviderUnavailableError,
    SandboxStateError,
)
from ..models import Limits, SandboxSpec
from . import docker_agent, docker_direct, docker_egress, seccomp
from ._launch import (
    agent_command,
    import_sdk,
    relay_args,
    resource_labels,
    serve_args,
    wait_for_ready,
)
from .base import (
    OPEN_FILES,
    SCRATCH_INODES_PER_MB,
    Capabilities,
    Handle,
    Provider,
    scratch_mb,
)
from .cgroups import LEFTOVER_GRACE_SECONDS
from .docker_agent import AGENT_DIR, agent_mount, ensure_agent_volume, remove_old_volumes
from .docker_runtime import (
    GVISOR_ENDED,
    check_runtime,
    engine_runtimes,
    host_pids,
    is_gvisor,
    pick_runtime,
)
from .docker_template import remove_build_leftovers
from .docker_template import resolve as template_image

#: The agent's abstract unix socket, and its pid (the container's init).
SOCKET = "@nexus-agent"
AGENT_PID = 1
HOME = "/home/user"
PYTHON = "python3"
#: The host uids of docker sandboxes (see the module doc): pairs U (even offset: the sandbox's
#: uid and gid) and U+1 (its relays'). Disjoint from ``uids.py``'s local range.
UID_BASE = 2_000_100_000
UID_COUNT = 65_536
UID_LABEL = "nexus.uid"
#: Creates that lost their uid to a racing create and picked again, before giving up.
UID_ATTEMPTS = 8
#: The sandbox's environment: no /etc/passwd entry names its uid (Docker would set HOME=/).
SANDBOX_ENV = {"HOME": HOME, "USER": "user", "LOGNAME": "user"}
#: The relay of each stream runs as the sandbox's uid + 1, so sandbox code cannot kill it
#: (``kill -9 -1``) or read its memory (requests carry the user's code and files).
RELAY_ENV = {"HOME": "/", "USER": "relay", "LOGNAME": "relay"}
#: The relay of a container made before sandboxes had uids of their own (no ``uid`` in the
#: handle; they ran as 1000:1000), until its TTL ends it.
LEGACY_RELAY_USER = "1001:1000"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"

#: Seconds to wait for the agent's READY line after the container starts.
READY_TIMEOUT = 60.0
#: Seconds the docker-py client waits on one API call.
API_TIMEOUT = 60
#: Container states in which the sandbox still exists and can come back.
ALIVE_STATES = frozenset({"created", "running", "paused", "restarting"})

_STDOUT, _STDERR = 1, 2
_HEADER = struct.Struct(">BxxxL")


def _where(host: str) -> str:
    return host or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def _unreachable(host: str) -> ProviderUnavailableError:
    return ProviderUnavailableError(
        f"the Docker daemon is not reachable at {_where(host)}: "
        "start it (sudo systemctl start docker / dockerd)"
    )


def _image_missing(image: str) -> ProviderUnavailableError:
    return ProviderUnavailableError(
        f"the Docker image {image!r} does not exist and is no template: docker pull it, build a "
        "template (nexus template create NAME --provider docker --pip PKG ...), or build the "
        "default image with 'bash scripts/build-image.sh' (offline) or 'docker build -f "
        "docker/Dockerfile .'"
    )


def _needs_python(image: str) -> ProviderError:
    return ProviderError(
        f"the image {image!r} has no python3 on its PATH: a docker template needs python3 >= 3.8 "
        "(install it in the image, e.g. apt-get install python3) or use the default image"
    )


def open_client(host: str, timeout: float = API_TIMEOUT) -> Any:
    """A docker-py ``DockerClient`` for ``host`` ("" = the environment's DOCKER_HOST / default
    socket). Raises ProviderUnavailableError when the daemon does not answer."""
    docker = import_sdk("docker", "docker")
    environment = dict(os.environ)
    if host:
        environment["DOCKER_HOST"] = host
    try:
        return docker.from_env(environment=environment, timeout=timeout)
    except docker.errors.DockerException:
        raise _unreachable(host) from None


@contextmanager
def _api_errors(host: str, what: str):
    """Map docker-py / transport failures to nexus errors with a one-line message."""
    docker = import_sdk("docker", "docker")
    try:
        yield
    except docker.errors.APIError as exc:
        raise ProviderError(f"docker failed to {what}: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, OSError) as exc:
        # requests' ConnectionError is an OSError: the daemon went away mid-call.
        raise _unreachable(host) from exc


class DockerStreamChannel:
    """A :class:`~nexus_kernel.providers.base.Channel` over a hijacked Docker exec/attach
    stream without a TTY.

    Docker frames the output as ``[kind, 0, 0, 0, size (4 bytes, big-endian)] payload``;
    ``recv`` returns stdout payload bytes only (stderr frames are kept, up to 64 KiB, in
    ``stderr`` for diagnostics) and ``sendall`` writes the process's stdin.
    """

    STDERR_KEEP = 64 * 1024
    #: Seconds between checks that the container lives, while ``recv`` waits (``alive``).
    WATCH_SECONDS = 1.0

    def __init__(self, raw: Any, keepalive: Any = None, alive: Any = None):
        self._sock = _underlying_socket(raw)
        self._sock.settimeout(None)  # docker-py leaves its API timeout on hijacked sockets
        self._raw = raw
        self._keepalive = keepalive  # the HTTP response owning the socket (TLS needs it alive)
        # gVisor: an exec stream stays open after its sandbox died; ``alive()`` False ends it
        self._alive = alive
        self._timeout: float | None = None
        self._kind = _STDOUT
        self._left = 0
        self.stderr = bytearray()
        self._closed = False

    def sendall(self, data: bytes) -> None:
        """Write ``data`` to the process's stdin."""
        self._sock.sendall(data)

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of the process's stdout; b"" at end of stream."""
        while True:
            if self._left == 0 and not self._next_header():
                return b""
            if self._kind == _STDOUT:
                chunk = self._recv(min(size, self._left))
                self._left -= len(chunk)
                return chunk
            self._drain_other()

    def settimeout(self, timeout: float | None) -> None:
        """Socket timeout for ``recv`` (None = block)."""
        self._timeout = timeout
        self._sock.settimeout(timeout)

    def _recv(self, size: int) -> bytes:
        """One socket read; with ``alive``, b"" once the container is gone."""
        if self._alive is None:
            return self._sock.recv(size)
        waited = 0.0
        while True:
            step = self.WATCH_SECONDS
            if self._timeout is not None:
                step = min(step, self._timeout - waited)
            self._sock.settimeout(max(step, 0.001))
            try:
                return self._sock.recv(size)
            except TimeoutError:
                waited += step
                if self._timeout is not None and waited >= self._timeout:
                    raise
                if not self._alive():
                    return b""
            finally:
                self._sock.settimeout(self._timeout)

    def shutdown_write(self) -> None:
        """Half-close: the process sees end of input, its output can still be read."""
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """End of input for the process, then close (wakes a thread blocked in ``recv``)."""
        if self._closed:
            return
        self._closed = True
        for how in (socket.SHUT_WR, socket.SHUT_RD):
            with suppress(OSError):
                self._sock.shutdown(how)
        for obj in (self._sock, self._raw):
            with suppress(OSError):
                obj.close()
        self._keepalive = None

    def _next_header(self) -> bool:
        header = self._recv_exactly(_HEADER.size)
        if header is None:
            return False
        self._kind, self._left = _HEADER.unpack(header)
        return True

    def _drain_other(self) -> None:
        chunk = self._recv(min(65536, self._left))
        if not chunk:
            self._left = 0
            return
        self._left -= len(chunk)
        if self._kind == _STDERR:
            self.stderr.extend(chunk)
            del self.stderr[: max(0, len(self.stderr) - self.STDERR_KEEP)]

    def _recv_exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = self._recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data


def _underlying_socket(raw: Any) -> Any:
    """The object with sendall/recv/shutdown behind what docker-py returns for a hijacked
    stream (a ``socket.SocketIO`` over a unix/TCP socket, an SSL socket, an SSH channel)."""
    inner = getattr(raw, "_sock", None)
    if inner is not None and hasattr(inner, "sendall"):
        return inner
    return raw


def container_command(deadline: float | None, machine: str | None) -> list[str]:
    """The container's command: the agent (so the container lives exactly as long as the
    agent), which reads its token from stdin and first installs the seccomp filter of the
    local jails (io_uring, keyring, bpf, ... refused: Docker's default profile lets some of
    them through) for the engine's ``machine`` type, when there is a table for it."""
    return agent_command(PYTHON, AGENT_DIR, *serve_args(
        HOME, deadline, socket=SOCKET, seccomp_filter=seccomp.program(machine or "unknown")))


def hardening(limits: Limits, network: bool, uid: int, runtime: str = "",
              gvisor: bool = False) -> dict[str, Any]:
    """docker-py ``create_host_config`` keyword arguments that confine one sandbox running as
    ``uid`` under the engine's OCI ``runtime`` ("" = its default; ``gvisor``: it is gVisor,
    whose host tasks the pids cap counts) (the container-level ones, its user and working
    dir /home/user, and the agent's read-only volume are set in create)."""
    memory = f"{limits.memory_mb}m"
    size = scratch_mb(limits)
    scratch = f"rw,nosuid,nodev,exec,size={size}m,nr_inodes={size * SCRATCH_INODES_PER_MB}"
    options: dict[str, Any] = {
        "network_mode": "bridge" if network else "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": host_pids(limits.pids) if gvisor else limits.pids,
        "mem_limit": memory,
        "memswap_limit": memory,
        "read_only": True,
        "tmpfs": {
            "/tmp": f"{scratch},mode=1777",
            "/dev/shm": f"{scratch},mode=1777",
            HOME: f"{scratch},uid={uid},gid={uid},mode=0755",
        },
        "ulimits": [{"Name": "nofile", "Soft": OPEN_FILES, "Hard": OPEN_FILES}],
        # No --init: the agent is pid 1 (see the module doc).
        "init": False,
        "privileged": False,
        "ipc_mode": "private",
    }
    if limits.cpus and limits.cpus > 0:
        options["nano_cpus"] = int(limits.cpus * 1e9)
    if runtime:
        options["runtime"] = runtime
    return options


def pick_uid(in_use: set[int]) -> int:
    """A sandbox uid U at random among the range's pairs (U, U+1) whose U is not ``in_use``."""
    pairs = UID_COUNT // 2
    start = secrets.randbelow(pairs)
    for offset in range(pairs):
        uid = UID_BASE + 2 * ((start + offset) % pairs)
        if uid not in in_use:
            return uid
    raise ProviderError(
        f"all {pairs} docker sandbox uids are in use: stop some sandboxes (nexus sandbox list)")


def labelled_uids(client: Any, uid: int | None = None) -> dict[str, int]:
    """Container id -> ``nexus.uid`` of every container of the engine (any state, any store)
    carrying that label (with value ``uid`` when given)."""
    label = UID_LABEL if uid is None else f"{UID_LABEL}={uid}"
    found = {}
    for row in client.api.containers(all=True, filters={"label": [label]}):
        with suppress(TypeError, ValueError):
            found[row["Id"]] = int((row.get("Labels") or {}).get(UID_LABEL))
    return found


class DockerProvider(Provider):
    """Sandboxes as hardened Docker containers running the agent (see the module doc)."""

    name = "docker"
    capabilities = Capabilities(pause=True, resume=True, network=True, egress_allow=True,
                                gpu=False, snapshots=True)
    alive_is_cheap = True
    #: ``docker pause`` freezes the agent and any relay of the stream (runc's cgroup
    #: freezer, runsc's pause); the socket and the engine's exec stream stay open.
    streams_survive_pause = True

    def __init__(self, settings: Settings, **options: Any):
        super().__init__(settings, **options)
        self._clients: dict[str, Any] = {}
        self._infos: dict[str, dict[str, Any]] = {}
        #: (engine, agent version) whose agent volume this provider saw complete.
        self._volumes: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ availability

    @classmethod
    def check_available(cls, settings: Settings, **options: Any) -> None:
        """The SDK is installed, the daemon answers, the default image exists and the engine
        has the configured runtime."""
        docker = import_sdk("docker", "docker")
        client = open_client(settings.docker_host, timeout=10)
        try:
            client.ping()
            client.images.get(settings.docker_image)
            if settings.docker_runtime:
                check_runtime(client.info(), settings.docker_runtime)
        except docker.errors.ImageNotFound:
            raise _image_missing(settings.docker_image) from None
        except (docker.errors.DockerException, OSError):
            raise _unreachable(settings.docker_host) from None
        finally:
            client.close()

    @classmethod
    def runtimes(cls, settings: Settings, **options: Any) -> list[str]:
        """The OCI runtimes the engine offers (``NEXUS_DOCKER_RUNTIME``); [] when it does not
        answer."""
        docker = import_sdk("docker", "docker")
        try:
            client = open_client(settings.docker_host, timeout=10)
        except ProviderUnavailableError:
            return []
        try:
            return sorted(engine_runtimes(client.info()))
        except (docker.errors.DockerException, OSError):
            return []
        finally:
            client.close()

    @classmethod
    def connect_needs_check(cls, settings: Settings, handle: Handle) -> bool:
        """Not where the direct stream may serve: it needs neither the engine nor its SDK
        (a new CLI process then imports neither); its fallback reports what fails."""
        return not (handle.get("pid") and _direct_eligible(settings, handle))

    def _engine_info(self, host: str) -> dict[str, Any]:
        """The engine's ``info`` (runtimes), asked once per engine by this provider."""
        info = self._infos.get(host)
        if info is None:
            info = self._infos[host] = self._client(host).info()
        return info

    def _client(self, host: str) -> Any:
        client = self._clients.get(host)
        if client is None:
            client = self._clients[host] = open_client(host)
        return client

    def _host(self, handle: Handle | None = None) -> str:
        if handle and handle.get("docker_host"):
            return handle["docker_host"]
        return self.settings.docker_host

    # ------------------------------------------------------------------ lifecycle

    def create(self, spec: SandboxSpec) -> Handle:
        """Start a hardened container running the agent; return once the agent is READY."""
        host = self._host()
        client = self._client(host)
        token = secrets.token_urlsafe(32)
        docker = import_sdk("docker", "docker")
        with _api_errors(host, "ask the engine for its runtimes"):
            info = self._engine_info(host)
        # an allow-list's proxy listens in the container's network namespace: gVisor reaches
        # it through its network variant (host sockets in that namespace)
        runtime = pick_runtime(info, self.settings.docker_runtime, spec.network or bool(spec.allow))
        gvisor = is_gvisor(info, runtime)
        if spec.allow:
            docker_egress.check(self.settings)
        with _api_errors(host, "find the template's image"):  # a docker template, or an image
            image = template_image(client.api, spec.template_id or self.settings.docker_image)
        version = docker_agent.agent_version()
        if (host, version) not in self._volumes:  # seen complete: volumes never empty again
            with _api_errors(host, "fill the agent volume"):
                try:  # through the default image: a hostile one never touches the shared volume
                    version = ensure_agent_volume(client.api, self.settings.docker_image)
                except docker.errors.ImageNotFound:
                    raise _image_missing(self.settings.docker_image) from None
            self._volumes.add((host, version))
        with _api_errors(host, "create the sandbox container"):
            in_use: set[int] = set()  # first a random pick: the check below sees a taken one
            for _ in range(UID_ATTEMPTS):
                uid = pick_uid(in_use)
                container_id = self._create_container(client, spec, image, uid, version,
                                                      runtime, gvisor, info.get("Architecture"))
                if set(labelled_uids(client, uid)) == {container_id}:
                    break
                # taken, or a racing create took the same uid: both back off, at most one
                # keeps it; the next pick avoids every uid in use
                client.api.remove_container(container_id, force=True)
                in_use = set(labelled_uids(client).values())
            else:
                raise ProviderError(
                    f"no free docker sandbox uid after {UID_ATTEMPTS} attempts (too many "
                    "concurrent creates on this engine): retry")
        handle = {
            "token": token,
            "container_id": container_id,
            "image": image,
            "docker_host": host,
            "uid": uid,
            "runtime": runtime,
            "gvisor": gvisor,
        }
        try:
            handle["pid"] = pid = self._start_agent(client, container_id, token, image)
            if spec.allow:  # before any user code: the agent has only just said READY
                handle.update(docker_egress.start(self.settings, spec.sandbox_id, pid, spec.allow))
        except BaseException:
            self._volumes.discard((host, version))  # someone removed it? checked again next
            with suppress(Exception):  # keep the original error
                self.destroy(handle)
            raise
        return handle

    def _create_container(self, client: Any, spec: SandboxSpec, image: str, uid: int,
                          agent_version: str, runtime: str, gvisor: bool,
                          machine: str | None) -> str:
        """Create (not start) the sandbox's container, running as ``uid`` under ``runtime``
        (``gvisor``: it is gVisor) with the agent's volume of ``agent_version``; its id."""
        docker = import_sdk("docker", "docker")
        host_config = client.api.create_host_config(
            auto_remove=True,
            log_config=docker.types.LogConfig(
                type="json-file", config={"max-size": "1m", "max-file": "1"}
            ),
            mounts=[agent_mount(agent_version)],
            **hardening(spec.limits, spec.network, uid, runtime, gvisor),
            **docker_egress.host_options(spec.allow),
        )
        try:
            return client.api.create_container(
                image,
                # the agent is the entrypoint: an image's own entrypoint never wraps it
                entrypoint=container_command(spec.deadline, machine),
                user=f"{uid}:{uid}",
                environment={**SANDBOX_ENV, **docker_egress.environment(spec.allow)},
                working_dir=HOME,
                hostname="sandbox",
                labels={**resource_labels(spec, "."), UID_LABEL: str(uid)},
                stdin_open=True,  # and, as detach=False, StdinOnce: EOF after the token
                tty=False,
                host_config=host_config,
            )["Id"]
        except docker.errors.ImageNotFound:
            raise _image_missing(image) from None

    def _start_agent(self, client: Any, container_id: str, token: str, image: str) -> int:
        """Start the container, hand the agent its token on stdin, wait for READY; the
        container's init as the host sees it (its pid: the direct stream, the egress proxy),
        asked while the agent starts."""
        docker = import_sdk("docker", "docker")
        host = self._host()
        with _api_errors(host, "start the sandbox container"):
            raw = client.api.attach_socket(
                container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            stream = DockerStreamChannel(raw)
            try:
                try:
                    client.api.start(container_id)
                except docker.errors.APIError as exc:
                    if "executable file not found" in _explain(exc):
                        raise _needs_python(image) from None
                    raise
                stream.sendall(token.encode() + b"\n")
                stream.shutdown_write()
                pid = 0  # 0 (its State.Pid once ended), or gone: the wait below says why
                with suppress(docker.errors.NotFound):
                    pid = client.api.inspect_container(container_id)["State"]["Pid"]
                wait_for_ready(
                    iter(lambda: stream.recv(4096), b""),
                    READY_TIMEOUT,
                    stop=stream.close,
                    detail=lambda: bytes(stream.stderr).decode("utf-8", "replace"),
                    hint=f"the image {image!r} needs a python3 >= 3.8 that runs the agent "
                    f"(mounted at {AGENT_DIR})",
                )
            finally:
                stream.close()
        return pid

    def connect(self, handle: Handle) -> DockerStreamChannel | socket.socket:
        """A new stream to the agent: a socket in the container's network namespace where
        this process may join it (:mod:`.docker_direct`), else ``docker exec -i`` of the
        agent's relay."""
        direct = self._connect_direct(handle)
        if direct is not None:
            return direct
        docker = import_sdk("docker", "docker")
        host = self._host(handle)
        client = self._client(host)
        container_id = handle["container_id"]
        # gVisor's SO_PEERCRED names the caller, not the listener (see .docker_runtime)
        peer = None if handle.get("gvisor") else AGENT_PID
        relay = agent_command(PYTHON, AGENT_DIR, *relay_args(SOCKET, peer_pid=peer))
        uid = handle.get("uid")
        user = LEGACY_RELAY_USER if uid is None else f"{uid + 1}:{uid + 1}"
        with _api_errors(host, "open a stream to the sandbox"):
            try:
                exec_id = client.api.exec_create(
                    container_id, relay, stdin=True, stdout=True, stderr=True, tty=False,
                    user=user, environment=RELAY_ENV,
                )["Id"]  # fmt: skip
                raw = client.api.exec_start(exec_id, socket=True)
            except docker.errors.NotFound:
                raise AgentError(
                    f"the sandbox container {container_id[:12]} is gone (stopped or expired)"
                ) from None
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    raise _not_running(container_id, _explain(exc)) from None
                raise
        alive = (lambda: self.alive(handle)) if handle.get("gvisor") else None
        return DockerStreamChannel(raw, alive=alive)

    def _connect_direct(self, handle: Handle) -> socket.socket | None:
        """The direct stream (see :mod:`.docker_direct`), or None where it is not available.
        A handle made before it recorded the init's pid gets it (the manager saves it)."""
        if not _direct_eligible(self.settings, handle):
            return None
        host = self._host(handle)
        if not handle.get("pid"):
            docker = import_sdk("docker", "docker")
            with _api_errors(host, "inspect the sandbox container"):
                try:
                    state = self._client(host).api.inspect_container(handle["container_id"])["State"]
                except docker.errors.NotFound:
                    return None  # the relay's path says it in one line
            if not state.get("Running") or not state.get("Pid"):
                return None
            handle["pid"] = state["Pid"]
        return docker_direct.connect(handle["container_id"], handle["pid"], SOCKET)

    def pause(self, handle: Handle) -> None:
        """Freeze every process of the container (``docker pause``). Idempotent."""
        self._pause_op(handle, "pause", "already paused")

    def resume(self, handle: Handle) -> None:
        """Thaw the container (``docker unpause``). Idempotent."""
        self._pause_op(handle, "unpause", "not paused")

    def _pause_op(self, handle: Handle, op: str, harmless: str) -> None:
        docker = import_sdk("docker", "docker")
        host = self._host(handle)
        container_id = handle["container_id"]
        with _api_errors(host, f"{op} the sandbox"):
            try:
                getattr(self._client(host).api, op)(container_id)
            except docker.errors.NotFound:
                raise SandboxStateError(
                    f"the sandbox container {container_id[:12]} is gone; create a new one"
                ) from None
            except docker.errors.APIError as exc:
                if harmless not in _explain(exc):
                    raise

    def destroy(self, handle: Handle) -> None:
        """Kill and remove the container at once (SIGKILL, no stop grace). Idempotent."""
        docker = import_sdk("docker", "docker")
        container_id = handle.get("container_id")
        docker_egress.stop(handle)
        if not container_id:
            return
        host = self._host(handle)
        with _api_errors(host, "remove the sandbox container"):
            try:
                self._client(host).api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "in progress" in _explain(exc):
                    return  # auto-remove (agent deadline) got there first
                raise

    def network_events(self, handle: Handle, since: float | None = None) -> list[dict[str, Any]]:
        """The egress proxy's denials (see :mod:`.docker_egress`)."""
        return docker_egress.events(handle, since)

    def state(self, handle: Handle) -> str | None:
        """Docker's state of the container ("running", "paused", "exited", …), None if gone."""
        docker = import_sdk("docker", "docker")
        host = self._host(handle)
        with _api_errors(host, "inspect the sandbox container"):
            try:
                info = self._client(host).api.inspect_container(handle["container_id"])
            except docker.errors.NotFound:
                return None
        return info["State"]["Status"]

    def alive(self, handle: Handle) -> bool:
        """True while the container exists and has not exited (running or paused).
        Raises ProviderUnavailableError when the daemon cannot be asked."""
        return self.state(handle) in ALIVE_STATES

    def cap_reached(self, handle: Handle) -> str:
        """Under gVisor, why a sandbox that ended during a run most likely did (a cap)."""
        return GVISOR_ENDED if handle.get("gvisor") else ""

    def remove_leftovers(self, grace: float = LEFTOVER_GRACE_SECONDS) -> list[str]:
        """Containers of any store's sandboxes that can never run again: created but never
        started (their creator died in between) or exited yet not removed (auto-remove lost
        to an engine restart), older than ``grace`` s. Running and paused ones are never
        touched: they belong to a live sandbox of some store, or end at their TTL. Also the
        agent volumes of other agent versions that no container uses (older than ``grace``),
        and template build containers of builds that died."""
        host = self._host()
        client = self._client(host)
        with _api_errors(host, "list sandbox containers"):
            rows = client.api.containers(
                all=True, filters={"label": ["nexus.sandbox_id"],
                                   "status": ["created", "exited", "dead"]})
        removed = []
        for row in rows:
            if time.time() - row.get("Created", 0) < grace:
                continue  # may be one whose creator is starting it right now
            with suppress(Exception):  # gone meanwhile, or being removed by the engine
                client.api.remove_container(row["Id"], force=True)
                removed.append(f"container {row['Id'][:12]}")
        with _api_errors(host, "remove old agent volumes"):
            removed += remove_old_volumes(client.api, grace)
            removed += remove_build_leftovers(client.api, grace)
        return removed

    def list_resources(self, store_id: str) -> list[dict[str, Any]]:
        """Containers labelled with ``nexus.store=store_id``, in any state."""
        host = self._host()
        with _api_errors(host, "list sandbox containers"):
            rows = self._client(host).api.containers(
                all=True, filters={"label": [f"nexus.store={store_id}"]}
            )
        return [
            {
                "sandbox_id": (row.get("Labels") or {}).get("nexus.sandbox_id", ""),
                "handle": {
                    "token": "",
                    "container_id": row["Id"],
                    "image": row.get("Image", ""),
                    "docker_host": host,
                },
            }
            for row in rows
        ]

    def close(self) -> None:
        """Close the docker-py clients this provider opened."""
        for client in self._clients.values():
            with suppress(Exception):
                client.close()
        self._clients.clear()


def _direct_eligible(settings: Settings, handle: Handle) -> bool:
    """Whether the direct stream may be tried for ``handle`` (see :mod:`.docker_direct`)."""
    engine = _where(handle.get("docker_host") or settings.docker_host)
    return settings.docker_direct and docker_direct.eligible(handle, engine)


def _not_running(container_id: str, explanation: str) -> SandboxStateError:
    if "paused" in explanation:
        why = "is paused; resume it first"
    else:
        why = "is not running; create a new sandbox"
    return SandboxStateError(f"the sandbox container {container_id[:12]} {why}")


def _explain(exc: Any) -> str:
    return str(getattr(exc, "explanation", "") or exc)
