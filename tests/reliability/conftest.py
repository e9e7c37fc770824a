"""Faults and bad input: the fixtures and helpers of ``tests/security/conftest.py`` (one
manager and one canary per real provider), plus child processes that drive the store and get
SIGKILLed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from ..conftest import ROOT
from ..security import conftest as security
from ..security.conftest import Env, wait_until  # noqa: F401  (re-exported for the tests)

# The security suite's fixtures (one manager and one canary per provider) serve here too,
# on the providers alone (faults of the store and the client do not depend on the runtime).
env = pytest.fixture(scope="session", params=security.PROVIDER_PARAMS,
                     name="env")(security.provider_env)
canary = security.canary
box = security.box
shared_box = security.shared_box


def spawn(env: Env, code: str, **kwargs: Any) -> subprocess.Popen[str]:
    """A Python child process on ``env``'s store (its stdout is a text pipe)."""
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env.environ(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs,
    )  # fmt: skip


def cli(env: Env, *args: str) -> subprocess.Popen[str]:
    """A `nexus` CLI child process on ``env``'s store."""
    return subprocess.Popen(
        [sys.executable, "-m", "nexus_kernel.cli", *args], cwd=ROOT, env=env.environ(),
        text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def sigkill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL: no cleanup of any kind runs in the victim."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def read_line(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """The child's next stdout line (fails the test when it dies or stalls first)."""
    import select

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if line:
                return line
            break
    proc.kill()
    raise AssertionError(f"the child printed nothing; stderr: {proc.stderr.read()[-2000:]}")


# ------------------------------------------------------------------ the proxy kernel


@pytest.fixture(scope="session")
def kernel_path(tmp_path_factory: pytest.TempPathFactory):
    """JUPYTER_PATH holding the Nexus Sandbox kernelspec, installed by the real CLI."""
    prefix = tmp_path_factory.mktemp("jupyter")
    out = subprocess.run([sys.executable, "-m", "nexus_kernel.cli", "kernel", "install",
                          "--prefix", str(prefix)], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"the proxy kernel cannot be installed here: {out.stderr.strip()}")
    return prefix / "share" / "jupyter"


def start_kernel(env: Env, kernel_path, **extra: str) -> tuple[Any, Any]:
    """A started "Nexus Sandbox" kernel on ``env``'s store and a ready blocking client."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    specs = KernelSpecManager(kernel_dirs=[str(kernel_path / "kernels")])
    manager = KernelManager(kernel_name="nexus-sandbox", kernel_spec_manager=specs)
    manager.start_kernel(env={**env.environ(), "JUPYTER_PATH": str(kernel_path), **extra})
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    return manager, client


@pytest.fixture
def kernel_client(env: Env, kernel_path):
    manager, client = start_kernel(env, kernel_path)
    yield manager, client
    client.stop_channels()
    if manager.is_alive():
        manager.shutdown_kernel(now=True)


def kernel_run(client: Any, code: str, timeout: float = 120) -> tuple[dict, str]:
    """Execute a cell; its reply content and everything it printed."""
    texts: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            texts.append(msg["content"]["text"])

    reply = client.execute_interactive(code, output_hook=hook, timeout=timeout)
    return reply["content"], "".join(texts)


def kernel_sandbox_id(client: Any) -> str:
    """The id of the kernel's sandbox (``%sandbox status``: "sandbox <id> ...")."""
    _, text = kernel_run(client, "%sandbox status")
    return text.split()[1]


def kernel_pid(manager: Any) -> int:
    provisioner = getattr(manager, "provisioner", None)
    process = getattr(provisioner, "process", None) or getattr(manager, "kernel", None)
    return process.pid
