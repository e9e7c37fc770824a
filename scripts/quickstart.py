"""End-to-end demo on the default (local, bubblewrap) provider: the CLI and the Python API.

    python3 scripts/quickstart.py
"""

from __future__ import annotations

import json
import subprocess
import sys

from nexus_kernel import LocalBackend, NexusFS


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "nexus_kernel.cli", *args],
                         capture_output=True, text=True, check=True)
    return out.stdout


def main() -> None:
    print("== CLI ==")
    sandbox_id = json.loads(cli("sandbox", "create", "quickstart-cli", "--json"))["sandbox_id"]
    print(f"$ nexus sandbox create quickstart-cli   -> {sandbox_id}")
    print("$ nexus sandbox run ... -c \"print('Hello from sandbox!')\"")
    print(cli("sandbox", "run", sandbox_id, "-c", "print('Hello from sandbox!')"), end="")
    print(cli("sandbox", "stop", sandbox_id), end="")

    print("\n== Python API ==")
    nx = NexusFS(backend=LocalBackend())
    sandbox = nx.sandbox_create(name="quickstart-api", ttl_minutes=5)
    sid = sandbox["sandbox_id"]
    try:
        for language, code in [
            ("python", "import sys, os\nprint(f'Python {sys.version.split()[0]} as uid {os.getuid()}')"),
            ("javascript", "console.log(JSON.stringify({result: [1, 2, 3].map(x => x * 2)}))"),
            ("bash", "echo \"$USER in $(pwd)\"; ls -A /home/user | wc -l"),
        ]:
            result = nx.sandbox_run(sid, language, code)
            print(f"[{language}] exit={result['exit_code']} "
                  f"time={result['execution_time']:.3f}s\n{result['stdout']}", end="")
        nx.sandbox_run(sid, "python", "total = 40", session="main")
        kept = nx.sandbox_run(sid, "python", "print('session state:', total + 2)", session="main")
        print(kept["stdout"], end="")
        net = nx.sandbox_run(sid, "python", "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('network: ON')\nexcept OSError as e:\n    print('network: off (' + type(e).__name__ + ')')")
        print(net["stdout"], end="")
    finally:
        print(f"stopped: {nx.sandbox_stop(sid)['status']}")


if __name__ == "__main__":
    main()
