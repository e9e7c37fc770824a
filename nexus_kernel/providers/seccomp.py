"""A seccomp filter for local sandboxes: the kernel surface Docker's default profile refuses
(io_uring, the keyring, bpf, perf events, userfaultfd, module and kexec loading, ...).

Written as a classic BPF program by hand (stdlib only, no libseccomp binding): bubblewrap
installs it with ``--seccomp FD`` before it execs the agent, so it binds the agent and every
process of the sandbox, and ``no_new_privs`` keeps it on across exec.

The program checks the architecture field first. Each known ABI has its own syscall numbers:
x86_64 (the x32 ABI, syscall numbers with bit 30 set, is refused outright), i386 (32-bit
code on an x86_64 host) and aarch64; any other ABI is refused outright. A refused call fails
with ENOSYS ("this kernel has no such call"), so programs that probe for io_uring or
userfaultfd fall back as they would on an older kernel.
"""

from __future__ import annotations

import errno
import os
import struct

#: What the filter refuses, by name (the numbers per ABI are in ``_NUMBERS``).
REFUSED = (
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "lookup_dcookie", "quotactl", "quotactl_fd",
    "acct", "swapon", "swapoff", "reboot",
    "vm86", "vm86old",
)  # fmt: skip
REFUSED_ERRNO = errno.ENOSYS

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

#: Syscall numbers per ABI (from the kernel's unistd_64.h, unistd_32.h, asm-generic/unistd.h).
_NUMBERS: dict[int, dict[str, int]] = {
    AUDIT_ARCH_X86_64: {
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
        "perf_event_open": 298, "userfaultfd": 323, "kexec_load": 246,
        "kexec_file_load": 320, "open_by_handle_at": 304, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "acct": 163, "swapon": 167,
        "swapoff": 168, "reboot": 169, "lookup_dcookie": 212, "quotactl": 179,
        "quotactl_fd": 443,
    },
    AUDIT_ARCH_I386: {
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "keyctl": 288, "add_key": 286, "request_key": 287, "bpf": 357,
        "perf_event_open": 336, "userfaultfd": 374, "kexec_load": 283,
        "open_by_handle_at": 342, "init_module": 128, "finit_module": 350,
        "delete_module": 129, "acct": 51, "swapon": 87, "swapoff": 115, "reboot": 88,
        "lookup_dcookie": 253, "quotactl": 131, "quotactl_fd": 443, "vm86": 166,
        "vm86old": 113,
    },
    AUDIT_ARCH_AARCH64: {
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280,
        "perf_event_open": 241, "userfaultfd": 282, "kexec_load": 104,
        "kexec_file_load": 294, "open_by_handle_at": 265, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "acct": 89, "swapon": 224,
        "swapoff": 225, "reboot": 142, "lookup_dcookie": 18, "quotactl": 60,
        "quotactl_fd": 443,
    },
}  # fmt: skip
#: The ABIs a process on a host of each machine type can use, native first.
_HOST_ABIS = {
    "x86_64": (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386),
    "aarch64": (AUDIT_ARCH_AARCH64,),
}

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_OFFSET_NR = 0  # struct seccomp_data: int nr; __u32 arch; ...
_OFFSET_ARCH = 4


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _abi_block(arch: int) -> list[bytes]:
    """Load the syscall number; refuse each listed one; allow the rest."""
    refuse = _insn(_RET_K, _RET_ERRNO | REFUSED_ERRNO)
    block = [_insn(_LD_W_ABS, _OFFSET_NR)]
    if arch == AUDIT_ARCH_X86_64:  # x32 ABI: same arch value, bit 30 in the number
        block += [_insn(_JSET_K, X32_SYSCALL_BIT, jt=0, jf=1), refuse]
    for name in REFUSED:
        number = _NUMBERS[arch].get(name)
        if number is not None:
            block += [_insn(_JEQ_K, number, jt=0, jf=1), refuse]
    block.append(_insn(_RET_K, _RET_ALLOW))
    return block


def program(machine: str | None = None) -> bytes | None:
    """The filter (``struct sock_filter`` array) for this host's machine type, or None when
    the project has no syscall table for it."""
    abis = _HOST_ABIS.get(machine or os.uname().machine)  # platform.machine(), unimported
    if abis is None:
        return None
    code = [_insn(_LD_W_ABS, _OFFSET_ARCH)]
    for arch in abis:
        block = _abi_block(arch)
        if len(block) > 255:  # a classic BPF conditional jump reaches 255 instructions
            raise AssertionError("seccomp block too long for one jump")
        code.append(_insn(_JEQ_K, arch, jt=0, jf=len(block)))
        code += block
    code.append(_insn(_RET_K, _RET_ERRNO | REFUSED_ERRNO))  # an ABI we have no table for
    return b"".join(code)


def program_fd(machine: str | None = None) -> int | None:
    """A readable fd holding :func:`program` (the caller closes it), or None (no table)."""
    data = program(machine)
    if data is None:
        return None
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)  # a few hundred bytes: well within a pipe's buffer
    finally:
        os.close(write_fd)
    return read_fd
