"""The launch toolkit every provider starts its sandboxes with.

- :func:`agent_command`: the one command line that runs the agent (``serve`` to start it,
  ``relay`` to open a stream to it), wherever the agent is installed in the sandbox.
- :func:`boot_script`: the shell line that makes the agent's dirs and becomes the agent, which
  reads its token from stdin or from a file it opens and deletes first.
- :func:`wait_for_ready`: the one wait (bounded) for the agent's ``READY`` line.
- :func:`resource_labels`: the labels (tags, metadata) reconcile finds our sandboxes by.
- :func:`spawn_helper`: a host-side helper process of a sandbox (slirp4netns, the egress
  proxy), in a session of its own, reaped by a thread.
- :func:`import_sdk` / :func:`require_sdk`: the lazy import of a provider's SDK, with
  MissingDependencyError naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import Any

from ..agent.deploy import dir_argv, zipapp_argv
from ..errors import AgentError, MissingDependencyError
from ..models import SandboxSpec

# ---------------------------------------------------------------------------- commands


def agent_command(
    python: str, location: str, *args: str, flags: Sequence[str] = ("-I",)
) -> list[str]:
    """The command that runs the agent with ``ARGS`` (``serve``, ``relay``) from
    ``location`` in the sandbox: the directory holding the ``sandbox_agent`` package (mounted
    or in the image: imported, so bytecode compiled next to it is used), or the path of
    its uploaded zipapp (``*.pyz``). Isolated mode by default (-I: no cwd on sys.path, no
    PYTHON* variables from the sandbox user)."""
    if location.endswith(".pyz"):
        return zipapp_argv(python, location, *args, flags=tuple(flags))
    return dir_argv(python, location, *args, flags=tuple(flags))


def serve_args(
    home: str,
    deadline: float | None,
    *,
    socket: str | None = None,
    listen_fd: int | None = None,
    token_fd: int | None = None,
    seccomp_filter: bytes | None = None,
) -> list[str]:
    """Arguments of ``agent serve``: where it listens (``socket``: a path or ``@name``, an
    abstract socket; or ``listen_fd``, a listening socket the host made), where it reads
    its token (``token_fd``; default stdin: never a file, a command line or the
    environment), the sandbox's home, the watchdog deadline (epoch s) when there is one, and
    a seccomp filter the agent installs before anything else (``seccomp_filter``)."""
    args = ["serve", *(["--socket", socket] if listen_fd is None else ["--listen-fd", str(listen_fd)])]
    if token_fd is not None:
        args += ["--token-fd", str(token_fd)]
    args += ["--home", home]
    if deadline is not None:
        args += ["--deadline", f"{deadline:.3f}"]
    if seccomp_filter is not None:
        args += ["--seccomp-filter", seccomp_filter.hex()]
    return args


def relay_args(socket: str, peer_pid: int | None = None) -> list[str]:
    """Arguments of ``agent relay``: its stdio becomes a stream to the agent's ``socket``;
    with ``peer_pid``, only when the agent (that pid) is the one listening there."""
    return ["relay", "--socket", socket, *([] if peer_pid is None else ["--peer-pid", str(peer_pid)])]


def boot_script(
    command: Sequence[str],
    make_dirs: Sequence[str] = (),
    *,
    token_file: str | None = None,
    token_fd: int = 3,
    announce_pid: bool = False,
) -> str:
    """A POSIX shell line: create ``make_dirs`` (private), then exec ``command`` (the agent).

    The agent reads its token from the stdin it inherits, or with ``token_file``, from that
    file opened on ``token_fd`` and deleted before the agent starts (``command`` must say
    ``--token-fd``). With ``announce_pid``, it first prints ``PID <n>``: the agent's pid, as
    ``exec`` keeps it, for relays started with ``--peer-pid``."""
    steps = ["umask 077"]
    if make_dirs:
        steps.append(f"mkdir -p {' '.join(map(shlex.quote, make_dirs))} || exit 69")
    if token_file is not None:
        path = shlex.quote(token_file)
        steps.append(f"{{ exec {token_fd}<{path} && rm -f {path}; }} || exit 69")
    if announce_pid:
        steps.append('echo "PID $$"')
    steps.append(f"exec {shlex.join(command)}")
    return "; ".join(steps)


def announced_pid(lines: Iterable[str]) -> int | None:
    """The pid a boot line with ``announce_pid`` printed, among ``lines``; None if none."""
    for line in lines:
        word, _, value = line.strip().partition(" ")
        if word == "PID" and value.isdigit():
            return int(value)
    return None


# ---------------------------------------------------------------------------- READY


def wait_for_ready(
    output: Iterable[bytes | str],
    timeout: float,
    *,
    stop: Callable[[], None] | None = None,
    detail: Callable[[], str] = lambda: "",
    hint: str = "",
) -> list[str]:
    """Read ``output`` (the agent's stdout during startup, any chunking) until a ``READY``
    line; return the lines before it (at most the last 4 KiB). A helper thread reads it and
    stops reading at that line.

    Raises AgentError when ``timeout`` seconds pass first (``stop()`` is called then, to
    unblock the reader) or when the output ends first: the message ends with the last line
    of ``detail()`` (e.g. the agent's stderr) and ``hint`` (what to fix)."""
    done = threading.Event()
    state: dict[str, Any] = {"ready": False, "error": None, "lines": []}

    def watch() -> None:
        seen = ""
        try:
            for chunk in output:
                text = chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else chunk
                seen = (seen + text)[-4096:]
                lines = seen.split("\n")[:-1]
                if any(line.strip() == "READY" for line in lines):
                    state["ready"] = True
                    state["lines"] = lines[: [line.strip() for line in lines].index("READY")]
                    return
        except Exception as exc:  # the stream broke: as an end of output
            state["error"] = exc
        finally:
            done.set()

    threading.Thread(target=watch, name="nexus-ready", daemon=True).start()
    if not done.wait(timeout):
        if stop is not None:
            with suppress(Exception):
                stop()
        raise AgentError(f"timed out: the sandbox agent did not start within {timeout:g}s")
    if state["ready"]:
        return state["lines"]
    why = ""
    with suppress(Exception):
        lines = detail().strip().splitlines()
        why = lines[-1] if lines else ""
    if not why and state["error"] is not None:
        why = str(state["error"])
    raise AgentError(
        f"the sandbox agent exited during startup: {why or 'no output'}"
        + (f"; {hint}" if hint else "")
    )


# ---------------------------------------------------------------------------- labels, SDKs


def resource_labels(spec: SandboxSpec, separator: str = "_") -> dict[str, str]:
    """Labels (metadata, tags) a sandbox's resource carries; reconcile lists by
    ``nexus<separator>store``. Docker labels use ".", cloud tags "_"."""
    return {
        f"nexus{separator}sandbox_id": spec.sandbox_id,
        f"nexus{separator}owner": spec.owner,
        f"nexus{separator}store": spec.store_id,
        f"nexus{separator}expires_at": "" if spec.deadline is None else f"{spec.deadline:.3f}",
    }


def spawn_helper(command: list[str], log: Any, pass_fds: Sequence[int], ready_r: int,
                 name: str, **popen: Any) -> subprocess.Popen:
    """Start ``command`` as a host-side helper of a sandbox: its own session, a minimal env,
    stdout and stderr appended to ``log`` (never through a symlink), reaped by a daemon
    thread. On failure, closes ``ready_r`` (the read end of the helper's ready pipe)."""
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
            pass_fds=[fd for fd in pass_fds if fd >= 0], start_new_session=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}, **popen,
        )  # fmt: skip
    except BaseException:
        os.close(ready_r)
        raise
    finally:
        os.close(log_fd)
    threading.Thread(target=proc.wait, name=f"nexus-{name}-{proc.pid}", daemon=True).start()
    return proc


def sdk_installed(module: str) -> bool:
    """True when ``module`` can be imported, without importing it (cheap)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_sdk(provider: str, module: str, options: dict[str, Any] | None = None) -> None:
    """MissingDependencyError when the SDK is absent (and none is injected as option
    ``sdk``), without importing it (cheap)."""
    if (options or {}).get("sdk") is None and not sdk_installed(module):
        raise MissingDependencyError(provider, module)


def import_sdk(provider: str, module: str, options: dict[str, Any] | None = None) -> Any:
    """The provider's SDK module, or the object injected as option ``sdk`` (tests);
    MissingDependencyError naming the extra when it is not installed."""
    if (options or {}).get("sdk") is not None:
        return options["sdk"]  # type: ignore[index]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(provider, module) from None
