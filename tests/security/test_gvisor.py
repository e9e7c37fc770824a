"""What gVisor removes: the same probes from a docker sandbox under runc (the engine's
default) and under runsc (NEXUS_DOCKER_RUNTIME=runsc). Under runc the host kernel answers
them: its version, its symbol table, its dmesg policy; its riskiest calls (io_uring, a
frequent source of kernel exploits, the keyring, userfaultfd) are refused by the seccomp
filter the agent installs (Docker 20.10's default profile lets io_uring through: without
the filter a sandbox got a real host io_uring instance). Under runsc gVisor's user-space
kernel answers every one, and the host kernel is never asked."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Env, provider_ready

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

#: One JSON object: the kernel's answers to probes of the host kernel's surface.
PROBE = r'''
import ctypes, errno, json, os, platform, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def syscall(number, *args):
    result = libc.syscall(number, *args)
    return result if result >= 0 else errno.errorcode[ctypes.get_errno()]
ring = syscall(425, 8, ctypes.create_string_buffer(120))  # io_uring_setup(8, params)
fdinfo = open(f"/proc/self/fdinfo/{ring}").read() if isinstance(ring, int) else ring
keyctl = {"x86_64": 250, "aarch64": 219}[platform.machine()]
# a grandchild (bash -> python) is bound by the filter too: it is inherited, not per process
child = subprocess.run(["bash", "-c", "python3 -c 'import ctypes; l = ctypes.CDLL(None, "
                        "use_errno=True); print(l.syscall(425, 8, ctypes.create_string_buffer(120)),"
                        " ctypes.get_errno())'"], capture_output=True, text=True).stdout.split()
print(json.dumps({
    "release": platform.release(),
    "version": open("/proc/version").read().strip(),
    "kallsyms": os.path.exists("/proc/kallsyms"),
    "dmesg": subprocess.run(["dmesg"], capture_output=True, text=True).stdout[:200],
    "io_uring_fdinfo": fdinfo,
    "userfaultfd": syscall(323, 0),
    "keyctl": syscall(keyctl, 0),
    "child_io_uring": errno.errorcode.get(int(child[1]), child[1]) if child[0] == "-1" else child,
}))
'''


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """The probe's answers: runtime ("runc", "runsc") -> JSON object."""
    found = {}
    for param, runtime in (("docker", "runc"), ("docker-runsc", "runsc")):
        provider_ready(param)
        env = Env(param, tmp_path_factory.mktemp(f"gvisor-{runtime}"))
        try:
            box = env.create(f"probe-{runtime}")
            assert box.record.handle["runtime"] == runtime
            found[runtime] = json.loads(box.ok("python", PROBE))
        finally:
            env.close()
    yield found


def test_runc_sandboxes_reach_the_host_kernel_but_not_its_riskiest_calls(answers):
    runc = answers["runc"]
    if not (os.environ.get("DOCKER_HOST") or "").strip():  # the engine's kernel is this one
        assert runc["release"] == os.uname().release
        assert runc["version"] == Path("/proc/version").read_text().strip()
    assert runc["kallsyms"], "the host kernel's symbol table is visible under runc"
    # the agent's seccomp filter: "this kernel has no such call", in every process
    assert runc["io_uring_fdinfo"] == "ENOSYS", "a host-kernel io_uring instance"
    assert runc["child_io_uring"] == "ENOSYS", runc["child_io_uring"]
    assert runc["userfaultfd"] == "ENOSYS" and runc["keyctl"] == "ENOSYS", runc


def test_runsc_sandboxes_get_gvisor_answers(answers):
    runsc = answers["runsc"]
    assert runsc["release"] == "4.4.0" and runsc["release"] != os.uname().release
    assert runsc["version"] != Path("/proc/version").read_text().strip()
    assert runsc["dmesg"].startswith("[    0.000000] Starting gVisor")
    assert not runsc["kallsyms"], "no kernel symbol table under gVisor"
    assert "SqMask" not in runsc["io_uring_fdinfo"], "gVisor's own io_uring, not the host's"
    assert runsc["userfaultfd"] == "ENOSYS"  # not implemented by gVisor
