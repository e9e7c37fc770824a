"""The local provider: one bubblewrap jail per sandbox, with the agent as its long-lived process.

Layout of a sandbox dir (``settings.sandboxes_dir / sandbox_id``)::

    sock/   the agent's socket (0700, the caller's; never mounted in the jail)
    agent.log   the agent's (and bubblewrap's) stderr
    handle.json the handle plus store_id, for reconcile

Isolation: new user/pid/ipc/uts/cgroup/net namespaces, read-only /usr,
a hand-picked /etc, cleared environment, uid 1000 inside, no capabilities, no_new_privs, no
nested user namespaces. When the caller is root the jail runs as an unprivileged host uid
of its own, reserved for it from a range no account uses (``uids.py``), never as host root
and never shared with another sandbox or a real account. Limits: a cgroup (v2 or v1) where writable, else
rlimits (``handle["limits"]`` says which); every process at most OPEN_FILES fds. A seccomp
filter (``seccomp.py``) refuses the kernel surface Docker's default profile refuses.

Network: the jail always has a network namespace of its own. With ``network=True``,
slirp4netns (user-mode networking, run as the jail's host uid) gives it a tap device, NAT to
the outside and DNS at 10.0.2.3, with no path to the host's loopback
(``--disable-host-loopback``); abstract unix sockets and loopback servers of the host and of
other sandboxes live in other namespaces. slirp4netns ends when the jail ends (its exit fd is
held by the jail's outer bubblewrap), whoever ends it. With an allow-list (``spec.allow``) the
namespace keeps loopback only, and the egress proxy (``egress_proxy.py``, a host process
outside the jail's pid namespace, ended by the same exit pipe) listens in it at
127.0.0.1:3128 (HTTP/CONNECT, in the jail's ``HTTP(S)_PROXY``) and 127.0.0.1:53 (the jail's
resolver); its refusals go to ``egress.jsonl`` in the sandbox dir (:meth:`network_events`).

Files: /home/user (the working dir; persists between runs), /tmp (= /var/tmp) and /dev/shm
are private tmpfs mounts of ``scratch_mb(limits)`` each, as in the docker provider: their
pages are charged to the memory cgroup, a fill ends in ENOSPC, and nothing the sandbox writes
lands on the host's disk. When root, the wrapper mounts them with an inode cap too; otherwise
bubblewrap's ``--size`` caps the bytes only; a bubblewrap older than 0.8 leaves them as host
dirs with a per-file size rlimit (``handle["disk"]`` says which).

The agent is the jail's pid 1 (``--as-pid-1``): sandbox code cannot SIGKILL it (``kill -9 -1``
spares a namespace's init) and it reaps every orphan. The memory and pids cgroups are visible
read-only at /sys/fs/cgroup, so the agent can tell a run that the OOM killer or the pids cap
ended it.

The channel: the host creates the agent's listening socket in ``sock/`` and hands the agent
its fd, and the token through a pipe; nothing of either is in the jail's file system, so
sandbox code cannot rename, replace or redirect the socket (the host also connects through
an ``O_NOFOLLOW`` handle on ``sock/`` and only to a socket it owns). The agent package is
copied into a tmpfs at /opt/nexus-agent, remounted read-only: no mount of the jail names a
host path of the sandbox's state.

Start: one process, exec'ed along
``[unshare --mount -> sh -> unshare --setuid ->] bwrap -> agent`` (the bracket when root).
The wrapper ``sh`` waits on a pipe until the host has put it in the cgroups and set its
rlimits (``prlimit(2)`` on a process of the host's own uid that has forked nothing yet:
race-free, no ``preexec_fn``); when root it stages every bind and scratch tmpfs with a
single ``mount -a`` from an fstab in the sandbox dir meanwhile. The kernel's wait before the
first cgroup write (an RCU grace period) starts as soon as the cgroup exists
(:func:`~.cgroups.prepay_attach`), so it runs while the host writes the files and the
arguments. ``unshare --setuid`` (also the userns probe's) takes a number where ``setpriv``
looks the uid up through NSS; helpers that only change uid (slirp4netns) get it from
``Popen(user=, group=, extra_groups=[])``, with no exec. Each bubblewrap bind costs a
mount, a remount and a read of the mount table, so the synthesised /etc files and the
host's world-readable whitelisted ones are written into bubblewrap's root tmpfs
(``--file``, read-only with the root), links into /usr recreated and small directories
rebuilt (:func:`_etc_entry`); only larger directories and what the jail uid could not
read are bound.

``handle.json`` is written before the jail starts and again once its pids are known, so a
creator killed in the middle of ``create`` leaves a sandbox the reaper can find and destroy.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from ..agent.deploy import PACKAGE_DIR, agent_digest, package_files
from ..config import Settings, private_dir
from ..errors import AgentError, InvalidArgumentError, ProviderError, ProviderUnavailableError
from ..models import Limits, SandboxSpec
from . import uids
from ._launch import agent_command, serve_args, spawn_helper, wait_for_ready
from .base import (
    LEAN_TEMPLATES,
    OPEN_FILES,
    SCRATCH_INODES_PER_MB,
    Capabilities,
    Handle,
    Provider,
    scratch_mb,
)
from .cgroups import Cgroup, create_cgroup, poll_until, prepay_attach, remove_leftovers
from .egress import PROXY_ENV, override_hosts, read_events, start_proxy
from .removal import remove_tree
from .seccomp import program_fd

BWRAP_HINT = "bubblewrap is not installed: apt-get install bubblewrap (or dnf install bubblewrap)"
USERNS_HINT = (
    "bubblewrap cannot create user namespaces on this host ({detail}); enable them "
    "(sysctl user.max_user_namespaces=15000 kernel.unprivileged_userns_clone=1, or on "
    "Ubuntu >= 23.10 kernel.apparmor_restrict_unprivileged_userns=0)"
)
SLIRP_HINT = (
    "network=True on the local provider needs slirp4netns (user-mode networking): "
    "apt-get install slirp4netns (or run scripts/install-host.sh)"
)
#: The jail's DNS forwarder (slirp4netns's default 10.0.2.0/24 network).
SLIRP_DNS = "10.0.2.3"
#: The denials the egress proxy writes (in the sandbox dir, never mounted in the jail).
EVENTS_FILE = "egress.jsonl"
#: ioctl: the user namespace owning a namespace (linux/nsfs.h NS_GET_USERNS).
NS_GET_USERNS = 0xB701
INNER_UID = 1000
HOME = "/home/user"
AGENT_DIR = "/opt/nexus-agent"
TEMPLATE_DIR = "/opt/template"
#: Root-owned empty mount points for staging (see ``_WRAPPER_SCRIPT``).
STAGE_DIR = "/run/nexus-kernel/stage"
READY_TIMEOUT = 30.0
#: The agent's socket in the sandbox dir's ``sock/``.
SOCKET_NAME = "agent.sock"
#: Writable scratch mounts of the jail and the mode of each tmpfs root.
SCRATCH_MOUNTS = {HOME: "0700", "/tmp": "1777", "/dev/shm": "1777"}

SANDBOX_ENV = {
    "HOME": HOME,
    "USER": "user",
    "LOGNAME": "user",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}
#: Host /etc entries bound read-only: what the loader, Python, Node and bash need. No
#: secrets (shadow, ssh, pip.conf / npmrc tokens, ...): the jail's uid is a real host uid.
ETC_ALWAYS = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone",
    "mime.types", "protocols", "services", "gai.conf", "host.conf", "os-release",
    "debian_version", "fonts", "bash.bashrc", "profile", "inputrc", "matplotlibrc",
    "magic", "magic.mime", "terminfo", "python3",
)  # fmt: skip
ETC_NETWORK = ("ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf", "pki", "crypto-policies")
ROOT_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: A whitelisted /etc directory of at most this many entries is recreated in the jail's
#: root tmpfs (each entry ~10 us of bubblewrap), not bound (a bind costs it ~0.7 ms).
ETC_TREE_MAX = 16

# The one process before bubblewrap (when root: inside ``unshare --mount``). Root only, one
# ``mount -a`` with the fstab in $1 ("-" for none) binds dirs the unprivileged jail uid
# cannot reach (e.g. under /root, or a 0700 pytest tmp) onto empty root-owned dirs under
# STAGE_DIR and mounts the scratch tmpfs there, in that private mount namespace: a host
# tool that has exited before the gate, so it runs while the host caps this process (the
# first write into a new cgroup v1 waits ~10 ms for an RCU grace period). Then it waits on
# its stdin for "go", which the host sends once it has put this process in the sandbox's
# cgroups and set its rlimits (no process of the jail exists before: race-free), and execs
# the rest of its arguments.
_WRAPPER_SCRIPT = r"""
[ "$1" = - ] || mount -a -T "$1" || exit 125
read -r gate && [ "$gate" = go ] || exit 125
shift
exec "$@" </dev/null
"""


class LocalProvider(Provider):
    """Sandboxes as bubblewrap jails on this machine. Options: ``uid`` (host uid when run as
    root), ``agent_dir``, ``ready_timeout``, ``cgroups`` (False forces the rlimit fallback)."""

    name = "local"
    capabilities = Capabilities(pause=True, resume=True, network=True, egress_allow=True,
                                gpu=False, snapshots=True)
    alive_is_cheap = True
    alive_without_check = True

    _probe_cache: dict[tuple[str, int | None], str | None] = {}

    # ---------------------------------------------------------------- availability

    @classmethod
    def check_available(cls, settings: Settings, **options: Any) -> None:
        """bubblewrap present and able to build a user namespace (probed once per process)."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise ProviderUnavailableError(BWRAP_HINT)
        root = os.geteuid() == 0
        needed = ["unshare", "mount"] if root else []
        for tool in needed:
            if shutil.which(tool) is None:
                raise ProviderUnavailableError(
                    f"the local provider needs {tool!r} (util-linux) when run as root: "
                    "apt-get install util-linux"
                )
        python = sandbox_python(settings)
        if not os.path.exists(python):
            raise ProviderUnavailableError(
                f"no Python for sandboxes at {python}: install python3 or set NEXUS_LOCAL_PYTHON"
            )
        uid = int(options.get("uid", uids.UID_BASE)) if root else None
        key = (bwrap, uid)
        if key not in cls._probe_cache:
            cls._probe_cache[key] = _probe_userns(bwrap, uid)
        error = cls._probe_cache[key]
        if error is not None and error.startswith("unshare:"):
            raise ProviderUnavailableError(
                f"the local provider needs util-linux >= 2.32 (unshare --setuid) when run as "
                f"root: {error}")
        if error is not None:
            raise ProviderUnavailableError(USERNS_HINT.format(detail=error))

    # ---------------------------------------------------------------- create

    def create(self, spec: SandboxSpec) -> Handle:
        """Start the jail with the agent as its main process; return once the agent listens."""
        self.check_available(self.settings, **self.options)
        self._template_dir(spec.template_id)  # a missing template fails before any work
        root = os.geteuid() == 0
        if root and "uid" in self.options and int(self.options["uid"]) == 0:
            raise ProviderError("refusing to run sandboxes as host root: pick another 'uid' option")
        if spec.network and not spec.allow and _find_tool("slirp4netns") is None:
            raise ProviderUnavailableError(SLIRP_HINT)
        package = Path(self.options.get("agent_dir") or PACKAGE_DIR.parent) / PACKAGE_DIR.name
        if not (package / "__main__.py").is_file():
            raise ProviderUnavailableError(f"the sandbox agent is missing: {package}")
        agent_dir = _agent_with_bytecode(package, sandbox_python(self.settings),
                                         self.settings.home / "agent-cache")

        sandboxes = self.settings.sandboxes_dir
        private_dir(sandboxes)
        sandbox_dir = sandboxes / spec.sandbox_id
        try:
            sandbox_dir.mkdir(mode=0o711)
        except FileExistsError:
            raise ProviderError(
                f"sandbox dir {sandbox_dir} already exists; destroy that sandbox first"
            ) from None
        os.chmod(sandbox_dir, 0o711)  # traversable by the jail uid, not listable
        reserved = root and "uid" not in self.options
        try:
            uid = uids.reserve(spec.sandbox_id) if reserved else (
                int(self.options["uid"]) if root else os.getuid())
        except BaseException:
            remove_tree(sandbox_dir)
            raise
        gid = uid if root else os.getgid()
        import secrets  # (OpenSSL's _hashlib) not for a liveness check

        token = secrets.token_hex(32)
        cgroup: Cgroup | None = None
        primer: int | None = None
        proc: subprocess.Popen[bytes] | None = None
        handle: Handle = {
            "sandbox_id": spec.sandbox_id,
            "token": token,
            "socket": str(sandbox_dir / "sock" / SOCKET_NAME),
            "dir": str(sandbox_dir),
            "cgroup": None,
            "limits": "rlimit",
            "disk": _scratch_kind(root, spec.limits),
            "uid": uid,
            "uid_reserved": reserved,
            "network": "slirp4netns" if spec.network else "egress-proxy" if spec.allow else "none",
            "allow": list(spec.allow),
        }

        def started(process: subprocess.Popen[bytes], info: dict[str, Any]) -> None:
            handle.update(
                pid=process.pid,
                pid_start=_start_time(process.pid),
                child_pid=info["child-pid"],
                child_start=_start_time(info["child-pid"]),
                pid_ns=info.get("pid-namespace"),
                slirp_pid=info.get("slirp-pid"),
                slirp_start=info.get("slirp-start"),
                egress_pid=info.get("egress-pid"),
                egress_start=info.get("egress-start"),
            )
            _write_handle(sandbox_dir, spec.store_id, handle)
            if reserved:
                uids.bind(uid, spec.sandbox_id, handle["child_pid"], handle["child_start"])

        try:
            if self.options.get("cgroups", True):
                cgroup = create_cgroup(spec.sandbox_id, spec.limits)
            if cgroup is not None:
                handle.update(cgroup=cgroup.to_dict(), limits=f"cgroup-{cgroup.version}")
                primer = prepay_attach(cgroup)  # the kernel waits while the host makes the files
            _make_dirs(sandbox_dir, uid, gid, scratch_on_disk=handle["disk"] == "host-dir")
            etc_files = _etc_files(spec.network, bool(spec.allow))
            # Written while the wrapper starts, before it may go on: from then on a creator
            # killed mid-create leaves a sandbox the reaper can find.
            proc, _ = self._launch(spec, sandbox_dir, agent_dir, etc_files, cgroup, root, uid,
                                   token, started=started,
                                   spawned=partial(_write_handle, sandbox_dir, spec.store_id, handle))
        except BaseException:
            if proc is not None:
                _kill_quietly(proc.pid)
            if cgroup is not None:
                cgroup.kill(timeout=2.0)
                cgroup.remove()
            remove_tree(sandbox_dir)
            if reserved:
                uids.release(uid, spec.sandbox_id)
            raise
        finally:
            if primer is not None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(primer, 0)
        return handle

    def _launch(
        self,
        spec: SandboxSpec,
        sandbox_dir: Path,
        agent_dir: Path,
        etc_files: dict[str, str],
        cgroup: Cgroup | None,
        root: bool,
        uid: int,
        token: str,
        started: Any = None,
        spawned: Any = None,
    ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        """Spawn [unshare ->] sh wrapper -> [mount -a,] [unshare --setuid ->] bwrap -> agent (all
        exec'ed in one process, whose pid is the handle's "pid", but ``mount``); put it in
        the cgroup and set its rlimits before it goes on; wait for READY. Calls
        ``spawned()`` while the wrapper starts, before it may go on, and ``started(proc,
        info)`` as soon as bubblewrap reports the jail's pid."""
        python = sandbox_python(self.settings)
        extra_ro: list[tuple[str, str]] = []  # (host source, path in the jail)
        prefix = _python_prefix(python)
        if prefix:
            extra_ro.append((prefix, prefix))
        template = self._template_dir(spec.template_id)
        if template is not None:
            extra_ro.append((str(template), TEMPLATE_DIR))

        # Where bubblewrap finds our dirs: staged copies of the mounts when root.
        fstab: list[tuple[str, str, str, str]] = []  # (source, mount point, type, options)
        sb = str(sandbox_dir)  # its home/ and tmp/ are mounted only when not root (host-dir)
        if root:
            sources = {f"ro{i}": src for i, (src, _) in enumerate(extra_ro)}
            staged = {name: _stage_dir(name) for name in sources}
            for name, src in sources.items():
                fstab.append((src, staged[name], "none", "bind"))
            extra = [(staged[f"ro{i}"], dest) for i, (_, dest) in enumerate(extra_ro)]
            # The scratch tmpfs, with byte and inode caps bubblewrap cannot set.
            size = scratch_mb(spec.limits)
            scratch = {}
            for dest, mode in SCRATCH_MOUNTS.items():
                scratch[dest] = _stage_dir("scratch" + dest.replace("/", "-"))
                options = (f"size={size}m,nr_inodes={size * SCRATCH_INODES_PER_MB},"
                           f"mode={mode},uid={uid},gid={uid},nosuid,nodev")
                fstab.append(("nexus-scratch", scratch[dest], "tmpfs", options))
        else:
            extra = list(extra_ro)
            scratch = {}

        info_r, info_w = os.pipe()
        # The outer bubblewrap holds the write end of slirp4netns's exit pipe: the helper
        # ends when the jail does, however it ends.
        # The egress proxy (allow-list) uses the same pipe.
        linked = bool(spec.network or spec.allow)
        exit_r, exit_w = os.pipe() if linked else (-1, -1)
        data_fds: list[int] = []
        gate_r, gate_w = os.pipe()
        log_fd = os.open(sandbox_dir / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # The channel: a listening socket where the jail cannot reach, and the token
            # through a pipe (64 hex characters: the pipe buffer holds them).
            data_fds.append(_listen(sandbox_dir / "sock"))
            token_r, token_w = os.pipe()
            data_fds.append(token_r)
            with os.fdopen(token_w, "w") as pipe:
                pipe.write(token + "\n")
            bwrap = self._bwrap_args(spec, sb, agent_dir, extra, etc_files, data_fds, info_w,
                                     scratch, cgroup)
            # Imported as a module, so Python loads the bytecode of ``_agent_with_bytecode``
            # instead of compiling the source at every start (~12 ms). -S: the agent is
            # stdlib only, so skip site (a few ms); run code keeps site.
            agent_cmd = agent_command(
                python, AGENT_DIR,
                *serve_args(HOME, spec.deadline, listen_fd=data_fds[0], token_fd=token_r),
                flags=("-I", "-S", "-B"))
            command = bwrap + ["--", *agent_cmd]
            if root:
                command = [*_drop_to(uid), *command]
            table = _write_fstab(sandbox_dir, fstab) if fstab else "-"
            command = ["/bin/sh", "-c", _WRAPPER_SCRIPT, "nexus-wrapper", table, *command]
            if root:
                command = [_which("unshare"), "--mount", "--propagation", "private", *command]
            proc = subprocess.Popen(
                command,
                stdin=gate_r,
                stdout=subprocess.PIPE,
                stderr=log_fd,
                pass_fds=[info_w, *data_fds, *([exit_w] if linked else [])],
                start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},  # no LANG: no locale loads
            )
        except BaseException:
            if linked:
                os.close(exit_r)
            os.close(gate_w)
            raise
        finally:
            os.close(gate_r)
            os.close(info_w)
            if linked:
                os.close(exit_w)
            os.close(log_fd)
            for fd in data_fds:
                os.close(fd)
        # Reap the outer bwrap when it ends, so long-lived callers collect no zombies.
        threading.Thread(target=proc.wait, name=f"nexus-reap-{proc.pid}", daemon=True).start()
        try:  # the wrapper waits for "go" (after its mount -a): nothing of the jail runs yet
            if spawned is not None:
                spawned()
            _cap(proc.pid, spec.limits, cgroup, uid)
            os.write(gate_w, b"go\n")
        except BaseException as exc:
            _kill_quietly(proc.pid)
            os.close(info_r)
            if linked:
                os.close(exit_r)
            # a full disk stays an OSError with its errno: the manager says DiskFullError
            if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise ProviderError(f"could not record or cap the local sandbox: {exc}; "
                                    f"agent log: {_tail(sandbox_dir / 'agent.log')}") from None
            raise
        finally:
            os.close(gate_w)
        timeout = float(self.options.get("ready_timeout", READY_TIMEOUT))
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        ready_r = -1
        try:
            info = _read_info(info_r, deadline)
            if spec.allow and not spec.network:  # starts while the agent does (~0.1 s saved)
                egress, ready_r = start_proxy(
                    python, info["child-pid"], spec.allow, override_hosts(self.settings),
                    events=sandbox_dir / EVENTS_FILE, log=sandbox_dir / "agent.log",
                    exit_fd=exit_r, join_userns=not root)
                info.update({"egress-pid": egress.pid, "egress-start": _start_time(egress.pid)})
            if started is not None:
                started(proc, info)
            assert proc.stdout is not None
            wait_for_ready(iter(partial(proc.stdout.read1, 65536), b""),
                           max(0.0, deadline - time.monotonic()))
            if spec.network:
                # Only once the agent runs: bubblewrap is then done with the netns (it sets
                # up loopback over netlink, which a concurrent slirp4netns makes fail).
                slirp, ready_r = _start_slirp(info["child-pid"], exit_r, uid if root else None,
                                              sandbox_dir / "agent.log")
                info.update({"slirp-pid": slirp.pid, "slirp-start": _start_time(slirp.pid)})
                if started is not None:
                    started(proc, info)
            if spec.network and _read_some(ready_r, deadline, "slirp4netns to set up the network") != b"1":
                raise ProviderError("slirp4netns could not set up the sandbox's network")
            if spec.allow and not spec.network and _read_some(
                    ready_r, deadline, "the egress proxy to start") != b"1":
                raise ProviderError("the egress proxy could not listen in the sandbox's network")
        except BaseException as exc:
            for helper in ("slirp-pid", "egress-pid"):
                if info.get(helper):
                    _kill_quietly(info[helper])
            if info.get("child-pid"):  # no --die-with-parent: kill the jail itself first
                _kill_quietly(info["child-pid"])
                poll_until(lambda: not _same_process(proc.pid, None), 1.0)
            _kill_quietly(proc.pid)
            if not isinstance(exc, (ProviderError, AgentError)):
                raise
            tail = _tail(sandbox_dir / "agent.log")
            raise ProviderError(f"the local sandbox did not start: {exc}; agent log: {tail}") from None
        finally:
            os.close(info_r)
            for fd in (exit_r, ready_r):
                if fd >= 0:
                    os.close(fd)
            if proc.stdout is not None:
                proc.stdout.close()
        return proc, info

    def _template_dir(self, template_id: str | None) -> Path | None:
        """The built template's directory (see ``nexus template create``) mounted at
        TEMPLATE_DIR: ``template_id``, or the default environment when it is None
        (``Settings.default_template``); None for the lean sandbox ("minimal"/"none")."""
        default = template_id is None
        name = self.settings.default_template if default else template_id
        if not name or name in LEAN_TEMPLATES:
            return None
        path = self.settings.templates_dir / name
        if "/" in name or name.startswith(".") or not (path / "lib").is_dir():
            if default:
                raise InvalidArgumentError(
                    f"the default environment {name!r} is not built: run 'nexus template "
                    f"create {name}' once, or create with --template minimal for a lean sandbox"
                )
            raise InvalidArgumentError(
                f"no local template {name!r}: build it with "
                f"'nexus template create {name} --pip PKG ...' (see nexus template list)"
            )
        return path

    def _bwrap_args(
        self,
        spec: SandboxSpec,
        sb: str,
        agent_dir: Path,
        extra: list[tuple[str, str]],
        etc_files: dict[str, str],
        data_fds: list[int],
        info_fd: int,
        scratch: dict[str, str] | None = None,
        cgroup: Cgroup | None = None,
    ) -> list[str]:
        # Always a network namespace of its own: with network=True slirp4netns plugs into it.
        args = [_which("bwrap"), "--unshare-user", "--unshare-pid", "--unshare-ipc",
                "--unshare-uts", "--unshare-cgroup-try", "--unshare-net"]  # fmt: skip
        modern = _bwrap_version() >= (0, 8)
        if modern:
            args.append("--disable-userns")
        # The agent is pid 1: nothing inside can SIGKILL it, and orphans come back to it.
        args += ["--as-pid-1", "--new-session", "--clearenv"]
        env = dict(SANDBOX_ENV)
        if any(dest == TEMPLATE_DIR for _, dest in extra):  # its packages and scripts first
            env["PYTHONPATH"] = f"{TEMPLATE_DIR}/lib"
            env["PATH"] = f"{TEMPLATE_DIR}/lib/bin:{env['PATH']}"
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--uid", str(INNER_UID), "--gid", str(INNER_UID), "--hostname", "sandbox"]
        args += ["--ro-bind", "/usr", "/usr"]
        for name in ROOT_DIRS:
            path = f"/{name}"
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        args += ["--proc", "/proc", "--dev", "/dev"]
        if spec.allow and not spec.network:  # what pip, curl, requests and urllib follow
            for key, value in PROXY_ENV.items():
                args += ["--setenv", key, value]
        args += _scratch_args(_scratch_kind(bool(scratch), spec.limits), spec.limits, scratch, sb)
        wanted = list(ETC_ALWAYS) + glob.glob("python3.*", root_dir="/etc")
        if spec.network or spec.allow:
            wanted += ETC_NETWORK
        for name in wanted:
            args += _etc_entry(f"/etc/{name}", data_fds)
        for name, text in etc_files.items():
            fd = _pipe_with(text.encode())
            data_fds.append(fd)
            # Written into the jail's root tmpfs (read-only by --remount-ro / below): no mount.
            args += ["--perms", "0644", "--file", str(fd), f"/etc/{name}"]
        # The agent, copied into a tmpfs of its own made read-only: no host path shows.
        args += ["--perms", "0755", "--tmpfs", AGENT_DIR]
        files = _agent_files(agent_dir)
        for folder in sorted({os.path.dirname(relative) for relative, _ in files}):
            args += ["--perms", "0755", "--dir", f"{AGENT_DIR}/{folder}"]
        for relative, source in files:
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            data_fds.append(fd)
            args += ["--perms", "0644", "--file", str(fd), f"{AGENT_DIR}/{relative}"]
        args += ["--remount-ro", AGENT_DIR, "--symlink", "/tmp", "/var/tmp"]
        for src, dest in extra:
            args += ["--ro-bind", src, dest]
        if cgroup is not None:  # read-only: the agent sees the OOM kills and refused forks
            if "unified" in cgroup.paths:
                args += ["--ro-bind-try", cgroup.paths["unified"], "/sys/fs/cgroup"]
            else:
                for name in ("memory", "pids"):
                    if name in cgroup.paths:
                        args += ["--ro-bind-try", cgroup.paths[name], f"/sys/fs/cgroup/{name}"]
        # Only home, /tmp and /dev/shm stay writable.
        args += ["--remount-ro", "/", "--remount-ro", "/dev"]
        args += ["--chdir", HOME, "--info-fd", str(info_fd)]
        seccomp = program_fd()
        if seccomp is not None:
            data_fds.append(seccomp)
            args += ["--seccomp", str(seccomp)]
        return args

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def connect_needs_check(cls, settings: Settings, handle: Handle) -> bool:
        """Never: a stream is a unix socket the host made (the check probes bubblewrap)."""
        return False

    def connect(self, handle: Handle) -> socket.socket:
        """A unix socket connected to the agent: through an ``O_NOFOLLOW`` handle on the
        socket's directory, and only to a socket this host uid made (never a link)."""
        path = handle["socket"]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dir_fd = -1
        try:
            dir_fd = os.open(os.path.dirname(path),
                             os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            name = os.path.basename(path)
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
                raise ConnectionRefusedError(errno.ECONNREFUSED, "not a socket of this user")
            sock.connect(f"/proc/self/fd/{dir_fd}/{name}")
        except OSError as exc:
            sock.close()
            raise AgentError(
                f"sandbox {handle.get('sandbox_id', '?')} is not running (no agent at {path}: "
                f"{exc.strerror or exc}); stop it and create a new one"
            ) from None
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)
        return sock

    def pause(self, handle: Handle) -> None:
        """Freeze every process of the sandbox (cgroup freezer, else SIGSTOP each one)."""
        if not self.alive(handle):
            raise ProviderError(f"sandbox {handle.get('sandbox_id', '?')} is not running")
        cgroup = Cgroup.from_dict(handle.get("cgroup"))
        if cgroup is not None and cgroup.can_freeze:
            if not cgroup.freeze(timeout=10.0):
                cgroup.thaw()
                raise ProviderError("could not freeze the sandbox within 10 s; it keeps running")
            return
        _signal_namespace(handle, signal.SIGSTOP, until_stable=True)

    def resume(self, handle: Handle) -> None:
        """Thaw / SIGCONT every process of the sandbox."""
        if not self.alive(handle):
            raise ProviderError(f"sandbox {handle.get('sandbox_id', '?')} is not running")
        cgroup = Cgroup.from_dict(handle.get("cgroup"))
        if cgroup is not None and cgroup.can_freeze:
            cgroup.thaw()
            return
        _signal_namespace(handle, signal.SIGCONT, until_stable=False)

    def destroy(self, handle: Handle) -> None:
        """Kill every process (no grace period), remove the cgroups and the sandbox dir."""
        cgroup = Cgroup.from_dict(handle.get("cgroup"))
        outer, outer_start = handle.get("pid"), handle.get("pid_start")
        child, child_start = handle.get("child_pid"), handle.get("child_start")
        # Spare the outer bwrap: it reaps the jail's pid 1 and exits on its own (then we, or
        # init, reap it), so no zombie is left to a parent that never reaps orphans.
        spare = frozenset([outer]) if outer and _same_process(outer, outer_start) else frozenset()
        if cgroup is not None:
            cgroup.kill(timeout=5.0, spare=spare)
        # SIGKILL to the namespace's pid 1 kills everything else in the pid namespace.
        if child and _same_process(child, child_start):
            _kill_quietly(child)
        if spare and not poll_until(lambda: not _same_process(outer, outer_start), 1.0):
            _kill_quietly(outer)
        if child:
            poll_until(lambda: not _same_process(child, child_start), 5.0)
        if cgroup is not None:
            cgroup.kill(timeout=5.0)
            cgroup.remove()
        slirp, slirp_start = handle.get("slirp_pid"), handle.get("slirp_start")
        # It ends with the jail on its own; this covers a jail that never got that far.
        if slirp and not poll_until(lambda: not _same_process(slirp, slirp_start), 1.0):
            _kill_quietly(slirp)
        egress, egress_start = handle.get("egress_pid"), handle.get("egress_start")
        if egress and not poll_until(lambda: not _same_process(egress, egress_start), 1.0):
            _kill_quietly(egress)
        if handle.get("dir"):
            remove_tree(Path(handle["dir"]))
        if handle.get("uid_reserved"):  # every process of the uid is gone: give it back
            uids.release(handle["uid"], handle["sandbox_id"])

    def network_events(self, handle: Handle, since: float | None = None) -> list[dict[str, Any]]:
        """The egress proxy's denials (newest last), from ``since`` (epoch seconds) on."""
        if not handle.get("dir") or handle.get("network") != "egress-proxy":
            return []
        return read_events(Path(handle["dir"]) / EVENTS_FILE, since)

    def alive(self, handle: Handle) -> bool:
        """The jail's pid 1 still exists (start time checked, so a reused pid does not count)."""
        child = handle.get("child_pid")
        return bool(child) and _same_process(child, handle.get("child_start"))

    def remove_leftovers(self) -> list[str]:
        """Empty ``nexus/sb_*`` cgroups and uid reservations left by sandboxes of any store
        on this host."""
        removed = remove_leftovers()
        if os.geteuid() == 0:
            removed += [f"uid reservation {uid}" for uid in uids.remove_stale()]
        return removed

    def list_resources(self, store_id: str) -> list[dict[str, Any]]:
        """Sandboxes under ``settings.sandboxes_dir`` created for ``store_id``: running ones,
        and also dead or half-started ones, whose directory and cgroup are still to clean."""
        found = []
        for path in sorted(self.settings.sandboxes_dir.glob("*/handle.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("store_id") == store_id:
                found.append({"sandbox_id": record["sandbox_id"], "handle": record["handle"]})
        return found


# -------------------------------------------------------------------- helpers


def sandbox_python(settings: Settings) -> str:
    """Absolute path of the Python that runs the agent and python code in the jail."""
    python = settings.local_python or "/usr/bin/python3"
    if not os.path.isabs(python):
        python = shutil.which(python) or python
    return python


_AGENT_DIRS: dict[tuple, Path] = {}


def _agent_with_bytecode(package: Path, python: str, cache_root: Path) -> Path:
    """A directory holding a copy of the agent package with bytecode compiled by the
    sandbox's ``python`` (content-addressed under ``cache_root``, built once), so the agent
    and every python session worker start without compiling the source. Falls back to the
    package's parent when compiling fails: the agent then starts from source and reports
    its own errors."""
    files = package_files(package)
    memo = (str(package), python, tuple((p.name, p.stat().st_mtime_ns) for p in files))
    cached = _AGENT_DIRS.get(memo)
    if cached is not None and cached.is_dir():
        return cached
    import hashlib
    import secrets

    digest = hashlib.sha256(f"{agent_digest(package)}\0{python}".encode()).hexdigest()[:16]
    target = cache_root / digest
    if not (target / package.name / "__pycache__").is_dir():
        tmp = cache_root / f".tmp-{digest}-{secrets.token_hex(4)}"
        copy = tmp / package.name
        try:
            copy.mkdir(parents=True)
            for source in files:
                shutil.copyfile(source, copy / source.name)
            subprocess.run([python, "-I", "-m", "compileall", "-q", "--invalidation-mode",
                            "unchecked-hash", str(copy)], check=True, capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
            for path in (tmp, copy, copy / "__pycache__"):  # readable by the jail's uid
                os.chmod(path, 0o755)
                for child in path.iterdir():
                    if child.is_file():
                        os.chmod(child, 0o644)
            os.rename(tmp, target)
        except (OSError, subprocess.SubprocessError):
            remove_tree(tmp)  # or another process won the rename: use its copy
            if not (target / package.name / "__pycache__").is_dir():
                return package.parent
    _AGENT_DIRS[memo] = target
    return target


def _scratch_kind(root: bool, limits: Limits) -> str:
    """How the jail's scratch mounts are made: "tmpfs" (mounted by the root wrapper: size and
    inode caps), "tmpfs-no-inode-cap" (bubblewrap >= 0.8 ``--size``), else "host-dir"
    (directories on the host's disk, with only the per-file RLIMIT_FSIZE)."""
    if root:
        return "tmpfs"
    return "tmpfs-no-inode-cap" if _bwrap_version() >= (0, 8) else "host-dir"


def _scratch_args(kind: str, limits: Limits, staged: dict[str, str] | None, sb: str) -> list[str]:
    """bubblewrap arguments for /home/user, /tmp and /dev/shm (see :func:`_scratch_kind`)."""
    if kind == "tmpfs":
        return [x for dest, src in (staged or {}).items() for x in ("--bind", src, dest)]
    if kind == "tmpfs-no-inode-cap":
        size = str(scratch_mb(limits) * 1024 * 1024)
        return [x for dest, mode in SCRATCH_MOUNTS.items()
                for x in ("--perms", mode, "--size", size, "--tmpfs", dest)]
    return ["--bind", f"{sb}/home", HOME, "--bind", f"{sb}/tmp", "/tmp", "--tmpfs", "/dev/shm"]


def _write_handle(sandbox_dir: Path, store_id: str, handle: Handle) -> None:
    """(Re)write ``handle.json`` atomically: what reconcile finds the sandbox by."""
    import secrets

    record = {"store_id": store_id, "sandbox_id": handle["sandbox_id"], "handle": handle}
    tmp = sandbox_dir / f".handle-{secrets.token_hex(4)}.json"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, sandbox_dir / "handle.json")


def _python_prefix(python: str) -> str | None:
    """The install prefix to bind when the sandbox Python lives outside /usr, else None."""
    real = os.path.realpath(python)
    if real.startswith("/usr/"):
        return None
    return os.path.dirname(os.path.dirname(real))


def _find_tool(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")


def _which(tool: str) -> str:
    path = _find_tool(tool)
    if path is None:
        raise ProviderUnavailableError(f"the local provider needs {tool!r}; install it")
    return path


_BWRAP_VERSION: tuple[int, ...] | None = None


def _bwrap_version() -> tuple[int, ...]:
    global _BWRAP_VERSION
    if _BWRAP_VERSION is None:
        try:
            out = subprocess.run([_which("bwrap"), "--version"], capture_output=True, text=True).stdout
            _BWRAP_VERSION = tuple(int(x) for x in out.split()[-1].split(".")[:2])
        except (OSError, ValueError, IndexError):
            _BWRAP_VERSION = (0, 0)
    return _BWRAP_VERSION


def _probe_userns(bwrap: str, uid: int | None) -> str | None:
    """None when an unprivileged bwrap can build a jail (as root: through the ``unshare``
    that drops to ``uid`` in ``create``), else the error."""
    # --as-pid-1: without it bwrap leaves its namespace init to be reaped by the host's init.
    cmd = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--as-pid-1",
           "--ro-bind", "/", "/", "true"]  # fmt: skip
    try:
        result = subprocess.run(cmd if uid is None else [*_drop_to(uid), *cmd], capture_output=True,
                                text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode != 0:
        return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
    return None


def _etc_entry(path: str, data_fds: list[int]) -> list[str]:
    """bubblewrap arguments that show the host's ``path`` (under /etc) read-only in the jail.
    Each bind costs bubblewrap a mount, a remount and a read of its mount table (~0.7 ms,
    growing with the number of mounts), so a link into /usr is recreated as a link and a
    world-readable file is copied into the jail's root tmpfs (read-only with the root);
    only directories and files the jail uid could not read are bound (host permissions kept)."""
    try:
        st = os.lstat(path)
    except OSError:
        return []
    if stat.S_ISLNK(st.st_mode) and os.path.realpath(path).startswith("/usr/"):
        return ["--symlink", os.readlink(path), path]
    if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IROTH:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            data_fds.append(fd)
            return ["--perms", "0644", "--file", str(fd), path]
    if stat.S_ISDIR(st.st_mode):
        copied = _etc_tree(path, st.st_mode, data_fds)
        if copied is not None:
            return copied
    return ["--ro-bind-try", path, path]


def _etc_tree(path: str, mode: int, data_fds: list[int]) -> list[str] | None:
    """bubblewrap arguments that recreate the directory ``path`` in the jail's root tmpfs,
    as :func:`_etc_entry` does a file: its directories, its files and its links as they
    are (a link resolves in the jail, as through a bind); None when it holds more than
    ETC_TREE_MAX entries or anything the jail uid could not read or list (then it is
    bound, so the host's permissions still refuse it)."""
    args: list[str] = []
    opened: list[int] = []
    count = 0

    def walk(folder: str, mode: int) -> bool:
        nonlocal count
        if mode & 0o005 != 0o005:
            return False
        args.extend(["--perms", f"{stat.S_IMODE(mode) & 0o755:04o}", "--dir", folder])
        entries = []
        with os.scandir(folder) as listing:
            for entry in listing:
                count += 1
                if count > ETC_TREE_MAX:
                    return False
                entries.append(entry)
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                args.extend(["--symlink", os.readlink(entry.path), entry.path])
            elif stat.S_ISDIR(st.st_mode):
                if not walk(entry.path, st.st_mode):
                    return False
            elif stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IROTH:
                opened.append(os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW))
                args.extend(["--perms", f"{stat.S_IMODE(st.st_mode) & 0o755:04o}", "--file",
                             str(opened[-1]), entry.path])
            else:
                return False
        return True

    try:
        copied = walk(path, mode)
    except OSError:
        copied = False
    if copied:
        data_fds.extend(opened)
        return args
    for fd in opened:
        os.close(fd)
    return None


def _drop_to(uid: int) -> list[str]:
    """The command prefix that execs the rest as ``uid`` (and gid ``uid``) with no
    supplementary groups and no capabilities: util-linux ``unshare`` with no namespace,
    whose ``--setuid`` takes a number (``setpriv --reuid`` first looks the uid up as a user
    name, through NSS: ~1-3 ms more)."""
    return [_which("unshare"), f"--setgid={uid}", f"--setuid={uid}"]


def _as_uid(uid: int | None) -> dict[str, Any]:
    """Popen arguments that run the child as ``uid`` (and gid ``uid``) with no supplementary
    groups: what :func:`_drop_to` does, without its exec."""
    return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}


def _make_dirs(sandbox_dir: Path, uid: int, gid: int, scratch_on_disk: bool) -> None:
    """sock/ (the caller's, 0700), and home/, tmp/ owned by the jail's host uid when they
    are not tmpfs."""
    (sandbox_dir / "sock").mkdir(mode=0o700)
    for name, mode in (("home", 0o700), ("tmp", 0o1777)) if scratch_on_disk else ():
        path = sandbox_dir / name
        path.mkdir()
        os.chmod(path, mode)
        if os.geteuid() == 0:
            os.chown(path, uid, gid)


def _listen(folder: Path) -> int:
    """A listening unix socket at ``folder/SOCKET_NAME`` (bound through a short
    ``/proc/self/fd`` path: sun_path holds ~108 bytes); its fd, inheritable."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        sock.bind(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dir_fd)
    return sock.detach()


def _agent_files(agent_dir: Path) -> list[tuple[str, Path]]:
    """(path under AGENT_DIR, host file) of the agent package and its bytecode."""
    package = agent_dir / PACKAGE_DIR.name
    files = [(f"{package.name}/{p.name}", p) for p in package_files(package)]
    cache = package / "__pycache__"
    if cache.is_dir():
        files += [(f"{package.name}/__pycache__/{p.name}", p) for p in sorted(cache.glob("*.pyc"))]
    return files


def _etc_files(network: bool, egress: bool = False) -> dict[str, str]:
    """Small synthetic /etc files for the jail: {name inside /etc: text}. bubblewrap reads
    each from a pipe (:func:`_pipe_with`): nothing of them is written on the host's disk."""
    files = {
        "passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"user:x:{INNER_UID}:{INNER_UID}:user:{HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nuser:x:{INNER_UID}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsandbox\n",
        "hostname": "sandbox\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
        "networks: files\nprotocols: files\nservices: files\n",
    }
    if network:  # slirp4netns forwards it to the host's resolvers
        files["resolv.conf"] = f"nameserver {SLIRP_DNS}\n"
    elif egress:  # the egress proxy answers allowed names only
        files["resolv.conf"] = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
    return files


def _pipe_with(data: bytes) -> int:
    """The read end of a pipe holding ``data`` (at most a pipe's buffer, 64 KiB), closed."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


def _cap(pid: int, limits: Limits, cgroup: Cgroup | None, uid: int) -> None:
    """Put the (waiting) wrapper ``pid`` in ``cgroup`` and set its rlimits, which every
    later process of the jail inherits: per-file size and open files always; memory and
    processes too when there is no cgroup."""
    import resource

    for procs in cgroup.procs_files() if cgroup else ():
        with open(procs, "w") as f:
            f.write(str(pid))
    caps = {resource.RLIMIT_FSIZE: limits.disk_mb * 1024 * 1024, resource.RLIMIT_NOFILE: OPEN_FILES}
    if cgroup is None:
        # RLIMIT_NPROC counts every process of the uid on the host, so allow for those
        # already running. RLIMIT_DATA rather than RLIMIT_AS: V8 (node) reserves GBs of
        # address space.
        caps[resource.RLIMIT_NPROC] = limits.pids + _count_tasks(uid)
        caps[resource.RLIMIT_DATA] = limits.memory_mb * 1024 * 1024
    for which, value in caps.items():
        resource.prlimit(pid, which, (value, value))


def _write_fstab(sandbox_dir: Path, entries: list[tuple[str, str, str, str]]) -> str:
    """``entries`` as an fstab (root's, in the sandbox dir) for the wrapper's ``mount -a``."""

    def field(text: str) -> str:  # fstab's octal escapes
        for char in "\\ \t\n":
            text = text.replace(char, f"\\{ord(char):03o}")
        return text

    path = sandbox_dir / "fstab"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(" ".join(map(field, entry)) + " 0 0\n" for entry in entries)
    return str(path)


def _count_tasks(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
    return count


def _stage_dir(name: str) -> str:
    """An empty root-owned mount point under STAGE_DIR (mounted on only in private namespaces)."""
    path = os.path.join(STAGE_DIR, name)
    os.makedirs(path, mode=0o755, exist_ok=True)
    for checked in (STAGE_DIR, path):
        st = os.lstat(checked)
        if st.st_uid != 0 or not os.path.isdir(checked) or os.path.islink(checked):
            raise ProviderError(f"{checked} must be a root-owned directory")
    return path


def _start_slirp(
    jail_pid: int, exit_fd: int, uid: int | None, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """slirp4netns for the jail's network namespace, as the jail's host uid (``uid`` when the
    caller is root): returns the process and the read end of its ready pipe. It joins the user
    namespace that owns the jail's netns (bubblewrap's outer one: with ``--disable-userns`` the
    jail's pid 1 sits in a nested one), passed as open fds so no path can be swapped."""
    import fcntl

    net_fd = os.open(f"/proc/{jail_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    fds = [net_fd]
    try:
        user_fd = fcntl.ioctl(net_fd, NS_GET_USERNS)
        fds.append(user_fd)
        ready_r, ready_w = os.pipe()
        fds.append(ready_w)
        command = [_which("slirp4netns"), "--configure", "--mtu=65520", "--disable-host-loopback",
                   "--enable-seccomp", f"--exit-fd={exit_fd}", f"--ready-fd={ready_w}",
                   f"--userns-path=/proc/self/fd/{user_fd}", "--netns-type=path",
                   f"/proc/self/fd/{net_fd}", "tap0"]  # fmt: skip
        proc = spawn_helper(command, log, [exit_fd, ready_w, net_fd, user_fd], ready_r, "slirp",
                            **_as_uid(uid))
    finally:
        for fd in fds:
            os.close(fd)
    return proc, ready_r


def _read_info(fd: int, deadline: float) -> dict[str, Any]:
    """bwrap's --info-fd JSON (holds the namespace's pid 1)."""
    data = b""
    while True:
        with contextlib.suppress(ValueError):
            info = json.loads(data)
            if isinstance(info, dict) and "child-pid" in info:
                return info
        chunk = _read_some(fd, deadline, "bubblewrap to set up the jail")
        if not chunk:
            raise ProviderError("bubblewrap exited before setting up the jail")
        data += chunk


def _read_some(fd: int, deadline: float, what: str) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        raise ProviderError(f"timed out waiting for {what}")
    return os.read(fd, 65536)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return "(none)"
    return text or "(empty)"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state, field 3)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22: starttime


def _same_process(pid: int, start: int | None) -> bool:
    """``pid`` is alive (not a zombie) and is the process that started at ``start``."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return start is None or int(fields[19]) == start


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _namespace_pids(handle: Handle) -> set[int]:
    """Host pids of every process in the sandbox's pid namespace."""
    ns = handle.get("pid_ns")
    child = handle["child_pid"]
    if ns is None:
        try:
            ns = int(os.readlink(f"/proc/{child}/ns/pid").split("[")[1].rstrip("]"))
        except (OSError, IndexError, ValueError):
            return set()
    target = f"pid:[{ns}]"
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry.name}/ns/pid") == target:
                    found.add(int(entry.name))
    return found


def _signal_namespace(handle: Handle, sig: int, until_stable: bool) -> None:
    """Send ``sig`` to every process of the namespace; for SIGSTOP repeat until no new ones."""
    done: set[int] = set()
    for _ in range(100):
        pids = _namespace_pids(handle) - done
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        done |= pids
        if not until_stable:
            return
