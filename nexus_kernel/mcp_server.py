"""``nexus mcp``: the sandboxes as an MCP server (official ``mcp`` SDK, extra ``[mcp]``).

Transports: stdio (one client: the process that launched it) and streamable HTTP on
127.0.0.1 behind a bearer token. Each MCP client connection sees only the sandboxes it
created (``--admin``: every sandbox of the user); they are stopped when it disconnects
unless created with ``keep=true``, and their TTL applies as everywhere. A run streams its
output as progress notifications; a client's cancellation interrupts the run (a session
keeps its variables). Bad arguments come back as tool errors with the one-line message.
Runs are described for the model by :mod:`nexus_kernel.llm_output`.
"""

# No `from __future__ import annotations`: the SDK reads the tools' annotations at runtime
# (the schemas, the Context parameter), and they name classes imported inside build_server.
import base64
import contextlib
import hmac
import os
import secrets
import shlex
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from . import llm_output
from .errors import MissingDependencyError, SandboxError, SandboxNotFoundError
from .manager import SandboxManager, describe
from .models import OutputEvent, Status

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

T = TypeVar("T")
#: Characters of streamed output carried by one progress notification, and in all per run
#: (the result, at the end, holds the output anyway, bounded).
PROGRESS_CHUNK = 4_000
PROGRESS_LIMIT = 200_000
#: Characters of a file shown by sandbox_read_file unless the call asks for fewer.
READ_LIMIT = 100_000

INSTRUCTIONS = """\
Isolated, ephemeral sandboxes for running Python, JavaScript and Bash. Create a sandbox with
sandbox_create, then call sandbox_run as often as needed: runs in the same `session` share
variables (like notebook cells); files persist in the sandbox until it stops. Sandboxes have
no network unless created with network=true, stop themselves after `ttl_minutes` idle, and
are stopped when this client disconnects unless created with keep=true."""


def _import_mcp() -> Any:
    try:
        import mcp.server.mcpserver as mcpserver
    except ImportError as exc:
        raise MissingDependencyError(
            "the MCP server needs the mcp SDK: pip install 'nexus-kernel[mcp]'") from exc
    return mcpserver


class Scopes:
    """Which MCP client created which sandbox, and which to keep when it disconnects."""

    def __init__(self, manager: SandboxManager, admin: bool):
        self.manager = manager
        self.admin = admin
        #: The scope of requests without a connection of their own (2026-era protocol: no
        #: session to end), this server process's: ended when the server exits.
        self.stateless = self.new_client()
        self._kept: set[str] = set()
        self._clients: set[str] = {self.stateless}
        self._lock = threading.Lock()

    @staticmethod
    def new_client() -> str:
        return "mcp:" + secrets.token_hex(8)

    def join(self, client: str) -> None:
        with self._lock:
            self._clients.add(client)

    def keep(self, sandbox_id: str) -> None:
        with self._lock:
            self._kept.add(sandbox_id)

    def connected(self) -> list[str]:
        with self._lock:
            return list(self._clients)

    def check(self, client: str, sandbox_id: Any) -> str:
        """``sandbox_id`` when this client may use it; a one-line error otherwise."""
        try:
            record = self.manager.get(sandbox_id)  # unknown, or another user's: not found
        except SandboxNotFoundError:
            record = None
        if record is None or not (self.admin or record.client_id == client):
            raise SandboxError(f"no sandbox {sandbox_id!r} for this MCP client; "
                               "sandbox_list shows yours")
        return record.sandbox_id

    def visible(self, client: str) -> list[dict[str, Any]]:
        now = self.manager.clock()
        records = self.manager.list(all_users=self.admin and self.manager.is_admin)
        return [describe(r, now) for r in records if self.admin or r.client_id == client]

    def close(self) -> None:
        """End every client still connected, then the manager's connections."""
        for client in self.connected():
            self.end(client)
        self.manager.close()

    def end(self, client: str) -> None:
        """Stop what ``client`` created and did not ask to keep (one that cannot be stopped
        is left to its TTL; the others are still stopped)."""
        with self._lock:
            self._clients.discard(client)
            kept = set(self._kept)
        for record in self.manager.of_client(client):
            if record.sandbox_id not in kept:
                with contextlib.suppress(SandboxError):
                    self.manager.stop(record.sandbox_id)


