"""Egress by allow-list (local provider): the sandbox reaches an allowed name, through the
host-side proxy only; an unlisted name, a raw IP, another port and a DNS lookup of an unlisted
name each fail within 2 s and each is a denial event, in the run's result and in the
sandbox's events. Traffic goes only to servers these tests start on the host's loopback (the
proxy's test-only hosts override maps ``allowed.test`` there), except the pip test, which runs
only where the package index answers."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.egress import denial_line
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import SandboxRecord

from ..conftest import nexus
from .conftest import PROVIDER_PARAMS, needs_setpriv, provider_ready, run_as_nobody, wait_until

pytestmark = pytest.mark.timeout(120)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = f"hello {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """An HTTP server on the host's loopback; its port."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(scope="module", params=PROVIDER_PARAMS)
def box(request: pytest.FixtureRequest, server: int,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SandboxManager, SandboxRecord]]:
    provider_ready(request.param)
    settings = Settings.load(home=tmp_path_factory.mktemp("egress") / "home",
                             provider=request.param, egress_test_hosts="allowed.test=127.0.0.1")
    manager = SandboxManager(settings)
    record = manager.create("egress", network=[f"allowed.test:{server}"])
    yield manager, record
    manager.stop(record.sandbox_id)
    manager.close()


#: Prints {probe: [succeeded, seconds, detail]}: urllib follows the sandbox's HTTP(S)_PROXY.
PROBES = r'''
import http.client, json, socket, time, urllib.request
PORT = {port}
def timed(call):
    start = time.monotonic()
    try:
        detail, ok = str(call())[:80], True
    except Exception as exc:
        detail, ok = repr(exc)[:120], False
    return [ok, round(time.monotonic() - start, 3), detail]
def get(url):
    return urllib.request.urlopen(url, timeout=10).read().decode()
def tunnel():  # CONNECT through the proxy, as HTTPS does
    conn = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
    conn.set_tunnel("allowed.test", PORT)
    conn.request("GET", "/tunnel")
    return conn.getresponse().read().decode()
print(json.dumps({{
    "allowed": timed(lambda: get(f"http://allowed.test:{{PORT}}/plain")),
    "tunnel": timed(tunnel),
    "unlisted_name": timed(lambda: get(f"http://unlisted.test:{{PORT}}/")),
    "raw_ip": timed(lambda: get("http://10.1.2.3/")),
    "other_port": timed(lambda: get("http://allowed.test:1/")),
    "dns_unlisted": timed(lambda: socket.getaddrinfo("unlisted.example.org", 443)),
    "direct_ip": timed(lambda: socket.create_connection(("10.1.2.3", 80), timeout=5)),
}}))
'''


def test_allowed_name_reaches_its_server_and_the_rest_is_denied_and_recorded(box, server):
    manager, record = box
    result = manager.run(record.sandbox_id, "python", PROBES.format(port=server), timeout=60)
    assert result.exit_code == 0, result.stderr
    probes = json.loads(result.stdout)
    assert probes["allowed"][:1] == [True] and "hello /plain" in probes["allowed"][2], probes
    assert probes["tunnel"][:1] == [True] and "hello /tunnel" in probes["tunnel"][2], probes
    for name in ("unlisted_name", "raw_ip", "other_port", "dns_unlisted", "direct_ip"):
        succeeded, seconds, detail = probes[name]
        assert not succeeded, f"{name} got through: {detail}"
        assert seconds < 2.0, f"{name} took {seconds} s to fail"
    assert "403" in probes["unlisted_name"][2]
    denied = {(e["host"], e["port"]) for e in result.network_denials}
    assert denied >= {("unlisted.test", server), ("10.1.2.3", 80), ("allowed.test", 1),
                      ("unlisted.example.org", None)}, result.network_denials
    assert ("allowed.test", server) not in denied
    # A direct connection never reaches the proxy: it fails (no route), unrecorded.
    assert all(e["host"] != "10.1.2.3" or e["port"] == 80 for e in result.network_denials)
    run = result.network_denials[0]["run"]
    assert run == result.run_id and run.startswith(record.sandbox_id + ":")
    events = manager.network_events(record.sandbox_id)
    assert {(e["host"], e["port"], e["run"]) for e in events} >= {(h, p, run) for h, p in denied}
    assert all(set(e) == {"time", "host", "port", "reason", "run"} for e in events)


def test_sandbox_code_cannot_stop_or_bypass_the_proxy(box, server):
    manager, record = box
    escape = ("kill -9 -1 2>/dev/null; python3 -c \"import socket; "
              f"socket.create_connection(('127.0.0.1', {server}), timeout=2)\" 2>&1 | tail -1")
    out = manager.run(record.sandbox_id, "bash", escape, timeout=30)
    assert "Connection refused" in out.stdout  # the jail's own loopback, not the host's
    again = manager.run(record.sandbox_id, "python",
                        f"import urllib.request; print(urllib.request.urlopen("
                        f"'http://allowed.test:{server}/again', timeout=5).read().decode())",
                        timeout=30)
    assert "hello /again" in again.stdout, again.stderr
    pid = record.handle["egress_pid"]
    assert Path(f"/proc/{pid}").exists()
    if os.geteuid() == 0:  # the proxy is nobody's, not the jail uid's
        assert os.stat(f"/proc/{pid}").st_uid == 65534 != record.handle["uid"]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


