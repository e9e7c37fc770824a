"""The egress proxy of one sandbox with an allow-list (standard library only, run by path).

Started by ``providers/egress.py`` for the local provider (a jail) and the docker provider (a
container), outside the sandbox's pid namespace (as the caller; when that is root, it drops
to ``nobody`` once its sockets are bound), it enters the sandbox's network namespace in a
short-lived child only to bind two sockets there, which the child hands back:

- ``127.0.0.1:PROXY_PORT`` (TCP): an HTTP proxy (``CONNECT host:port`` and absolute-form
  plain HTTP). It resolves names itself, host side, and connects only to an allowed
  host:port; IP literals only when listed; never to a loopback, private, link-local or
  multicast address a name resolves to (``BLOCKED``: no DNS rebinding onto the host's own
  services or the cloud metadata address).
- ``127.0.0.1:53`` (UDP): the jail's resolver. An allowed name gets its addresses; any other
  name NXDOMAIN, without a lookup anywhere (no DNS tunnelling through our resolvers).

The jail's namespace has no other interface than loopback: a direct connection to any
address fails at once (no route). Each refusal is written, before the client hears of it,
as one JSON line ``{time, host, port, reason}`` to the events file the host opened for it
(bounded: past MAX_EVENT_BYTES it is rewritten with the newest MAX_EVENTS). The proxy ends
when the exit pipe (held by the jail's outer bubblewrap) reaches EOF, or when the process it
watches (a container's init) is gone.

Usage: ``python -I -S egress_proxy.py CONFIG_JSON`` with the fds it names inherited (python
>= 3.8, like the agent). Local runs it with the sandbox's python, which an unprivileged
caller can read even where the host's own python lives in a directory only root reads.
"""

from __future__ import annotations

import array
import ctypes
import errno
import json
import os
import socket
import sys
import time

PROXY_PORT = 3128
DNS_PORT = 53
MAX_EVENTS = 256
MAX_EVENT_BYTES = 64 * 1024
HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
MAX_CONNECTIONS = 128
MAX_LOOKUPS = 8
DNS_TTL = 30
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534
#: Seconds to wait for the namespace's loopback to be up before binding.
BIND_WAIT = 10.0
#: Seconds between checks that the watched process (a container's init) still runs.
WATCH_INTERVAL = 1.0


