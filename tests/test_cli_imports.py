"""CLI cold start: commands import only what they use. ``nexus --help``, ``sandbox list`` and
``status`` load no provider SDK, no Jupyter, no asyncio, and (when they only read) neither
diskcache nor the module that makes ids: each command runs in a fresh process that reports
``sys.modules``. Not a timing test: what is not imported cannot cost."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nexus_kernel.errors import UsageError
from nexus_kernel.models import SandboxRecord, Status
from nexus_kernel.reaper import host_boot_id
from nexus_kernel.store import Store

from .conftest import ROOT, needs_bwrap

#: Never imported by a command that does not use them.
HEAVY = ["docker", "e2b", "modal", "IPython", "ipykernel", "jupyter_client", "zmq", "asyncio",
         "subprocess", "nexus_kernel.providers.local", "nexus_kernel.providers.docker",
         "nexus_kernel.agent.client", "nexus_kernel.pool", "nexus_kernel.untrusted"]
#: Imported by the first write only (diskcache's open, new ids and tokens, lock owners).
WRITERS = ["diskcache", "secrets", "hashlib", "socket"]
#: Runs ``nexus ARGV`` in-process, then prints the exit code and the heavy modules it loaded.
PROBE = """
import json, sys
from nexus_kernel.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:  # --help
    code = exc.code
heavy = json.loads(sys.argv[1])
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
local = sys.modules.get("nexus_kernel.providers.local")
probes = len(local.LocalProvider._probe_cache) if local else 0  # bubblewrap jails started
print(json.dumps({"code": code, "loaded": loaded, "probes": probes}), file=sys.stderr)
"""


def probe(*argv: str) -> dict:
    """``nexus ARGV`` in a fresh process: its exit code, the heavy modules it loaded, and
    how many bubblewrap availability probes it ran."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY + WRITERS), *argv],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, done.stderr
    return report


def loaded_by(*argv: str) -> list[str]:
    return probe(*argv)["loaded"]


@pytest.fixture
def used_home(nexus_home: Path) -> str:
    """A store holding a stopped docker sandbox of this user, whose throttled reap and host
    boot check have been recorded (as after any earlier command); the sandbox's id."""
    now = time.time()
    record = SandboxRecord(sandbox_id="sb_cold", name="cold", owner="tester", provider="docker",
                           status=Status.STOPPED, ttl_minutes=10, created_at=now,
                           last_active_at=now, expires_at=now + 600, stopped_at=now)
    store = Store(nexus_home / "store")
    store.insert(record.to_dict())
    store.set_meta("host_boot", host_boot_id())
    store.set_meta("last_reap", now)
    store.close()
    return record.sandbox_id


def test_help_imports_nothing_heavy(nexus_home):
    assert loaded_by("--help") == []
    assert loaded_by("sandbox", "--help") == []


def test_list_and_status_only_read(used_home):
    assert loaded_by("sandbox", "list", "--json") == []
    assert loaded_by("sandbox", "status", used_home, "--json") == []


def test_a_due_reap_writes_through_diskcache(used_home):
    """The throttled reap is due again: the claim is a write, made by diskcache."""
    store = Store(Path(os.environ["NEXUS_HOME"]) / "store")
    store.set_meta("last_reap", 0.0)
    store.close()
    assert "diskcache" in loaded_by("sandbox", "list", "--json")


@needs_bwrap
def test_list_asks_a_local_sandbox_liveness_without_probing_bubblewrap(nx):
    """Liveness is a /proc read: ``list`` and ``status`` do not start the jail that
    ``check_available`` starts to see that bubblewrap works (create still does)."""
    sandbox_id = nx.sandbox_create("live")["sandbox_id"]
    for argv in (["sandbox", "list", "--json"], ["sandbox", "status", sandbox_id, "--json"]):
        report = probe(*argv)
        assert report["probes"] == 0 and "nexus_kernel.providers.local" in report["loaded"]
        assert "nexus_kernel.agent.client" not in report["loaded"]  # no connection is made
        assert "hashlib" not in report["loaded"]  # nor a token, a digest or a deploy
    assert nx.sandbox_status(sandbox_id)["status"] == "active"


@needs_bwrap
def test_a_run_in_a_local_sandbox_does_not_probe_bubblewrap(nx):
    """A stream to a local sandbox is a socket the host made: ``run`` in a new process starts
    no probe jail (``Provider.connect_needs_check``) (1 s)."""
    sandbox_id = nx.sandbox_create("live")["sandbox_id"]
    assert probe("sandbox", "run", sandbox_id, "-c", "print(1)")["probes"] == 0


#: Command lines whose parse must not change when only their own command's options are built.
ARGVS = [["sandbox", "list", "--json"], ["sandbox", "list", "--all"], ["sandbox", "status", "sb_x"],
         ["sandbox", "run", "sb_x", "-c", "print(1)", "--timeout", "5", "--session", "s"],
         ["sandbox", "create", "demo", "--no-network", "--allow", "pypi.org"],
         ["sandbox", "fork", "sb_x", "--count", "2"], ["sandbox", "pool", "fill", "--size", "3"],
         ["template", "create", "t", "--pip", "numpy"], ["kernel", "install", "--user"],
         ["sandbox", "--json", "list"], ["sandbox", "-h"], ["sandbox", "nope"]]


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_a_command_builds_only_its_own_options(nexus_home, argv):
    """``nexus sandbox list`` builds no other sandbox command's options (most of argparse's
    cold start), and parses exactly as the whole parser does."""
    from nexus_kernel.cli import build_parser
    from nexus_kernel.config import Settings

    settings = Settings.load()
    lean, full = build_parser(settings, argv), build_parser(settings)
    sandbox = lean._subparsers._group_actions[0].choices["sandbox"]
    choices = sandbox._subparsers._group_actions[0].choices
    if argv[0] == "sandbox" and not argv[1].startswith("-"):
        assert [n for n, p in choices.items() if p] == ([argv[1]] if argv[1] in choices else [])

    def parsed(parser) -> object:  # the namespace, or the error or exit it ends with
        try:
            return {k: v for k, v in vars(parser.parse_known_args(argv)[0]).items()
                    if k != "show_help"}  # bound methods of different parser objects
        except (UsageError, SystemExit) as exc:
            return repr(exc)

    with contextlib.redirect_stdout(io.StringIO()):
        assert parsed(lean) == parsed(full)
    assert sandbox.format_help() == full._subparsers._group_actions[0].choices[
        "sandbox"].format_help()
