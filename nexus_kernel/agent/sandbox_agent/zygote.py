"""The python zygote: a pristine interpreter kept ready that forks one child per stateless
python run, so a run does not pay for starting python.

The zygote is started exactly as a run's interpreter would be (``python3 -u -c``, the run
environment with a tag of its own, the agent's cwd, limits and uid, the usual site imports)
and runs nothing of user code: per run it receives the run's stdin/stdout/stderr and a
"go" pipe over a socket pair (SCM_RIGHTS) and forks the run's process as the agent's
child, ``clone(CLONE_PARENT | CLONE_CHILD_SETTID)`` through ctypes wrapped in CPython's own
fork hooks (``PyOS_BeforeFork``/``PyOS_AfterFork_*``, as ``os.fork`` does; the child TID goes
where libc keeps the thread's id, found once at boot as the field a probe ``os.fork`` changed
from the parent's pid to the child's): one fork per run, reaped by the agent like a spawned
process. Where that cannot work (a libc other than glibc, no ctypes, another architecture,
the field not found, the clone refused) it forks twice instead: a middle process forks the
run's process, makes it a process group of its own, reports its pid and exits, so the run's
process is reparented to the agent (a child subreaper). ``ctypes`` and what it imported
leave the run's ``sys.modules``. With ctypes the zygote makes itself not dumpable once it
is ready, so a run (same uid) can neither ptrace it nor open its memory to change what later
runs start from; each run makes itself dumpable again, as a fresh interpreter is.
The run's process then does what a fresh interpreter's start would: stdio on the run's
pipes, every other fd closed, ``__main__`` back to a fresh one, the run tag in its
environment (and in the block ``/proc/PID/environ`` shows, so the kill by tag finds it),
``sys.modules`` as the zygote had it before it imported anything; it waits for "go" (the
agent tracks its pid first), then runs the code and exits as ``python3 -c`` would
(traceback without the zygote's frames, exit codes, KeyboardInterrupt -> 130, atexit and
thread shutdown) but without tearing the heap down (each page it would touch is the
zygote's, copied on write: that cost more than the run). ``random`` and ``tempfile`` reseed
after fork; ``os.urandom``, ``uuid`` and ``secrets`` use the kernel.

Not fresh: the string hash seed is the zygote's, so runs forked from one zygote share it
(the order of a set of strings is the same from run to run), and ``/proc/self/cmdline``
shows the zygote's boot code. If the zygote is missing,
busy starting, dies or misbehaves, the run starts a fresh interpreter as before and a new
zygote is started for the next runs; where it cannot work (no subreaper, no writable
``/proc/self/mem``) it is not used again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from array import array

#: Runs inside the zygote (``python3 -u -c``). Everything lives in one function's locals:
#: its globals are the run's ``__main__``. Its command line starts with ZYGOTE_MARK (a run
#: forked from it shows ``#nexus-forked`` there instead).
_BOOT = r"""#nexus-zygote
def _nx(main):
    import os, sys
    had_socket = '_socket' in sys.modules
    import _socket
    main.pop('_nx', None)
    ours = (sys._getframe(0).f_code, sys._getframe(1).f_code)
    def poke(at, needle, value):  # rewrite the bytes after needle in /proc/self/{cmdline,environ}
        with open('/proc/self/stat', 'rb') as f:
            stat = f.read()
        fields = stat[stat.rfind(b')') + 2:].split()
        start, end = int(fields[at]), int(fields[at + 1])
        with open('/proc/self/mem', 'r+b', buffering=0) as mem:
            mem.seek(start)
            found = (b'\0' + mem.read(end - start)).find(needle)
            if found < 0:
                raise OSError('not found: %r' % needle)
            mem.seek(start + found + len(needle) - 1)
            mem.write(value)

    def set_tag(tag):
        poke(47, b'\0NEXUS_RUN_TAG=', tag)

    def exit_status(exc):
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xff
        try:
            print(code, file=sys.stderr)
        except BaseException:
            pass
        return 1

    cloning, added = False, ()
    try:  # fork a run as the agent's child, without a middle process: clone(CLONE_PARENT)
        if not (os.confstr('CS_GNU_LIBC_VERSION') or '').startswith('glibc'):
            raise OSError('not glibc')  # whose thread descriptor the probe below may read
        loaded = set(sys.modules)
        import ctypes
        added = set(sys.modules) - loaded
        api = ctypes.pythonapi  # its calls keep the GIL, as os.fork's do
        api.pthread_self.restype = ctypes.c_void_p
        me = api.pthread_self()
        # Where libc keeps this thread's TID (clone sets the child's there, as fork does):
        # the 4 bytes that held the parent's pid and hold the child's in a forked child.
        before = ctypes.string_at(me, 1024)
        r, w = os.pipe()
        probe = os.fork()
        if probe == 0:
            after = ctypes.string_at(me, 1024)
            mine, theirs = (x.to_bytes(4, sys.byteorder) for x in (os.getpid(), os.getppid()))
            at = [i for i in range(0, 1024, 4) if after[i:i + 4] == mine
                  and before[i:i + 4] == theirs]
            os.write(w, b'%d' % (at[0] if len(at) == 1 else -1))
            os._exit(0)
        os.close(w)
        at = int(os.read(r, 16) or b'-1')
        os.close(r)
        os.waitpid(probe, 0)
        # (number, where the child TID pointer goes among clone's 5 arguments)
        nr, slot = {'x86_64': (56, 3), 'aarch64': (220, 4)}[os.uname().machine]
        if at < 0:
            raise OSError('no TID field')
        clone_args = [0x8000 | 0x01000000 | 17, 0, 0, 0, 0]  # PARENT | CHILD_SETTID | SIGCHLD
        clone_args[slot] = me + at
        clone = api.syscall
        clone.restype = ctypes.c_long
        clone.argtypes = (ctypes.c_long,) * 6

        def sibling():
            api.PyOS_BeforeFork()
            pid = clone(nr, *clone_args)
            if pid == 0:
                api.PyOS_AfterFork_Child()
            else:
                api.PyOS_AfterFork_Parent()
            return pid
        cloning = True
    except Exception:
        pass
    sock = _socket.socket(fileno=3)
    set_tag(os.environ['NEXUS_RUN_TAG'].encode())
    guarded = False
    try:  # not dumpable: a run (same uid) can neither ptrace it nor write its memory
        guarded = api.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except Exception:
        pass
    sock.sendall(b'ready\n')
    while True:
        data, anc, _, _ = sock.recvmsg(65536, 256)
        fds = []
        for _, _, blob in anc:
            fds += [int.from_bytes(blob[i:i + 4], sys.byteorder)
                    for i in range(0, len(blob) - len(blob) % 4, 4)]
        while data and b'\n' not in data:
            data += sock.recv(65536)
        if not data:
            os._exit(0)
        size, _, body = data.partition(b'\n')
        size = int(size)
        while len(body) < size:
            more = sock.recv(size - len(body))
            if not more:
                os._exit(0)
            body += more
        pid = sibling() if cloning else -1
        if pid == 0:
            break
        middle = -1
        if pid > 0:
            sock.sendall(b'%d\n' % pid)
        else:
            cloning = False  # refused here (a seccomp filter, gVisor): the middle from now on
            try:
                middle = os.fork()
            except OSError:
                sock.sendall(b'-1\n')
        if middle == 0:
            try:
                pid = os.fork()
            except OSError:
                pid = -1
            if pid > 0:
                os.setpgid(pid, pid)
            if pid != 0:
                sock.sendall(b'%d\n' % pid)
                os._exit(0)
            break
        for fd in fds:
            os.close(fd)
        if middle > 0:
            os.waitpid(middle, 0)
    if guarded:  # a run is dumpable, as a fresh interpreter (and its /proc/self/mem ours)
        api.prctl(4, 1, 0, 0, 0)
    os.setpgid(0, 0)
    stdin, out, err, go = fds
    os.dup2(stdin, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    tag, code = body[:16], os.fsdecode(body[16:])
    os.environ['NEXUS_RUN_TAG'] = tag.decode()
    set_tag(tag)
    poke(45, b'#nexus-', b'forked')  # ps tells the zygote (infrastructure) from its runs
    if not os.read(go, 1):
        os._exit(1)
    sock.detach()
    os.closerange(3, 1 << 20)
    if not had_socket:
        del sys.modules['_socket']
    for name in added:
        del sys.modules[name]
    if hasattr(sys, 'orig_argv'):
        sys.orig_argv[-1] = code
    globs = sys.modules['__main__'].__dict__
    globs.clear()
    globs.update(main)
    status, sigint = 0, False
    try:
        exec(compile(code, '<string>', 'exec', dont_inherit=True), globs)
    except SystemExit as exc:
        status = exit_status(exc)
    except BaseException as exc:
        status, sigint = 1, isinstance(exc, KeyboardInterrupt)
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code in ours:
            tb = tb.tb_next
        exc.__traceback__ = tb
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
        try:
            sys.excepthook(type(exc), exc, tb)
        except BaseException:
            sys.__excepthook__(type(exc), exc, tb)
        del exc, tb
    # The user-visible part of the interpreter's exit, without tearing the heap down (each
    # page it would touch is the zygote's, copied on write).
    try:
        if 'threading' in sys.modules:
            sys.modules['threading']._shutdown()
        import atexit
        atexit._run_exitfuncs()
    except SystemExit as exc:
        status = exit_status(exc)
    except KeyboardInterrupt:
        status, sigint = 1, True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            status = status or 120
    if sigint:
        import signal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)