@pytest.mark.parametrize("provider", PROVIDER_PARAMS)
def test_the_proxy_ends_with_the_sandbox_however_it_ends(tmp_path, provider):
    provider_ready(provider)
    manager = SandboxManager(Settings.load(home=tmp_path / "home", provider=provider))
    try:
        stopped = manager.create("short", network="pypi.org")
        assert not _gone(stopped.handle["egress_pid"])
        manager.stop(stopped.sandbox_id)
        assert _gone(stopped.handle["egress_pid"])
        # killed behind nexus's back: the jail's exit pipe / the container's init is watched
        killed = manager.create("short", network="pypi.org")
        if provider == "local":
            os.kill(killed.handle["child_pid"], 9)
        else:
            subprocess.run(["docker", "kill", killed.handle["container_id"]], capture_output=True)
        assert wait_until(lambda: _gone(killed.handle["egress_pid"]), 5.0)
    finally:
        for record in manager.list():
            manager.stop(record.sandbox_id)
        manager.close()


def test_cli_allow_and_events(nexus_home: Path, server: int):
    bad = nexus("sandbox", "create", "x", "--allow", "exa mple..org")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    env = {"NEXUS_EGRESS_TEST_HOSTS": "allowed.test=127.0.0.1"}
    created = nexus("sandbox", "create", "x", "--allow", f"allowed.test:{server}", "--json", env=env)
    assert created.returncode == 0, created.stderr
    sandbox = json.loads(created.stdout)
    assert sandbox["network_allow"] == [f"allowed.test:{server}"] and sandbox["network"] is False
    sid = sandbox["sandbox_id"]
    try:
        run = nexus("sandbox", "run", sid, "-l", "bash", "-c",
                    f"curl -s -o /dev/null -w '%{{http_code}}' http://elsewhere.test:{server}/")
        assert run.stdout == "403", run
        assert f"Nexus: network denied elsewhere.test:{server}: host not in the allow-list" in run.stderr
        events = nexus("sandbox", "events", sid, "--json")
        found = json.loads(events.stdout)
        assert [e["host"] for e in found] == ["elsewhere.test"]
        assert found[0]["run"].startswith(sid + ":r")  # the run's id (nexus sandbox logs ID)
    finally:
        nexus("sandbox", "stop", sid)


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _index_reachable(), reason="the package index is not reachable from here")
def test_pip_install_through_the_allow_list(tmp_path):
    manager = SandboxManager(Settings.load(home=tmp_path / "home"))
    pip = ("python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check "
           "--retries 0 --timeout 10 --target /tmp/pkgs six && PYTHONPATH=/tmp/pkgs python3 -c "
           "'import six; print(\"six\", six.__version__)'")
    try:
        index = manager.create("pip", network=["pypi.org", "files.pythonhosted.org"])
        ok = manager.run(index.sandbox_id, "bash", pip, timeout=90)
        assert ok.exit_code == 0 and "six " in ok.stdout, ok.stderr
        assert ok.network_denials == ()
        closed = manager.create("pip", network=["example.org"])
        denied = manager.run(closed.sandbox_id, "bash", pip, timeout=90)
        assert denied.exit_code != 0
        # pip says only "no matching distribution"; the denial says why
        assert [denial_line(e) for e in denied.network_denials if e["host"] == "pypi.org"][:1] == [
            "Nexus: network denied pypi.org:443: host not in the allow-list"]
    finally:
        for record in manager.list():
            manager.stop(record.sandbox_id)
        manager.close()


NOBODY_SCRIPT = r'''
import json, sys
sys.path[:0] = [ROOT, DEPS]
from pathlib import Path
from nexus_kernel.config import Settings
from nexus_kernel.manager import SandboxManager
settings = Settings.load(home=Path(HOME), user="nobody", provider="local",
                         egress_test_hosts=f"allowed.test=127.0.0.1")
manager = SandboxManager(settings, is_admin=True)
record = manager.create("nobody-egress", network=[f"allowed.test:{PORT}"])
try:
    code = ("import urllib.request\n"
            "for host in ('allowed.test', 'denied.test'):\n"
            "    try: print(urllib.request.urlopen(f'http://{host}:%d/n', timeout=5).read().decode())\n"
            "    except Exception as exc: print(host, exc)\n" % PORT)
    result = manager.run(record.sandbox_id, "python", code, timeout=30)
    print(json.dumps({"out": result.stdout, "denied": [e["host"] for e in result.network_denials],
                      "uid": Path(f"/proc/{record.handle['egress_pid']}").stat().st_uid}))
finally:
    manager.stop(record.sandbox_id)
'''


@needs_setpriv
def test_an_unprivileged_callers_proxy(server):
    """The proxy of an unprivileged caller joins the user namespace owning the jail's netns
    to bind there (no root anywhere)."""
    found = run_as_nobody(NOBODY_SCRIPT, timeout=120, PORT=server)
    assert "hello /n" in found["out"] and "denied.test HTTP Error 403" in found["out"], found
    assert found["denied"] == ["denied.test"] and found["uid"] == 65534