def _bind(sock: socket.socket, port: int) -> None:
    """Bind to 127.0.0.1:port, waiting (up to BIND_WAIT s) for the namespace's loopback to
    come up: the proxy may start while bubblewrap still sets the namespace up."""
    deadline = time.monotonic() + BIND_WAIT
    while True:
        try:
            return sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL or time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def bind_in_namespace(net_fd: int, user_fd: int) -> tuple[socket.socket, socket.socket]:
    """The proxy's TCP and DNS sockets, bound in the jail's network namespace by a child
    that enters it (joining first the user namespace owning it when ``user_fd`` >= 0)."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits without returning
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            for fd, kind in ((user_fd, CLONE_NEWUSER), (net_fd, CLONE_NEWNET)):
                if fd >= 0 and libc.setns(fd, kind) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _bind(tcp, PROXY_PORT)
            tcp.listen(128)
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            _bind(udp, DNS_PORT)
            fds = array.array("i", [tcp.fileno(), udp.fileno()])
            child.sendmsg([b"1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
            code = 0
        except BaseException as exc:
            os.write(2, f"nexus egress proxy: cannot bind in the sandbox's network: {exc}\n".encode())
        os._exit(code)
    child.close()
    _, ancillary, _, _ = parent.recvmsg(16, socket.CMSG_SPACE(2 * array.array("i").itemsize))
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    os.waitpid(pid, 0)
    parent.close()
    if len(fds) != 2:
        raise SystemExit(1)
    return (socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=fds[0]),
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=fds[1]))


if __name__ == "__main__":  # bound and ready before the slow imports (asyncio: ~75 ms)
    CONFIG = json.loads(sys.argv[1])
    SOCKETS = bind_in_namespace(CONFIG["net_fd"], CONFIG.get("user_fd", -1))
    os.write(CONFIG["ready_fd"], b"1")  # connections queue in the backlog until it serves
    os.close(CONFIG["ready_fd"])

# Loaded before the proxy drops root: the host's python may live where nobody cannot read.
import asyncio  # noqa: E402
import collections  # noqa: E402
import concurrent.futures.thread  # noqa: E402,F401 (lazy in asyncio's getaddrinfo)
import encodings.idna  # noqa: E402,F401 (lazy in socket)
import ipaddress  # noqa: E402
import struct  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402


class Policy:
    """Allow-list matching (entries as ``egress.parse_allow`` normalised them)."""

    def __init__(self, entries: list[str], hosts: dict[str, str]):
        self.rules: list[tuple[str, tuple[int, ...]]] = []
        for entry in entries:
            host, port = entry, ""
            if entry.startswith("["):
                host, _, rest = entry.partition("]")
                host, port = host + "]", rest[1:]
            elif ":" in entry:
                host, port = entry.rsplit(":", 1)
            self.rules.append((host, (int(port),) if port else (80, 443)))
        #: Test-only overrides (set by the host, never by the sandbox): name -> address.
        self.hosts = hosts

    def _matches(self, pattern: str, host: str) -> bool:
        return host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))

    def name_allowed(self, host: str) -> bool:
        return any(self._matches(pattern, host) for pattern, _ in self.rules)

    def check(self, host: str, port: int) -> str | None:
        """None when host:port may be reached, else why not."""
        if not self.name_allowed(host):
            return ("IP address not in the allow-list" if _literal(host) is not None
                    else "host not in the allow-list")
        if not any(self._matches(p, host) and port in ports for p, ports in self.rules):
            return f"port {port} not allowed for this host"
        return None


def _literal(host: str) -> ipaddress._BaseAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


#: Where a name may not lead: this host and its networks (loopback, RFC 1918, carrier-grade
#: NAT, link-local with the cloud metadata address, unique-local), multicast, unspecified.
BLOCKED = tuple(ipaddress.ip_network(net) for net in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/3", "::/127", "fc00::/7", "fe80::/10",
    "ff00::/8"))


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not any(ip in net for net in BLOCKED if net.version == ip.version)


class Proxy:
    def __init__(self, policy: Policy, events_fd: int):
        self.policy = policy
        self.events_fd = events_fd
        self.events: collections.deque[str] = collections.deque(maxlen=MAX_EVENTS)
        self.event_bytes = 0
        self.connections = 0
        self.lookups = asyncio.Semaphore(MAX_LOOKUPS)

    # ------------------------------------------------------------ events

    def deny(self, host: str, port: int | None, reason: str) -> None:
        line = json.dumps({"time": round(time.time(), 3), "host": host[:255], "port": port,
                           "reason": reason}) + "\n"
        self.events.append(line)
        data = line.encode()
        try:
            if self.event_bytes + len(data) > MAX_EVENT_BYTES:
                os.ftruncate(self.events_fd, 0)
                data = "".join(self.events).encode()
                self.event_bytes = 0
            os.write(self.events_fd, data)
            self.event_bytes += len(data)
        except OSError:
            pass

    # ------------------------------------------------------------ resolving

    async def resolve(self, host: str, port: int, family: int = socket.AF_UNSPEC) -> list[str]:
        """Addresses to connect to (empty: none allowed). Listed literals and test
        overrides as they are; names through the host's resolver, public addresses only."""
        if host in self.policy.hosts:
            return [self.policy.hosts[host]]
        literal = _literal(host)
        if literal is not None:
            return [str(literal)]
        async with self.lookups:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, family=family, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                return []
        return list(dict.fromkeys(info[4][0] for info in infos if _public(info[4][0])))

    # ------------------------------------------------------------ HTTP proxy

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections <= MAX_CONNECTIONS:
                await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ValueError, UnicodeError):
            pass
        except Exception as exc:  # a bug of ours: in the sandbox's agent.log, not silent
            print(f"nexus egress proxy: {exc!r}", file=sys.stderr, flush=True)
        finally:
            self.connections -= 1
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        if method.upper() == "CONNECT":
            host, _, port_text = target.rpartition(":")
            path = None
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                return await self._reply(writer, "400 Bad Request",
                                         "nexus egress proxy: send absolute http:// URLs or CONNECT\n")
            host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
            port_text = str(url.port or 80)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        host = host.lower().rstrip(".")
        port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else 0
        reason = "bad port" if not port else self.policy.check(host, port)
        addresses = [] if reason else await self.resolve(host.strip("[]") if host.startswith("[")
                                                         else host, port)
        if not reason and not addresses:
            reason = "name does not resolve to a public address"
        if reason:
            self.deny(host, port or None, reason)
            return await self._reply(writer, "403 Forbidden",
                                     f"nexus egress: {host}:{port} denied: {reason}\n")
        upstream = await self._connect(addresses, port)
        if upstream is None:
            return await self._reply(writer, "502 Bad Gateway",
                                     f"nexus egress: could not connect to {host}:{port}\n")
        up_reader, up_writer = upstream
        try:
            if path is None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                kept = [line for line in lines[1:] if line and line.split(":", 1)[0].strip().lower()
                        not in ("proxy-connection", "proxy-authorization", "connection", "keep-alive")]
                up_writer.write("\r\n".join([f"{method} {path} {version}", *kept,
                                             "Connection: close", "", ""]).encode("latin-1"))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _connect(self, addresses: list[str], port: int):
        for address in addresses:
            try:
                return await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                continue
        return None

    async def _reply(self, writer: asyncio.StreamWriter, status: str, text: str) -> None:
        body = text.encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: "
                     f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()

    # ------------------------------------------------------------ DNS

    async def answer(self, transport: asyncio.DatagramTransport, data: bytes, addr: tuple) -> None:
        query = _parse_query(data)
        if query is None:
            return
        qid, flags, name, qtype, question = query
        records: list[bytes] = []
        rcode = 3  # NXDOMAIN
        if self.policy.name_allowed(name):
            rcode = 0
            family = {1: socket.AF_INET, 28: socket.AF_INET6}.get(qtype)
            if family is not None:
                for address in await self.resolve(name, 443, family):
                    packed = socket.inet_pton(family, address)
                    records.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, DNS_TTL, len(packed)) + packed)
        else:
            self.deny(name, None, "DNS lookup of a name not in the allow-list")
        header = struct.pack("!6H", qid, 0x8080 | (flags & 0x0100) | rcode, 1, len(records), 0, 0)
        transport.sendto(header + question + b"".join(records), addr)