_nx(dict(globals()))
"""

#: How ``ps`` tells the zygote: the start of its command line's code.
ZYGOTE_MARK = "#nexus-zygote"
#: Seconds the agent waits for the zygote to report a forked child.
_FORK_TIMEOUT = 5.0
#: Boot failures after which the zygote is not started again.
_MAX_FAILURES = 3


def _is_subreaper() -> bool:
    """True when the agent adopts orphans (pid 1 or a child subreaper)."""
    if os.getpid() == 1:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(0)
        return libc.prctl(37, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value == 1
    except Exception:
        return False


class _Zygote:
    """One zygote process and the agent's end of its socket."""

    def __init__(self, reaper, exe: str, env: dict, base: dict, devnull: int) -> None:
        self.exe = exe
        self.base = base
        self.devnull = devnull
        self.ready = False
        self.dead = False
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.pid = reaper.spawn([exe, "-u", "-c", _BOOT], env, devnull, devnull,
                                    extra=(theirs.fileno(),), on_exit=self._exited)
        finally:
            theirs.close()
        self.sock.settimeout(_FORK_TIMEOUT)

    def _exited(self, code, rusage) -> None:
        self.dead = True

    def wait_ready(self) -> bool:
        try:
            self.ready = self._line() == b"ready"
        except (OSError, ValueError):
            self.ready = False
        return self.ready

    def _line(self) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.sock.recv(64)
            if not chunk:
                raise OSError("the zygote closed its socket")
            data += chunk
        return data.strip()

    def fork(self, code: str, tag: str, fds: tuple, adopt) -> int:
        """Send one run; return its pid (tracked by ``adopt(pid)`` before it may start)."""
        go_r, go_w = os.pipe()
        try:
            payload = tag.encode() + os.fsencode(code)
            msg = b"%d\n" % len(payload) + payload
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", (*fds, go_r)))]
            sent = self.sock.sendmsg([msg], rights)
            self.sock.sendall(msg[sent:])
            pid = int(self._line())
            if pid <= 0:
                raise OSError("the zygote cannot fork")
            adopt(pid)
            os.write(go_w, b"x")
            return pid
        finally:
            os.close(go_r)
            os.close(go_w)

    def stop(self) -> None:
        self.dead = True
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            os.kill(self.pid, 9)


