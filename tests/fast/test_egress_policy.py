"""The network policy (``nexus_kernel/egress.py``) and the egress proxy's decisions, run
in-process on loopback (no sandbox): parsing, one-line errors, matching, DNS answers, and the
proxy refusing what is not listed and recording it."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import struct

import pytest

from nexus_kernel.egress import parse_allow, parse_policy
from nexus_kernel.errors import InvalidArgumentError, UnsupportedOperationError
from nexus_kernel.providers.egress import EGRESS_PROXY, read_events

# Loaded by path, as production runs it (and without putting providers/ on sys.path, where
# its docker.py would shadow the docker SDK).
_spec = importlib.util.spec_from_file_location("egress_proxy", EGRESS_PROXY)
proxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(proxy)


def test_policies_and_their_aliases():
    assert parse_policy(True) == (True, ()) and parse_policy("all") == (True, ())
    assert parse_policy(False) == (False, ()) and parse_policy("none") == (False, ())
    assert parse_policy(["PyPI.org.", "api.example.com:443"]) == (
        False, ("pypi.org", "api.example.com:443"))
    assert parse_allow("a.org, b.org:8080 a.org") == ("a.org", "b.org:8080")
    assert parse_allow(["*.example.org", "10.0.0.5:8080", "[FD00::5]:443"]) == (
        "*.example.org", "10.0.0.5:8080", "[fd00::5]:443")


@pytest.mark.parametrize("bad", ["exa mple.org", "a..org", "-a.org", "a.org:0", "a.org:99999",
                                 "a.org:x", "[nothost]:443", "300.1.2.3", "http://a.org", "*"])
def test_a_bad_entry_is_one_line_saying_what_to_give(bad):
    with pytest.raises(InvalidArgumentError) as caught:
        parse_allow([bad])
    message = str(caught.value)
    assert "\n" not in message and repr(bad) in message and ("e.g." in message or "port" in message
                                                               or "IP address" in message)


def test_the_env_variable_and_providers_without_an_allow_list(make_manager, monkeypatch):
    monkeypatch.setenv("NEXUS_NETWORK_ALLOW", "bad..name")
    with pytest.raises(InvalidArgumentError, match="bad..name"):
        make_manager().create("x")
    # the memory provider cannot enforce one: refused, never widened to all or none
    with pytest.raises(UnsupportedOperationError, match="allow-list"):
        make_manager().create("x", network=["pypi.org"])


def test_matching_names_ports_and_literals():
    policy = proxy.Policy(["pypi.org", "api.example.com:8443", "*.example.org", "10.0.0.5:81"], {})
    assert policy.check("pypi.org", 443) is None and policy.check("pypi.org", 80) is None
    assert "port 22" in policy.check("pypi.org", 22)
    assert policy.check("api.example.com", 8443) is None and policy.check("api.example.com", 443)
    assert policy.check("a.b.example.org", 443) is None and policy.check("example.org", 443)
    assert policy.check("notexample.org", 443)
    assert policy.check("10.0.0.5", 81) is None
    assert "IP address" in policy.check("10.0.0.6", 81)
    assert not proxy._public("127.0.0.1") and not proxy._public("169.254.169.254")
    assert not proxy._public("::ffff:10.1.2.3") and proxy._public("93.184.216.34")


def _query(name: str, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def test_dns_answers_listed_names_only_and_records_the_rest(tmp_path):
    events = os.open(tmp_path / "events", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    sent = []

    class Transport:
        def sendto(self, data, addr):
            sent.append(data)

    async def ask(name, qtype=1):
        p = proxy.Proxy(proxy.Policy(["ok.test"], {"ok.test": "93.184.216.34"}), events)
        await p.answer(Transport(), _query(name, qtype), ("127.0.0.1", 5353))
        return sent.pop()

    allowed = asyncio.run(ask("ok.test"))
    assert allowed[:2] == b"\x12\x34" and allowed[3] & 0xF == 0 and allowed[-4:] == socket.inet_aton("93.184.216.34")
    denied = asyncio.run(ask("tunnel.data.evil.test"))
    assert denied[3] & 0xF == 3 and struct.unpack("!H", denied[6:8])[0] == 0  # NXDOMAIN
    assert proxy._parse_query(b"\x00" * 5) is None
    line = json.loads((tmp_path / "events").read_text())
    assert line["host"] == "tunnel.data.evil.test" and line["port"] is None


def test_the_proxy_refuses_and_records_before_answering(tmp_path):
    events = os.open(tmp_path / "events", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    async def scenario():
        p = proxy.Proxy(proxy.Policy(["ok.test:1"], {}), events)
        server = await asyncio.start_server(p.serve_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        replies = []
        for request in (b"CONNECT evil.test:443 HTTP/1.1\r\n\r\n",
                        b"GET http://ok.test:2/ HTTP/1.1\r\nHost: ok.test\r\n\r\n",
                        b"GET /relative HTTP/1.1\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            replies.append((await reader.read()).split(b"\r\n")[0])
            writer.close()
        server.close()
        return replies

    assert asyncio.run(scenario()) == [b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 403 Forbidden",
                                       b"HTTP/1.1 400 Bad Request"]
    lines = [json.loads(x) for x in (tmp_path / "events").read_text().splitlines()]
    assert [(e["host"], e["port"]) for e in lines] == [("evil.test", 443), ("ok.test", 2)]


def test_the_events_file_stays_bounded(tmp_path):
    events = os.open(tmp_path / "events", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    p = proxy.Proxy.__new__(proxy.Proxy)
    p.events_fd, p.event_bytes = events, 0
    p.events = __import__("collections").deque(maxlen=proxy.MAX_EVENTS)
    for i in range(5000):
        p.deny(f"host{i}.test", 443, "host not in the allow-list")
    assert (tmp_path / "events").stat().st_size <= proxy.MAX_EVENT_BYTES
    kept = read_events(tmp_path / "events")
    assert kept[-1]["host"] == "host4999.test" and len(kept) <= proxy.MAX_EVENTS
