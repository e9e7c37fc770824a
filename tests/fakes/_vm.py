"""A local stand-in for one cloud sandbox, shared by the E2B and Modal fakes.

Each fake sandbox is a private directory. Paths that exist inside the real sandbox
(``/home/user``, ``/run/nexus``, ``/opt/nexus-agent``) are mapped into it, in command lines
and file paths, so the REAL agent (the ``nexus_kernel/agent/sandbox_agent`` package) runs as a local
subprocess and the SDK-shaped stdio streams carry real protocol traffic. It is not a jail:
the fakes test the SDK boundary, not isolation.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Absolute paths of the real sandbox that the fake maps into its directory.
SANDBOX_PREFIXES = ("/home/user", "/run/nexus", "/opt/nexus-agent")
_PREFIX_RE = re.compile(
    r"(?<![\w./-])(" + "|".join(map(re.escape, SANDBOX_PREFIXES)) + r")(?=/|\b|$)"
)


class FakeVM:
    """A directory plus the processes started "inside" it."""

    def __init__(self, prefix: str):
        # Short path: the agent's unix socket path must stay under 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        for sub in ("home/user", "tmp", "run", "opt"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        self.paused = False
        self.killed = False

    # ------------------------------------------------------------------ paths

    def map(self, text: str) -> str:
        """Rewrite sandbox paths in ``text`` (a path or a shell line) to host paths."""
        return _PREFIX_RE.sub(lambda m: str(self.root) + m.group(1), text)

    def host_path(self, path: str) -> Path:
        if not path.startswith("/"):
            path = "/home/user/" + path
        return Path(self.map(path))

    @property
    def env(self) -> dict[str, str]:
        bindir = os.path.dirname(sys.executable)  # "python3" is this interpreter
        return {
            "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.root / "home/user"),
            "TMPDIR": str(self.root / "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    # ------------------------------------------------------------------ processes

    def spawn(
        self, argv: list[str], *, stdin: bool, cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """Start ``argv`` (sandbox paths mapped) with piped stdout/stderr; ``env`` adds to
        (or replaces in) the sandbox's environment."""
        if self.killed:
            raise RuntimeError("the fake sandbox was killed")
        proc = subprocess.Popen(
            [self.map(arg) for arg in argv],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(self.host_path(cwd)) if cwd else str(self.root / "home/user"),
            env={**self.env, **(env or {})},
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def signal_all(self, signum: int) -> None:
        for pid in self._all_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def kill_tree(self, proc: subprocess.Popen) -> None:
        """SIGKILL ``proc`` and all its descendants (a process ended by the platform)."""
        for pid in self._all_pids(roots=[proc.pid]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def end_processes(self) -> None:
        """SIGKILL every process, keeping the files (a cold boot from disk)."""
        for pid in self._all_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def pause(self) -> None:
        self.signal_all(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal_all(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL every process of the sandbox and delete its directory. Idempotent."""
        if self.killed:
            return
        self.killed = True
        for _ in range(3):
            pids = self._all_pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _all_pids(self, roots: list[int] | None = None) -> list[int]:
        """Every live process started here (or the ``roots``), with all their descendants."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if fields[0] == b"Z":
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
        found: list[int] = []
        todo = roots if roots is not None else [p.pid for p in self.processes if p.poll() is None]
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found
