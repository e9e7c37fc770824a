"""Host secrets never enter a sandbox: a canary secret put in the host environment (of the
process that creates the sandbox and of the one that runs code) is absent from the code's
environment and from every /proc/*/environ readable inside, on the local and docker providers,
through the API and through the CLI."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from ..conftest import ROOT
from .conftest import LANGUAGES

pytestmark = pytest.mark.timeout(120)

CANARY_NAME = "NEXUS_TEST_CANARY_SECRET"

ENVIRONMENT = {
    "python": (
        "import glob, os\n"
        "print(repr(dict(os.environ)))\n"
        "for path in glob.glob('/proc/[0-9]*/environ'):\n"
        "    try:\n"
        "        print(open(path, 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
    ),
    # unreadable ones (the agent's, the relay's) fail their redirect: not an error here
    "bash": "env\nfor f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null; true\n",
    "javascript": (
        "const fs = require('fs');\n"
        "console.log(JSON.stringify(process.env));\n"
        "for (const pid of fs.readdirSync('/proc').filter((p) => /^\\d+$/.test(p))) {\n"
        "  try { console.log(fs.readFileSync(`/proc/${pid}/environ`, 'latin1')); } catch (e) {}\n"
        "}\n"
    ),
}


@pytest.fixture
def canary_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "canary-" + secrets.token_hex(12)
    monkeypatch.setenv(CANARY_NAME, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", value)  # a name tools look for
    return value


@pytest.mark.parametrize("language", LANGUAGES)
def test_host_environment_does_not_leak_into_the_sandbox(env, canary_secret, language):
    box = env.create("secrets")  # created while the canary is in this process's environment
    try:
        out = box.ok(language, ENVIRONMENT[language])
        assert "HOME" in out  # the probe did see the sandbox's own environment
        assert canary_secret not in out and CANARY_NAME not in out
        assert "AWS_SECRET_ACCESS_KEY" not in out
    finally:
        box.stop()


def test_cli_environment_does_not_leak_into_the_sandbox(env, canary_secret):
    """The `nexus` CLI, each command in its own process with the canary in its environment."""
    base = {**os.environ, "NEXUS_HOME": str(env.home), "NEXUS_USER": "tester",
            "NEXUS_PROVIDER": env.name, "NEXUS_MEMORY_MB": "256"}

    def nexus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nexus_kernel.cli", *args], cwd=ROOT,
                              env=base, capture_output=True, text=True, timeout=60)

    created = nexus("sandbox", "create", "cli-secrets", "--json")
    assert created.returncode == 0, created.stderr
    sandbox_id = json.loads(created.stdout)["sandbox_id"]
    try:
        run = nexus("sandbox", "run", sandbox_id, "-l", "bash", "-c", ENVIRONMENT["bash"])
        assert run.returncode == 0, run.stderr
        assert "HOME=" in run.stdout
        assert canary_secret not in run.stdout and CANARY_NAME not in run.stdout
    finally:
        assert nexus("sandbox", "stop", sandbox_id).returncode == 0
