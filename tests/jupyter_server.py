"""A real JupyterLab server for tests, on loopback, that records every HTTP request it gets.

The request log (one JSON line per request: method, URI, status) is how the browser tests
see whether output in the page called the server's REST API.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

_CONFIG = '''
import json

def _log_request(handler):
    with open({log!r}, "a") as log:
        log.write(json.dumps({{"method": handler.request.method, "uri": handler.request.uri,
                              "status": handler.get_status()}}) + "\\n")

c.ServerApp.tornado_settings = {{"log_function": _log_request}}
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterServer:
    """``jupyter lab`` serving ``root`` with a token; ``env`` adds to this process's."""

    def __init__(self, root: Path, workdir: Path, env: dict[str, str]) -> None:
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.log_path = workdir / "requests.jsonl"
        config_dir = workdir / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "jupyter_server_config.py").write_text(_CONFIG.format(log=str(self.log_path)))
        self.output = (workdir / "server.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
             f"--port={self.port}", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
             "--ServerApp.open_browser=False", "--allow-root"],
            env={**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir),
                 "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
                 "JUPYTER_DATA_DIR": str(workdir / "data"), **env},
            stdout=self.output, stderr=subprocess.STDOUT, cwd=root,
        )
        self._wait()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {Path(self.output.name).read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("jupyter lab did not answer within 60 s")

    def requests(self) -> list[dict]:
        """Every request the server has answered so far."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output.close()
