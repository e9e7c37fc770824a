"""Checks every cloud provider must pass, shared by the fake-SDK tests
(``test_cloud_providers.py``) and the live tests (``test_cloud_live.py``).

Each check drives a provider handle through the real host client
(:class:`~nexus_kernel.agent.client.AgentClient` over ``provider.connect(handle)``), so the
provider's stream adapter carries real agent protocol traffic.
"""

from __future__ import annotations

import time
from typing import Any

from nexus_kernel.agent.client import AgentClient

UNICODE = "héllo ✓ 😀 \u00e9\u0301 中文"


def client_for(provider: Any, handle: dict[str, Any]) -> AgentClient:
    """A host client whose every connection is a fresh ``provider.connect(handle)``."""
    return AgentClient(lambda: provider.connect(handle), handle["token"])


def check_hello(client: AgentClient, languages: tuple[str, ...]) -> None:
    info = client.hello()
    assert set(languages) <= set(info["languages"]), info


def check_python_session(client: AgentClient) -> None:
    assert client.run("python", "x = 41", session="py", timeout=30)["exit_code"] == 0
    result = client.run("python", "print('ready')\nx + 1", session="py", timeout=30)
    assert result["stdout"] == "ready\n"
    assert result["result"] == {"text/plain": "42"}
    error = client.run("python", "1 / 0", session="py", timeout=30)["error"]
    assert error["ename"] == "ZeroDivisionError"
    assert client.run("python", "x", session="py", timeout=30)["result"] == {"text/plain": "41"}


def check_bash_session(client: AgentClient) -> None:
    client.run("bash", "cd /tmp && export NEXUS_A=7", session="sh", timeout=30)
    result = client.run("bash", "echo $NEXUS_A; pwd", session="sh", timeout=30)
    assert result["stdout"].split() == ["7", "/tmp"]


def check_javascript_session(client: AgentClient) -> None:
    client.run("javascript", "var y = 20", session="js", timeout=30)
    result = client.run("javascript", "y * 2 + 2", session="js", timeout=30)
    assert result["result"] == {"text/plain": "42"}, result


def check_stateless_run(client: AgentClient) -> None:
    client.run("python", "z = 5", timeout=30)
    result = client.run("python", "print('z' in globals())", timeout=30)
    assert result["stdout"] == "False\n"


def check_streaming(client: AgentClient) -> None:
    """Output arrives while the code still runs, not all at the end."""
    seen: list[tuple[float, str]] = []

    def on_event(event: dict) -> None:
        if event.get("ev") == "stdout":
            seen.append((time.monotonic(), event["data"]))

    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.4)\n"
    client.run("python", code, session="stream", timeout=30, on_event=on_event)
    finished = time.monotonic()
    assert "".join(data for _, data in seen) == "0\n1\n2\n"
    assert seen[0][0] < finished - 0.6, "the first chunk came only at the end"


def check_framing(client: AgentClient) -> None:
    """UTF-8 text, large output and binary files cross the stream byte-exact."""
    result = client.run("python", f"print({UNICODE!r})", timeout=30)
    assert result["stdout"] == UNICODE + "\n"
    big = client.run("python", "print('ab' * 150_000)", timeout=60)
    assert big["stdout"] == "ab" * 150_000 + "\n"
    blob = bytes(range(256)) * 64 + UNICODE.encode()
    assert client.write_file("blob.bin", blob) == len(blob)
    assert client.read_file("blob.bin") == blob


def check_all_languages(client: AgentClient, languages: tuple[str, ...]) -> None:
    check_hello(client, languages)
    check_python_session(client)
    check_stateless_run(client)
    if "bash" in languages:
        check_bash_session(client)
    if "javascript" in languages:
        check_javascript_session(client)


def check_destroy(provider: Any, handle: dict[str, Any]) -> None:
    """Destroy ends the sandbox and is idempotent."""
    assert provider.alive(handle)
    provider.destroy(handle)
    provider.destroy(handle)
    assert not provider.alive(handle)