def build_server(scopes: Scopes) -> "MCPServer":
    """The MCP server object, its tools working on ``scopes``; ``serve`` runs it."""
    mcpserver = _import_mcp()
    import anyio
    from mcp.server.mcpserver import Context
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import CallToolResult, ImageContent, TextContent
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS
    from pydantic import Field

    manager = scopes.manager

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[Scopes]:
        try:
            yield scopes
        finally:  # the server exits: end every client still connected
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(scopes.close)

    async def one_line_errors(ctx: Any, call_next: Any) -> Any:
        result = await call_next(ctx)  # a tools/call result arrives here as its wire dict
        if ctx.method == "tools/call" and isinstance(result, dict) and result.get("isError"):
            for block in result.get("content") or ():
                if block.get("type") == "text":
                    block["text"] = one_line(block["text"])
        return result

    server = mcpserver.MCPServer("nexus-sandbox", instructions=INSTRUCTIONS, lifespan=lifespan,
                                 log_level="WARNING", middleware=[one_line_errors])

    def client_of(ctx: Context) -> str:
        # The SDK keeps per-connection state and teardown on its Connection, reached from the
        # request's session (no public accessor in mcp 2.3).
        connection = ctx.request_context.session._connection
        if connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return scopes.stateless
        client = connection.state.get("nexus_client")
        if client is None:
            client = connection.state["nexus_client"] = scopes.new_client()
            scopes.join(client)

            async def disconnected() -> None:
                await anyio.to_thread.run_sync(scopes.end, client)

            connection.exit_stack.push_async_callback(disconnected)
        return client

    async def call(fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn)
        except SandboxError as exc:
            raise ToolError(str(exc)) from None

    SandboxId = Annotated[str, Field(description="the sandbox's id (sb_..., from sandbox_create "
                                                 "or sandbox_list)")]

    @server.tool(annotations={"title": "Create a sandbox"})
    async def sandbox_create(
        ctx: Context,
        name: Annotated[str, Field(description="a short label for the sandbox")] = "mcp",
        ttl_minutes: Annotated[float | None, Field(
            gt=0, description="idle minutes before it stops itself; every run extends it "
                              "(default: the server's setting, usually 10)")] = None,
        template: Annotated[str | None, Field(
            description="template (local provider) or image to start from; omit for the "
                        "default environment")] = None,
        network: Annotated[bool, Field(description="allow all network access")] = False,
        allow: Annotated[list[str] | None, Field(
            description="instead of all: only these hosts (a bare name: ports 80 and 443; "
                        "host:port; *.example.org), e.g. [\"pypi.org\", "
                        "\"files.pythonhosted.org\"]; denied requests appear in run results")] = None,
        keep: Annotated[bool, Field(description="keep it running after this client "
                                                "disconnects (its TTL still applies)")] = False,
    ) -> dict[str, Any]:
        """Create an isolated sandbox and return its description, including `sandbox_id`."""
        client = client_of(ctx)
        policy = allow if allow and not network else network
        record = await call(lambda: manager.create(name, ttl_minutes, template, network=policy,
                                                   client_id=client))
        if keep:
            scopes.keep(record.sandbox_id)
        return {**describe(record, manager.clock()), "keep": keep}

    @server.tool(annotations={"title": "Run code in a sandbox"})
    async def sandbox_run(
        ctx: Context,
        sandbox_id: SandboxId,
        code: Annotated[str, Field(description="the code to run")],
        language: Annotated[Literal["python", "javascript", "bash"], Field(
            description="language of the code")] = "python",
        session: Annotated[str | None, Field(
            description="runs in the same session share variables, imports and the working "
                        "directory (one interpreter per language); null runs a fresh process "
                        "(files persist, variables do not)")] = "default",
        timeout: Annotated[float | None, Field(
            gt=0, description="seconds before the run is interrupted (default: the server's "
                              "setting, usually 30)")] = None,
    ) -> CallToolResult:
        """Run code in a sandbox. Returns stdout, stderr, exit_code, execution_time, rich
        outputs (images as image content, HTML/Markdown as text) and the error with its
        traceback. Output streams as progress notifications while it runs."""
        client = client_of(ctx)
        sandbox_id = await call(lambda: scopes.check(client, sandbox_id))
        streamed = {"chars": 0, "quiet": False}

        def on_event(event: OutputEvent) -> None:
            if streamed["quiet"] or event.kind not in ("stdout", "stderr"):
                return
            text = str(event.data)[:PROGRESS_CHUNK]
            if streamed["chars"] + len(text) > PROGRESS_LIMIT:
                streamed["quiet"] = True
                text = "[more output: the result has it, cut to its bounds]\n"
            streamed["chars"] += len(text)
            try:
                anyio.from_thread.run(ctx.report_progress, streamed["chars"], None, text)
            except Exception:  # progress is advisory: a gone client must not break the run
                streamed["quiet"] = True

        def run() -> llm_output.Outcome:
            return llm_output.run(manager, sandbox_id, code, language, session=session,
                                  timeout=timeout, on_event=on_event)

        try:
            outcome = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        except SandboxError as exc:
            raise ToolError(str(exc)) from None
        except anyio.get_cancelled_exc_class():
            streamed["quiet"] = True  # the client cancelled: interrupt, state kept

            def interrupt() -> None:
                with contextlib.suppress(SandboxError):  # it ended meanwhile
                    manager.interrupt(sandbox_id, session)

            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(interrupt)
            raise
        content: list[Any] = [TextContent(type="text", text=outcome.text)]
        content += [ImageContent(type="image", data=image.data, mime_type=image.mime)
                    for image in outcome.images]
        return CallToolResult(content=content, structured_content=outcome.fields,
                              is_error=outcome.is_error)

    @server.tool(annotations={"title": "Write a file into a sandbox"})
    async def sandbox_write_file(
        ctx: Context,
        sandbox_id: SandboxId,
        path: Annotated[str, Field(description="file path, relative to the sandbox's home")],
        content: Annotated[str, Field(description="the file's content")],
        encoding: Annotated[Literal["utf-8", "base64"], Field(
            description="utf-8 for text, base64 for binary content")] = "utf-8",
    ) -> dict[str, Any]:
        """Write (create or replace) a file inside a sandbox."""
        client = client_of(ctx)
        try:
            data = base64.b64decode(content, validate=True) if encoding == "base64" \
                else content.encode()
        except ValueError:
            raise ToolError("content is not valid base64; send text with encoding utf-8") from None
        size = await call(lambda: manager.put_file(scopes.check(client, sandbox_id), path, data))
        return {"sandbox_id": sandbox_id, "path": path, "size": size}

    @server.tool(annotations={"title": "Read a file from a sandbox", "readOnlyHint": True})
    async def sandbox_read_file(
        ctx: Context,
        sandbox_id: SandboxId,
        path: Annotated[str, Field(description="file path, relative to the sandbox's home")],
        encoding: Annotated[Literal["utf-8", "base64"], Field(
            description="utf-8 for text, base64 for binary content")] = "utf-8",
        max_chars: Annotated[int, Field(gt=0, le=10 * READ_LIMIT, description=(
            "longest content returned; a longer file is cut (head and tail kept)"))] = READ_LIMIT,
    ) -> dict[str, Any]:
        """Read a file from inside a sandbox."""
        client = client_of(ctx)
        data = await call(lambda: manager.get_file(scopes.check(client, sandbox_id), path))
        if encoding == "base64":
            text = base64.b64encode(data).decode()
        else:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                raise ToolError(f"{path} is not UTF-8 text; read it with encoding base64") \
                    from None
        return {"sandbox_id": sandbox_id, "path": path, "size": len(data),
                "content": llm_output.clip(text, max_chars), "truncated": len(text) > max_chars}

    @server.tool(annotations={"title": "List files in a sandbox", "readOnlyHint": True})
    async def sandbox_list_files(
        ctx: Context,
        sandbox_id: SandboxId,
        path: Annotated[str, Field(description="directory, relative to the sandbox's home")] = ".",
    ) -> str:
        """List a directory inside a sandbox (ls -la)."""
        client = client_of(ctx)
        outcome = await call(lambda: llm_output.run(
            manager, scopes.check(client, sandbox_id), f"ls -la -- {shlex.quote(path)}",
            "bash", session=None, timeout=30))
        if outcome.is_error:
            raise ToolError(llm_output.clip(outcome.fields["stderr"].strip() or outcome.text, 2000))
        return outcome.fields["stdout"]

    def lifecycle(name: str, title: str, doc: str, op: Callable[[str], Any]) -> None:
        async def tool(ctx: Context, sandbox_id: SandboxId) -> dict[str, Any]:
            client = client_of(ctx)
            record = await call(lambda: op(scopes.check(client, sandbox_id)))
            return describe(record, manager.clock())

        tool.__name__, tool.__doc__ = name, doc
        server.tool(name=name, annotations={"title": title})(tool)

    lifecycle("sandbox_pause", "Pause a sandbox", "Freeze a sandbox (its TTL clock stops); "
              "sandbox_resume continues it with its state.", manager.pause)
    lifecycle("sandbox_resume", "Resume a sandbox", "Continue a paused sandbox.", manager.resume)
    lifecycle("sandbox_stop", "Stop a sandbox", "Stop a sandbox for good: every process and "
              "file in it is gone.", manager.stop)
    lifecycle("sandbox_status", "Sandbox status", "The sandbox's status (active, paused, "
              "stopped), TTL and expiry.", manager.status)

    @server.tool(annotations={"title": "List sandboxes", "readOnlyHint": True})
    async def sandbox_list(ctx: Context) -> dict[str, Any]:
        """The sandboxes of this client (active, paused and recently stopped)."""
        client = client_of(ctx)
        found = await call(lambda: scopes.visible(client))
        active = [s for s in found if s["status"] != Status.STOPPED.value]
        return {"sandboxes": found, "count": len(found), "running": len(active)}

    return server