def _parse_query(data: bytes) -> tuple[int, int, str, int, bytes] | None:
    """(id, flags, name, qtype, question section) of a one-question query, else None."""
    if len(data) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!3H", data[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    pos, labels = 12, []
    while pos < len(data) and data[pos]:
        size = data[pos]
        if size & 0xC0 or pos + 1 + size > len(data):
            return None
        labels.append(data[pos + 1 : pos + 1 + size])
        pos += 1 + size
    if pos + 5 > len(data):
        return None
    qtype = struct.unpack("!H", data[pos + 1 : pos + 3])[0]
    name = b".".join(labels).decode("ascii", "replace").lower()
    return qid, flags, name, qtype, data[12 : pos + 5]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


class _Dns(asyncio.DatagramProtocol):
    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.Task] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.transport is not None and len(self.pending) < MAX_CONNECTIONS:
            task = asyncio.ensure_future(self.proxy.answer(self.transport, data, addr))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)


async def serve(config: dict, tcp: socket.socket, udp: socket.socket) -> None:
    proxy = Proxy(Policy(config["allow"], config.get("hosts") or {}), config["events_fd"])
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    server = await asyncio.start_server(proxy.serve_client, sock=tcp, limit=HEAD_LIMIT)
    await loop.create_datagram_endpoint(lambda: _Dns(proxy), sock=udp)
    if config["exit_fd"] >= 0:
        loop.add_reader(config["exit_fd"], lambda: done.done() or done.set_result(None))
    if config.get("watch"):
        asyncio.ensure_future(_watch(*config["watch"], done))
    async with server:
        await done


async def _watch(pid: int, start: int | None, done: asyncio.Future) -> None:
    """Resolve ``done`` once process ``pid`` (started at ``start``) is gone."""
    while not done.done():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            alive = fields[0] not in (b"Z", b"X") and (start is None or int(fields[19]) == start)
        except (OSError, IndexError, ValueError):
            alive = False
        if not alive:
            done.set_result(None)
            return
        await asyncio.sleep(WATCH_INTERVAL)


def main(config: dict, tcp: socket.socket, udp: socket.socket) -> None:
    for fd in (config["net_fd"], config.get("user_fd", -1)):
        if fd >= 0:
            os.close(fd)
    # Nothing left that needs root. Every module it uses is imported by now: the host's
    # python may live where nobody cannot read (a pyenv under /root).
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    asyncio.run(serve(config, tcp, udp))


if __name__ == "__main__":
    main(CONFIG, *SOCKETS)
