"""What nexus is compared against, measured in the same run: bare process spawns, a plain
Jupyter kernel driven by jupyter_client, plain docker-py containers of the sandbox image."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The environment bare baselines run with: as clean as a sandbox's (no NODE_EXTRA_CA_CERTS
#: making node load certificates, no PYTHON* variables), so the comparison is like for like.
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}


def spawn(argv: list[str], env: dict[str, str] | None = CLEAN_ENV,
          cwd: str | os.PathLike[str] | None = None) -> Callable[[], None]:
    """A callable that runs ``argv`` to completion with captured output (like a run does);
    ``env=None`` keeps this process's environment."""

    def run() -> None:
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True,
                       env=env, cwd=cwd)

    return run


class JupyterKernel:
    """A kernel started and driven by jupyter_client, for execute round trips.

    ``argv`` (with ``{connection_file}``) launches a custom kernel through a temporary
    kernelspec; without it the native ``python3`` ipykernel is used.
    """

    def __init__(self, argv: list[str] | None = None, env: dict[str, str] | None = None,
                 name: str = "nexus-bench"):
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        self._tmp = None
        if argv is None:
            self.km = KernelManager(kernel_name="python3")
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="nexus-bench-kernels-")
            spec_dir = Path(self._tmp.name) / name
            spec_dir.mkdir()
            spec = {"argv": argv, "display_name": name, "language": "python", "env": env or {}}
            (spec_dir / "kernel.json").write_text(json.dumps(spec))
            ksm = KernelSpecManager(kernel_dirs=[self._tmp.name])
            self.km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
        self.km.start_kernel()
        self.kc = self.km.blocking_client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, code: str = "print(1)", timeout: float = 60.0) -> dict[str, Any]:
        """One execute round trip: request, every iopub message up to ``idle``, the reply.
        Returns the execute_reply content; collected stdout is under ``"_stdout"``."""
        msg_id = self.kc.execute(code, store_history=False)
        stdout = []
        idle = reply = None
        while idle is None or reply is None:
            if reply is None:
                msg = self.kc.get_shell_msg(timeout=timeout)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg["content"]
            if idle is None:
                msg = self.kc.get_iopub_msg(timeout=timeout)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind = msg["msg_type"]
                if kind == "stream":
                    stdout.append(msg["content"].get("text", ""))
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = msg
        return {**reply, "_stdout": "".join(stdout)}

    def close(self) -> None:
        """Shut the kernel down with a shutdown request (the proxy kernel stops its
        sandbox then; killing it would leave the sandbox running until its TTL)."""
        try:
            self.kc.stop_channels()
            self.km.shutdown_kernel()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()


def proxy_kernel_argv() -> tuple[list[str] | None, str]:
    """The argv that launches the nexus proxy kernel, or (None, why it is not available)."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec_file = root / "kernelspec" / "kernel.json"
    if importlib.util.find_spec("nexus_kernel.__main__") is None:
        return None, "the proxy kernel is not built yet (no nexus_kernel/__main__.py)"
    kernel_dir = root / "nexus_kernel" / "kernel"
    if not any(p.suffix == ".py" for p in kernel_dir.glob("*.py")):
        return None, "the proxy kernel is not built yet (nexus_kernel/kernel/ is empty)"
    if spec_file.is_file():
        argv = json.loads(spec_file.read_text()).get("argv") or []
        if argv:
            argv = [sys.executable if a in ("python", "python3", "{python}") else a for a in argv]
            return argv, ""
    return [sys.executable, "-m", "nexus_kernel", "-f", "{connection_file}"], ""


class DockerBaseline:
    """Plain docker-py containers of the sandbox image: what the docker provider wraps."""

    def __init__(self, image: str, host: str = "", runtime: str | None = None):
        import docker

        self.image = image
        self.runtime = runtime  # the engine's OCI runtime (None: its default)
        self.client = docker.DockerClient(base_url=host) if host else docker.from_env()
        self._made: list[Any] = []

    def run_to_exit(self) -> None:
        """``containers.run(image, python3 -c pass)``: create, start, wait, logs."""
        self.client.containers.run(self.image, ["python3", "-c", "pass"], user="1000:1000",
                                   network_mode="none", labels={"nexus.bench": "1"},
                                   runtime=self.runtime)

    def running(self) -> Any:
        """A detached idle container (``sleep infinity``) of the image."""
        container = self.client.containers.run(
            self.image, ["sleep", "infinity"], detach=True, user="1000:1000",
            network_mode="none", labels={"nexus.bench": "1"}, runtime=self.runtime,
        )
        self._made.append(container)
        return container

    def cleanup(self) -> None:
        """Remove every container this baseline made (also exited ones)."""
        for container in self.client.containers.list(all=True, filters={"label": "nexus.bench=1"}):
            with contextlib.suppress(Exception):  # already gone
                container.remove(force=True)
        self.client.close()


def pss_rss_kb(pids: list[int]) -> tuple[int, int]:
    """(PSS, RSS) in kB summed over ``pids`` from /proc/PID/smaps_rollup."""
    pss = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return pss, rss


def responsiveness_probe() -> subprocess.Popen[str]:
    """A separate process that spawns ``true`` every 20 ms until its stdin closes, then
    prints the spawn latencies (ms) as JSON: how responsive the host stays under load."""
    code = (
        "import json,subprocess,sys,threading,time\n"
        "out=[]; stop=threading.Event()\n"
        "threading.Thread(target=lambda:(sys.stdin.read(),stop.set()),daemon=True).start()\n"
        "while not stop.is_set():\n"
        "    t=time.perf_counter(); subprocess.run(['true']); out.append((time.perf_counter()-t)*1e3)\n"
        "    stop.wait(0.02)\n"
        "print(json.dumps(out))\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ))


def finish_probe(probe: subprocess.Popen[str]) -> list[float]:
    """Stop a :func:`responsiveness_probe` and return its latencies."""
    out, _ = probe.communicate(input="", timeout=60)
    return json.loads(out or "[]")