def one_line(message: str) -> str:
    """A tool error as one line: the SDK's report of arguments that fail the schema is
    pydantic's multi-line text; keep each field and what it should be."""
    head, _, rest = message.partition("\n")
    if "validation error" not in head:
        return message
    prefix = head.split(":", 1)[0] if ":" in head else "invalid arguments"
    problems, field = [], None
    for line in rest.splitlines():
        if not line.startswith(" "):
            field = line.strip()
        elif line.startswith("  ") and not line.startswith("    ") and field:
            problems.append(f"{field}: {line.strip().split(' [type=')[0]}")
    return f"{prefix}: invalid arguments: {'; '.join(problems) or head}"


def _require_token(app: Any, token: str) -> Any:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body",
                            "body": b"missing or wrong bearer token\n"})
                return
        await app(scope, receive, send)

    return guarded


async def _stdio(server: "MCPServer", scopes: Scopes) -> None:
    """The stdio transport, ended by EOF on stdin or by SIGINT/SIGTERM. The SDK reads stdin
    in a worker thread that no cancellation reaches, so a signal ends the clients' sandboxes
    here and leaves at once (as a client that killed us expects)."""
    import anyio

    async def on_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for signum in received:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(scopes.close)
                sys.stderr.flush()
                os._exit(128 + signum)

    async with anyio.create_task_group() as group:
        group.start_soon(on_signal)
        await server.run_stdio_async()
        group.cancel_scope.cancel()