class Zygotes:
    """The agent's python zygote: forks a stateless python run's process when it can."""

    def __init__(self, reaper) -> None:
        self.reaper = reaper
        self._lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._starting = False
        self._failures = 0
        #: NEXUS_AGENT_ZYGOTE=0 in the agent's environment: always a fresh interpreter (to
        #: measure against, or to rule the zygote out).
        self._usable: bool | None = False if os.environ.get("NEXUS_AGENT_ZYGOTE") == "0" else None
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    def fork(self, argv, env: dict, tag: str, stdin, stdout: int, stderr: int, on_exit,
             tally) -> int | None:
        """The pid of the run's process forked by the zygote, or None: then spawn it fresh
        (and a zygote is being started for the next runs)."""
        if len(argv) != 4 or argv[1:3] != ["-u", "-c"] or self._failures >= _MAX_FAILURES:
            return None
        base = dict(env)
        base.pop("NEXUS_RUN_TAG", None)
        with self._lock:
            z = self._zygote
            if z is not None and (z.dead or z.exe != argv[0] or z.base != base):
                z.stop()
                z = self._zygote = None
            if z is None or not z.ready:
                self._start(argv[0], env, base)
                return None
            fds = (self._devnull if stdin is None else stdin, stdout, stderr)
            try:
                return z.fork(argv[3], tag, fds,
                              lambda pid: self.reaper.adopt(pid, on_exit, tally))
            except (OSError, ValueError):
                z.stop()
                self._zygote = None
                return None

    def _start(self, exe: str, env: dict, base: dict) -> None:
        """Start a zygote in the background (called with the lock held)."""
        if self._starting:
            return
        if self._usable is None:
            self._usable = _is_subreaper()
        if not self._usable:
            self._failures = _MAX_FAILURES
            return
        self._starting = True
        zenv = dict(env)
        zenv["NEXUS_RUN_TAG"] = os.urandom(8).hex()
        threading.Thread(target=self._boot, args=(exe, zenv, base), name="zygote",
                         daemon=True).start()

    def _boot(self, exe: str, env: dict, base: dict) -> None:
        z = None
        try:
            z = _Zygote(self.reaper, exe, env, base, self._devnull)
            ok = z.wait_ready()
        except OSError:
            ok = False
        with self._lock:
            self._starting = False
            if ok:
                self._failures = 0
                self._zygote = z
            else:
                self._failures += 1
                if z is not None:
                    z.stop()
