"""The network policy of a sandbox: ``none`` (default), ``all``, or an allow-list.

An allow-list names hosts and ports the sandbox may reach through its egress proxy:
``pypi.org`` (ports 80 and 443), ``api.example.com:443`` (that port only),
``*.example.org`` (any subdomain, 80 and 443), an IPv4 literal ``10.0.0.5:8080`` or an IPv6
one ``[fd00::5]:443``. Every surface (API ``network=``, CLI ``--allow``, magics, kernel,
``NEXUS_NETWORK_ALLOW``) goes through :func:`parse_policy`, so a bad entry gets the same
one-line error wherever it was typed. Enforcement is the provider's (local: the host-side
proxy ``providers/egress_proxy.py``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .errors import InvalidArgumentError, UnsupportedOperationError
from .models import iso

#: Ports a bare host name allows.
DEFAULT_PORTS = (80, 443)
#: At most this many entries in one allow-list.
MAX_ENTRIES = 64
#: Denial events kept per sandbox (the oldest go first).
MAX_EVENTS = 256

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_HELP = ("give a host name or host:port, e.g. pypi.org, api.example.com:443, *.example.org "
         "or 10.0.0.5:8080")


def _entry(raw: str) -> str:
    """One allow-list entry, normalised (lower case, no trailing dot): ``host`` or
    ``host:port``; IPv6 literals keep their brackets."""
    text = raw.strip().lower().rstrip(".")
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise InvalidArgumentError(f"bad network allow entry {raw!r}: {_HELP}")
        port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidArgumentError(f"bad network allow entry {raw!r}: {_HELP}") from None
        host = f"[{host}]"
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgumentError(f"bad port in network allow entry {raw!r}: 1 to 65535")
        port = str(int(port))
    if not host.startswith("[") and (len(host) > 253 or not _HOST.match(host)):
        raise InvalidArgumentError(f"bad network allow entry {raw!r}: {_HELP}")
    if not host.startswith("[") and host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidArgumentError(f"bad IP address in network allow entry {raw!r}") from None
    return f"{host}:{port}" if port else host


def parse_allow(value: Any) -> tuple[str, ...]:
    """An allow-list from a list of entries (each may hold several, comma separated) or one
    string of them (comma or space separated), normalised, duplicates dropped; empty when
    there is none."""
    if isinstance(value, str):
        items = value.replace(",", " ").split()
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [part.strip() for v in value for part in v.split(",") if part.strip()]
    else:
        raise InvalidArgumentError(f"network allow-list must be host names (strings); {_HELP}")
    entries = tuple(dict.fromkeys(_entry(item) for item in items))
    if len(entries) > MAX_ENTRIES:
        raise InvalidArgumentError(f"at most {MAX_ENTRIES} network allow entries, got {len(entries)}")
    return entries


def parse_policy(value: Any) -> tuple[bool, tuple[str, ...]]:
    """``(all_network, allow_list)`` from what a caller passed as ``network``: a bool,
    ``"none"``/``"off"``, ``"all"``/``"on"``, or an allow-list (list or string of entries).
    ``(False, ())`` is no network at all."""
    if isinstance(value, bool):
        return value, ()
    if isinstance(value, str) and value.strip().lower() in ("none", "off", "false", "0", "no", ""):
        return False, ()
    if isinstance(value, str) and value.strip().lower() in ("all", "on", "true", "1", "yes"):
        return True, ()
    return False, parse_allow(value)


def by_host_only(allow: tuple[str, ...], service: str) -> tuple[list[str], list[str]]:
    """``(names, ip_addresses)`` of an allow-list for a platform that filters by host, not
    port (E2B, Modal): an entry with a port is refused in one line, since there every port
    of a listed host is open."""
    with_port = [e for e in allow if e.rsplit("]", 1)[-1].count(":") == 1]
    if with_port:
        raise UnsupportedOperationError(
            f"{service} filters egress by host, not port: give {with_port[0]!r} without its "
            "port (every port of a listed host is then open), or use the local or docker "
            "provider, which filter ports too")
    names = [e for e in allow if not e.startswith("[") and not e.replace(".", "").isdigit()]
    return names, [e.strip("[]") for e in allow if e not in names]


def network_text(network: bool | tuple[str, ...] | list[str]) -> str:
    """``on``, ``off``, or ``allow pypi.org, api.example.com:443`` for a network value."""
    if network is True:
        return "on"
    return f"allow {', '.join(network)}" if network else "off"


def events_table(events: list[dict[str, Any]]) -> str:
    """Denial events as text lines (time, run, what was denied), or a line saying none."""
    if not events:
        return "no denied network requests\n"
    lines = []
    for event in events:
        run = f"run {event['run']}" if event.get("run") else "between runs"
        lines.append(f"{iso(event['time'])}  {run}  {denial_line(event)[len('Nexus: '):]}\n")
    return "".join(lines)


def denial_line(event: dict[str, Any]) -> str:
    """One line for a denied connection or lookup (what the kernel and the CLI print)."""
    port = event.get("port")
    where = f"{event.get('host')}:{port}" if port else f"{event.get('host')} (DNS)"
    return f"Nexus: network denied {where}: {event.get('reason')}"
