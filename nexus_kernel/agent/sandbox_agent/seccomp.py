"""Install the host's seccomp filter on the agent before it serves (docker sandboxes).

The host builds the program (``nexus_kernel.providers.seccomp``: io_uring, the keyring, bpf,
perf events, userfaultfd, module loading ... refused with ENOSYS) and passes it on the agent's
command line. The agent installs it first thing, before any thread or child exists, so it
binds every process of the sandbox (filters stack on the engine's own profile; ``no_new_privs``
keeps them across exec). Failing to install it ends the agent: a sandbox never runs without.
"""

from __future__ import annotations

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
#: struct sock_filter is 8 bytes; a classic BPF program has at most 4096 instructions.
INSN_BYTES = 8
MAX_INSNS = 4096


def install(program: bytes) -> None:
    """Install ``program`` (a ``struct sock_filter`` array) on this process."""
    if not program or len(program) % INSN_BYTES or len(program) // INSN_BYTES > MAX_INSNS:
        raise SystemExit("sandbox_agent: the seccomp filter is not a BPF program")
    try:
        import ctypes
    except ImportError as exc:  # a python3 built without ctypes cannot install it
        raise SystemExit(f"sandbox_agent: cannot install the seccomp filter: {exc}") from None

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    code = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // INSN_BYTES, ctypes.cast(code, ctypes.c_void_p))
    ulong = ctypes.c_ulong
    if (libc.prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0
            or libc.prctl(PR_SET_SECCOMP, ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog),
                          ulong(0), ulong(0)) != 0):
        import os

        raise SystemExit("sandbox_agent: cannot install the seccomp filter: "
                         + os.strerror(ctypes.get_errno()))