def serve(transport: str = "stdio", *, port: int = 8765, token: str | None = None,
          admin: bool = False) -> None:
    """Run the server until stdin closes (stdio) or it is interrupted (SIGINT, SIGTERM);
    either way the sandboxes of its clients are stopped (those created with keep aside)."""
    import anyio

    scopes = Scopes(SandboxManager(), admin)
    server = build_server(scopes)
    if transport == "stdio":
        anyio.run(_stdio, server, scopes)
        return
    import uvicorn

    token = token or secrets.token_urlsafe(24)
    app = _require_token(server.streamable_http_app(host="127.0.0.1"), token)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart finds the port
    try:  # bound here, so a port in use is one line and "listening" is true when printed
        listener.bind(("127.0.0.1", port))
        listener.listen(128)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        listener.close()
        raise SandboxError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose "
                           "another port with --port") from None
    url = f"http://127.0.0.1:{port}/mcp"
    print(f"nexus mcp: listening on {url}\nnexus mcp: bearer token {token}", file=sys.stderr,
          flush=True)
    # uvicorn ends on SIGINT/SIGTERM through the app's lifespan (which ends the clients);
    # open SSE streams get 5 s to close first
    config = uvicorn.Config(app, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=5)
    anyio.run(lambda: uvicorn.Server(config).serve(sockets=[listener]))


__all__ = ["Scopes", "build_server", "serve"]
