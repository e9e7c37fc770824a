"""The measurements: one function per group of rows, each returning :class:`Row` objects.

Sandboxes are driven through :class:`~nexus_kernel.manager.SandboxManager`, the layer every
surface (API, CLI, magics, kernel) goes through, so the figures include the store and TTL
bookkeeping a real call pays.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nexus_kernel.config import Settings
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import SandboxRecord, SandboxSpec, Status
from nexus_kernel.store import Store

from .baselines import (
    DockerBaseline,
    JupyterKernel,
    finish_probe,
    proxy_kernel_argv,
    pss_rss_kb,
    responsiveness_probe,
    spawn,
)
from .timing import Row, Sample, compare, measure, timed_ms, unavailable

#: Targets from issues 7, 16 and 18 (ratio of medians, subject / baseline).
TARGETS = {
    ("local", "create"): 2.0,  # issue 18
    ("local", "run python"): 0.5,  # issue 18: the python zygote
    ("local", "session"): 0.5,
    ("docker", "create"): 1.3,
    ("docker", "run python"): 0.2,  # issue 18
    ("docker", "session"): 1.0,
    ("docker", "stop"): 2.0,
    ("kernel", "cell"): 1.5,  # issue 16: automatic checkpoints on (the default)
    ("kernel", "cell, checkpoints off"): 1.0,  # issue 18
    ("docker", "pause"): 1.5,  # issue 18
    ("pool", "create"): 0.2,
    ("cli", "list"): 3.0,  # issue 18
}
IDLE_RSS_LIMIT_MB = 15.0
#: Benchmark "providers" that are a provider under a docker runtime: name -> (provider,
#: runtime); their baselines run under the same runtime.
RUNTIME_GROUPS = {"docker-runsc": ("docker", "runsc")}
#: An image with python3 and no project code (scripts/build-image.sh's base) for the docker
#: row "create -> ready (foreign image)"; NEXUS_BENCH_FOREIGN_IMAGE picks another.
FOREIGN_IMAGE = os.environ.get("NEXUS_BENCH_FOREIGN_IMAGE") or "nexus-base:bookworm"
STATELESS = {  # language: (code in the sandbox, the bare command it is compared with)
    "python": ("print(1)", ["{python}", "-c", "print(1)"]),
    "javascript": ("console.log(1)", ["node", "-e", "console.log(1)"]),
    "bash": ("echo 1", ["bash", "-c", "echo 1"]),
}


@dataclass
class Context:
    """Run-wide settings and shared baselines."""

    settings: Settings
    user: str
    reps: int
    create_reps: int
    warmup: int
    quick: bool
    only: set[str] | None
    log: Callable[[str], None]
    ipykernel: JupyterKernel | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def python(self) -> str:
        """The interpreter the local sandboxes run (bare baselines use the same one)."""
        from nexus_kernel.providers.local import sandbox_python

        return sandbox_python(self.settings)

    def wants(self, group: str) -> bool:
        return self.only is None or group in self.only

    def manager(self, runtime: str = "") -> SandboxManager:
        settings = replace(self.settings, docker_runtime=runtime) if runtime else self.settings
        return SandboxManager(settings, user=self.user)

    def ipy(self) -> JupyterKernel:
        """The plain ipykernel every round-trip baseline is measured on (started once)."""
        if self.ipykernel is None:
            self.log("starting a plain ipykernel for the round-trip baseline")
            self.ipykernel = JupyterKernel()
        return self.ipykernel


# --------------------------------------------------------------------------- providers


def provider_rows(ctx: Context, provider: str) -> list[Row]:
    """create, stateless runs, session round trip, pause+resume, idle memory, stop.
    ``provider`` may be a :data:`RUNTIME_GROUPS` name (no idle memory rows: its host
    processes are gVisor's)."""
    group = provider
    provider, runtime = RUNTIME_GROUPS.get(group, (provider, ""))
    mgr = ctx.manager(runtime)
    docker = DockerBaseline(ctx.settings.docker_image, ctx.settings.docker_host,
                            runtime or None) if provider == "docker" else None
    created: list[str] = []
    rows: list[Row] = []

    def make() -> None:
        created.append(mgr.create("bench", provider=provider).sandbox_id)

    try:
        reps = ctx.create_reps
        if ctx.wants("create") or ctx.wants("stop") or ctx.wants("memory"):
            ctx.log(f"[{group}] create -> ready x{reps}")
            if docker is None:
                base_name, base = "bare `python3 -c pass`", spawn([ctx.python, "-c", "pass"])
            else:
                base_name, base = "docker-py containers.run(python3 -c pass)", docker.run_to_exit
            a, b = compare(make, base, reps, warmup=1)
            rows.append(Row(group, "create -> ready", a, base_name, b,
                            target=TARGETS.get((group, "create"))))
            if provider == "local":  # the lean sandbox beside the default environment
                ctx.log(f"[{provider}] create -> ready (--template minimal) x{reps}")
                lean: list[str] = []
                try:
                    a, b = compare(lambda: lean.append(mgr.create(
                        "bench-lean", template_id="minimal", provider=provider).sandbox_id),
                        base, reps, warmup=1)
                finally:
                    _clean_up(ctx, lean, mgr.stop, str)
                rows.append(Row(provider, "create -> ready (--template minimal)", a, base_name, b,
                                target=TARGETS.get((provider, "create"))))
            if docker is not None and not runtime:
                rows.append(_foreign_create_row(ctx, mgr, reps))
        else:
            make()
        sid = created[-1]

        if ctx.wants("run"):
            rows += _stateless_rows(ctx, mgr, group, sid, docker)
        if ctx.wants("session"):
            rows += _session_rows(ctx, mgr, group, sid)
        if ctx.wants("pause"):
            rows.append(_pause_row(ctx, mgr, group, created, docker))
        if ctx.wants("memory") and not runtime:
            rows += _memory_rows(ctx, mgr, provider, created[:-1] or created)
        if ctx.wants("stop"):
            rows.append(_stop_row(ctx, mgr, group, created, docker))
    finally:
        _clean_up(ctx, created, mgr.stop, str)
        mgr.close()
        if docker is not None:
            docker.cleanup()
    return rows


def _foreign_create_row(ctx: Context, mgr: SandboxManager, reps: int) -> Row:
    """docker create -> ready of FOREIGN_IMAGE (the agent comes from its volume) against
    docker-py ``containers.run`` of the same image, measured interleaved."""
    name = f"create -> ready (foreign image {FOREIGN_IMAGE})"
    base_name = "docker-py containers.run(python3 -c pass)"
    try:
        plain = DockerBaseline(FOREIGN_IMAGE, ctx.settings.docker_host)
    except Exception as exc:
        return unavailable("docker", name, str(exc), base_name, TARGETS[("docker", "create")])
    made: list[str] = []
    try:
        plain.client.images.get(FOREIGN_IMAGE)
        ctx.log(f"[docker] create -> ready (foreign image {FOREIGN_IMAGE}) x{reps}")
        a, b = compare(lambda: made.append(mgr.create(
            "bench-foreign", template_id=FOREIGN_IMAGE, provider="docker").sandbox_id),
            plain.run_to_exit, reps, warmup=1)
    except Exception as exc:  # the image is missing, or it does not run
        return unavailable("docker", name, str(exc).splitlines()[0], base_name,
                           TARGETS[("docker", "create")])
    finally:
        _clean_up(ctx, made, mgr.stop, str)
        plain.cleanup()
    return Row("docker", name, a, base_name, b, target=TARGETS[("docker", "create")])


def _clean_up(ctx: Context, items: list, end, name) -> None:
    """End every item, reporting (not raising) each failure, so cleaning goes on."""
    for item in items:
        try:
            end(item)
        except Exception as exc:
            ctx.log(f"cleanup of {name(item)} failed: {exc}")


def provider_level_rows(ctx: Context, provider: str) -> list[Row]:
    """The provider alone (no store, no manager): create -> ready, connect + hello and
    destroy, next to the bare operation each wraps, measured in the same run."""
    from nexus_kernel.agent.client import AgentClient
    from nexus_kernel.providers import provider_class

    backend = provider_class(provider)(ctx.settings)
    docker = DockerBaseline(ctx.settings.docker_image, ctx.settings.docker_host) if provider == "docker" else None
    store_id = "bench-" + secrets.token_hex(4)
    handles: list[dict[str, Any]] = []

    def create() -> None:
        spec = SandboxSpec(sandbox_id="sb_" + secrets.token_hex(6), owner=ctx.user,
                           store_id=store_id, deadline=time.time() + 600)
        handles.append(backend.create(spec))

    def hello() -> None:
        with AgentClient(lambda: backend.connect(handles[0]), handles[0]["token"]) as client:
            client.hello()

    try:
        ctx.log(f"[{provider}] provider create -> ready x{ctx.create_reps}")
        if docker is None:
            base_name, base = "bare `python3 -c pass`", spawn([ctx.python, "-c", "pass"])
        else:
            base_name, base = "docker-py containers.run(python3 -c pass)", docker.run_to_exit
        a, b = compare(create, base, ctx.create_reps, warmup=1)
        rows = [Row(provider, "provider create -> ready", a, base_name, b)]
        rows.append(Row(provider, "provider connect + hello", measure(hello, ctx.reps, ctx.warmup),
                        note="a new AgentClient per call: connect, hello, close"))
        victims = handles[1:]
        del handles[1:]
        ctx.log(f"[{provider}] provider destroy x{len(victims)}")
        a = Sample()
        if docker is None:
            for handle in victims:
                a.add(timed_ms(lambda h=handle: backend.destroy(h)))
            rows.append(Row(provider, "provider destroy", a))
        else:
            b = Sample()
            for handle, container in zip(victims, [docker.running() for _ in victims], strict=True):
                a.add(timed_ms(lambda h=handle: backend.destroy(h)))
                b.add(timed_ms(lambda c=container: c.remove(force=True)))
            rows.append(Row(provider, "provider destroy", a, "docker-py remove(force=True)", b))
        return rows
    finally:
        _clean_up(ctx, handles, backend.destroy, lambda h: h.get("sandbox_id", h))
        if hasattr(backend, "close"):
            backend.close()
        if docker is not None:
            docker.cleanup()


def _stateless_rows(ctx: Context, mgr: SandboxManager, provider: str, sid: str,
                    docker: DockerBaseline | None) -> list[Row]:
    rows = []
    plain = docker.running() if docker is not None else None
    for language, (code, argv) in STATELESS.items():
        ctx.log(f"[{provider}] stateless {language} x{ctx.reps}")
        argv = [ctx.python if a == "{python}" else a for a in argv]
        if plain is None:
            base_name = f"bare `{os.path.basename(argv[0])} {' '.join(argv[1:])}`"
            base = spawn(argv)
        else:
            argv = ["python3" if a == ctx.python else a for a in argv]

            def base(argv: list[str] = argv) -> None:
                plain.exec_run(argv, user="1000:1000")

            base_name = f"docker-py exec_run({argv[0]})"
        result = mgr.run(sid, language, code)
        assert result.stdout.strip() == "1", result
        a, b = compare(lambda lang=language, c=code: mgr.run(sid, lang, c), base,
                       ctx.reps, ctx.warmup)
        target = TARGETS.get((provider, "run python")) if language == "python" else None
        rows.append(Row(provider, f"stateless run {language}", a, base_name, b, target=target))
    return rows


def _session_rows(ctx: Context, mgr: SandboxManager, provider: str, sid: str) -> list[Row]:
    ipy = ctx.ipy()
    ctx.log(f"[{provider}] session round trip x{ctx.reps * 3}")
    first = Sample()
    first.add(timed_ms(lambda: mgr.run(sid, "python", "print(1)", session="bench")))
    has_ipython = mgr.run(sid, "python", "print('get_ipython' in globals())",
                          session="bench").stdout.strip() == "True"
    a, b = compare(lambda: mgr.run(sid, "python", "print(1)", session="bench"),
                   lambda: ipy.execute("print(1)"), ctx.reps * 3, ctx.warmup + 3)
    name = "IPython session round trip" if has_ipython else "session round trip (plain python)"
    rows = [Row(provider, name, a, "plain ipykernel execute", b,
                target=TARGETS.get((provider, "session")))]
    # Diagnostic: the same cell straight through the agent client (no store, no TTL work).
    client = mgr._client(mgr._load(sid))
    agent_only = measure(lambda: client.run("python", "print(1)", session="bench"),
                         ctx.reps * 3, ctx.warmup)
    rows.append(Row(provider, "  of which agent round trip", agent_only,
                    note="AgentClient.run directly: the manager's share is the difference"))
    started = measure(lambda: mgr.run(sid, "python", "1", session=f"s{time.monotonic_ns()}"),
                      max(5, ctx.reps // 3), 1)
    rows.append(Row(provider, "new session: first cell", started,
                    note=f"starts a python worker; first ever: {first.values[0]:.1f} ms"))
    return rows


def _pause_row(ctx: Context, mgr: SandboxManager, provider: str, created: list[str],
               docker: DockerBaseline | None) -> Row:
    sid = created[0]
    reps = max(5, ctx.reps // 2)
    ctx.log(f"[{provider}] pause+resume x{reps}")

    def cycle() -> None:
        mgr.pause(sid)
        mgr.resume(sid)

    if docker is None:
        return Row(provider, "pause + resume", measure(cycle, reps, 1))
    plain = docker.running()

    def base() -> None:
        plain.pause()
        plain.unpause()

    a, b = compare(cycle, base, reps, 1)
    return Row(provider, "pause + resume", a, "docker-py pause()+unpause()", b,
               target=TARGETS.get((provider, "pause")))


def _stop_row(ctx: Context, mgr: SandboxManager, provider: str, created: list[str],
              docker: DockerBaseline | None) -> Row:
    victims = [s for s in created[1:]]
    ctx.log(f"[{provider}] stop x{len(victims)}")
    del created[1:]  # stopped here (the first one is left for cleanup)
    if docker is None:
        sample = Sample()
        for sid in victims:
            sample.add(timed_ms(lambda s=sid: mgr.stop(s)))
        return Row(provider, "stop", sample)
    plain = [docker.running() for _ in victims]
    a, b = Sample(), Sample()
    for sid, container in zip(victims, plain, strict=True):
        a.add(timed_ms(lambda s=sid: mgr.stop(s)))
        b.add(timed_ms(lambda c=container: c.remove(force=True)))
    return Row(provider, "stop", a, "docker-py remove(force=True)", b,
               target=TARGETS.get((provider, "stop")))


def sandbox_pids(provider: str, handle: dict[str, Any], docker_client: Any = None) -> list[int]:
    """Host pids of every process of one sandbox."""
    if provider == "docker":
        top = docker_client.api.top(handle["container_id"], ps_args="-eo pid")
        return [int(row[0]) for row in top.get("Processes") or []]
    cgroup = handle.get("cgroup") or {}
    path = cgroup.get("memory") or cgroup.get("unified") or cgroup.get("pids")
    if path:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    pids = [handle["pid"], handle["child_pid"]]
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


def _cgroup_memory_mb(handle: dict[str, Any]) -> float | None:
    cgroup = handle.get("cgroup") or {}
    for key, name in (("memory", "memory.usage_in_bytes"), ("unified", "memory.current")):
        if cgroup.get(key):
            with open(os.path.join(cgroup[key], name)) as f:
                return int(f.read()) / 2**20
    return None


def _memory_rows(ctx: Context, mgr: SandboxManager, provider: str, ids: list[str]) -> list[Row]:
    ctx.log(f"[{provider}] idle memory of {len(ids)} sandboxes")
    time.sleep(1.0)  # let freshly started agents settle
    rss, pss, own = Sample(unit="MB"), Sample(unit="MB"), Sample(unit="MB")
    counts = set()
    client = None
    if provider == "docker":
        client = mgr.provider("docker")._client(ctx.settings.docker_host)
    for sid in ids:
        record = mgr.status(sid)
        pids = sandbox_pids(provider, record.handle, client)
        counts.add(len(pids))
        p, r = pss_rss_kb(pids)
        rss.add(r / 1024)
        pss.add(p / 1024)
        if provider == "docker":
            stats = client.api.stats(record.handle["container_id"], stream=False)["memory_stats"]
            cache = (stats.get("stats") or {}).get("cache", 0)
            own.add((stats.get("usage", 0) - cache) / 2**20)
        else:
            mb = _cgroup_memory_mb(record.handle)
            if mb is not None:
                own.add(mb)
    limit = IDLE_RSS_LIMIT_MB if provider == "local" else None
    accounting = "docker stats (usage - cache)" if provider == "docker" else "cgroup memory usage"
    rows = [Row(provider, "idle sandbox: host RSS", rss, limit=limit,
                note=f"summed over each sandbox's processes ({'/'.join(map(str, sorted(counts)))})"),
            Row(provider, "idle sandbox: host PSS", pss)]
    if own.values:
        rows.append(Row(provider, f"idle sandbox: {accounting}", own))
    return rows


# --------------------------------------------------------------------------- kernel, CLI


def kernel_rows(ctx: Context) -> list[Row]:
    """Proxy kernel cell round trip vs plain ipykernel, both through jupyter_client."""
    name, base_name = "proxy kernel cell round trip", "plain ipykernel execute"
    target = TARGETS[("kernel", "cell")]
    argv, why = proxy_kernel_argv()
    if argv is None:
        return [unavailable("kernel", name, why, base_name, target)]
    ipy = ctx.ipy()
    ctx.log("[kernel] starting the proxy kernel")
    try:
        kernel = JupyterKernel(argv, env={"NEXUS_HOME": str(ctx.settings.home),
                                          "NEXUS_USER": ctx.user})
    except Exception as exc:
        return [unavailable("kernel", name, f"it did not start: {exc}", base_name, target)]
    try:
        first = timed_ms(lambda: kernel.execute("print(1)", timeout=120))
        reply = kernel.execute("print(1)")
        if reply.get("status") != "ok" or reply["_stdout"].strip() != "1":
            return [unavailable("kernel", name, f"print(1) gave {reply!r}", base_name, target)]
        ctx.log(f"[kernel] cell round trip x{ctx.reps * 3}")
        a, b = compare(lambda: kernel.execute("print(1)"), lambda: ipy.execute("print(1)"),
                       ctx.reps * 3, ctx.warmup + 3)
        return [Row("kernel", name, a, base_name, b, target=target,
                    note=f"first cell (sandbox start) {first:.0f} ms")]
    finally:
        kernel.close()


#: What the installed ``nexus`` console script does, but importing the checkout the harness
#: runs from (run with cwd = the repository root), so a before/after run compares trees.
NEXUS_SCRIPT = "import sys; from nexus_kernel.cli import main; sys.exit(main())"
ROOT = Path(__file__).resolve().parent.parent


def cli_rows(ctx: Context) -> list[Row]:
    """``nexus sandbox list --json`` and ``nexus --help`` cold starts vs ``python3 -c pass``
    (same interpreter, same environment), with and without the package's bytecode caches."""
    records = len(list(Store(ctx.settings.store_dir).records()))
    ctx.log(f"[cli] nexus sandbox list --json, nexus --help x{ctx.reps}")
    rows = []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    bare = spawn([sys.executable, "-c", "pass"], env=env)
    with tempfile.TemporaryDirectory(prefix="nexus-bench-cli-") as fresh:
        # Without caches: a copy of the package with no __pycache__, which this run may not
        # write (a checkout or an install that did not compile); the standard library and
        # site-packages keep theirs, as they do for the bare interpreter.
        shutil.copytree(ROOT / "nexus_kernel", Path(fresh) / "nexus_kernel",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for label, cwd, cached in (("", ROOT, True), (" (no bytecode cache)", fresh, False)):
            run_env = env if cached else {**env, "PYTHONDONTWRITEBYTECODE": "1"}
            for args, target in ((["sandbox", "list", "--json"], TARGETS[("cli", "list")]),
                                 (["--help"], None)):
                cmd = [sys.executable, "-c", NEXUS_SCRIPT, *args]
                spawn(cmd, env=run_env, cwd=cwd)()  # writes the bytecode cache when allowed
                a, b = compare(spawn(cmd, env=run_env, cwd=cwd), bare, ctx.reps, ctx.warmup)
                rows.append(Row("cli", f"`nexus {' '.join(args)}`{label}", a,
                                "bare `python3 -c pass`", b, target=target if cached else None,
                                note=f"{sys.executable}; {records} records in the store"))
    return rows


def mcp_rows(ctx: Context) -> list[Row]:
    """An MCP ``sandbox_run`` of ``print(1)`` over stdio (``nexus mcp`` as the SDK's client
    launches it) vs the same run through the manager, on the same sandbox and session."""
    name, base_name = "MCP sandbox_run round trip (stdio)", "direct SandboxManager.run"
    try:
        from anyio.from_thread import start_blocking_portal
        from mcp import Client, StdioServerParameters
    except ImportError as exc:
        return [unavailable("mcp", name, f"the mcp SDK is missing ({exc})", base_name)]
    env = {**os.environ, "NEXUS_HOME": str(ctx.settings.home), "NEXUS_USER": ctx.user}
    params = StdioServerParameters(command=sys.executable, args=["-c", NEXUS_SCRIPT, "mcp"],
                                   env=env, cwd=str(ROOT))
    mgr = ctx.manager()
    ctx.log("[mcp] starting `nexus mcp` over stdio")
    with start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(Client(params, mode="legacy")) as client:
        created = portal.call(client.call_tool, "sandbox_create", {"name": "bench-mcp"})
        sid = created.structured_content["sandbox_id"]
        args = {"sandbox_id": sid, "code": "print(1)"}

        def via_mcp() -> None:
            out = portal.call(client.call_tool, "sandbox_run", args)
            assert out.structured_content["stdout"] == "1\n", out

        def direct() -> None:
            assert mgr.run(sid, "python", "print(1)", session="default").stdout == "1\n"

        ctx.log(f"[mcp] sandbox_run print(1) x{ctx.reps * 3}")
        a, b = compare(via_mcp, direct, ctx.reps * 3, ctx.warmup + 3)
        portal.call(client.call_tool, "sandbox_stop", {"sandbox_id": sid})
    mgr.close()
    return [Row("mcp", name, a, base_name, b,
                note="JSON-RPC over the server's stdin/stdout, a thread hop in each process")]


# --------------------------------------------------------------------------- concurrency


def concurrency_rows(ctx: Context, levels: list[int]) -> list[Row]:
    """N local sandboxes, each running a python session cell at the same moment."""
    idle = measure(spawn(["true"]), 40, 3)
    rows: list[Row] = []
    for n in levels:
        rows += _concurrency_level(ctx, n, idle)
    return rows


def _concurrency_level(ctx: Context, n: int, idle: Sample) -> list[Row]:
    mgr = ctx.manager()
    ctx.log(f"[concurrency] creating {n} local sandboxes")
    with ThreadPoolExecutor(max_workers=min(8, n)) as pool:
        ids = list(pool.map(lambda i: mgr.create(f"conc-{i}").sandbox_id, range(n)))
    try:
        rounds = 2 if ctx.quick else 5
        probe = responsiveness_probe()
        first, first_ok, _ = _burst(mgr, ids)  # starts every session worker
        latencies, ok, walls = Sample(), 0, []
        cpu = sum(os.times()[:2])  # this process's: the manager's work per cell
        for _ in range(rounds):
            lat, done, wall = _burst(mgr, ids)
            latencies.values += lat.values
            ok += done
            walls.append(wall)
        cpu = sum(os.times()[:2]) - cpu
        spawn_lat = finish_probe(probe)
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(mgr.stop, ids))
        mgr.close()
    cells = rounds * n
    throughput = Sample([cells / (sum(walls) / 1000.0)], unit="cells/s")
    complete = ok == cells and first_ok == n
    ctx.log(f"[concurrency] n={n}: {ok}/{cells} ok, p95 {latencies.p95:.1f} ms, "
            f"{throughput.values[0]:.0f} cells/s")
    return [
        Row("concurrency", f"{n} sandboxes: cell latency", latencies,
            note=f"{ok}/{cells} warm cells ok, {first_ok}/{n} first cells ok "
                 f"(first cell p95 {first.p95:.0f} ms: starts the session)",
            extra={"first_cell": first.to_dict(), "completed": ok, "cells": cells,
                   "all_complete": complete}),
        Row("concurrency", f"{n} sandboxes: throughput", throughput,
            note=f"host CPU {cpu / cells * 1000:.2f} ms per cell (the benchmark process)"),
        Row("concurrency", f"{n} sandboxes: host `true` spawn", Sample(spawn_lat),
            "idle host `true` spawn", idle,
            note="a separate process spawning `true` every 20 ms during the load"),
    ]


def _burst(mgr: SandboxManager, ids: list[str]) -> tuple[Sample, int, float]:
    """Every sandbox runs one session cell at once; (latencies, successes, wall ms)."""
    barrier = threading.Barrier(len(ids) + 1)
    latencies = Sample()
    ok = [0]
    lock = threading.Lock()

    def one(sid: str) -> None:
        barrier.wait()
        start = time.perf_counter()
        try:
            result = mgr.run(sid, "python", "print(1)", session="bench", timeout=120)
            good = result.stdout.strip() == "1"
        except Exception:
            good = False
        elapsed = (time.perf_counter() - start) * 1000.0
        with lock:
            latencies.add(elapsed)
            ok[0] += good

    threads = [threading.Thread(target=one, args=(sid,)) for sid in ids]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, ok[0], (time.perf_counter() - start) * 1000.0


# --------------------------------------------------------------------------- store


def store_rows(ctx: Context, sizes: tuple[int, ...] = (1000, 10000)) -> list[Row]:
    """insert / get / update / list on a fresh store holding 1,000 and 10,000 records."""
    rows = []
    for size in sizes:
        ctx.log(f"[store] {size} records")
        tmp = tempfile.mkdtemp(prefix="nexus-bench-store-")
        try:
            samples = _store_ops(ctx, Store(tmp), size)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows += [Row("store", f"{op} ({size} records)", sample) for op, sample in samples.items()]
    return rows


def _store_ops(ctx: Context, store: Store, size: int) -> dict[str, Sample]:
    now = time.time()
    ids = [f"sb_{i:016x}" for i in range(size)]
    samples = {op: Sample() for op in ("insert", "get", "update")}
    for sid in ids:
        record = SandboxRecord(sid, "bench", ctx.user, "local", Status.ACTIVE, 10.0,
                               now, now, now + 600, handle={"token": "x" * 64}).to_dict()
        samples["insert"].add(timed_ms(lambda: store.insert(record)))  # noqa: B023
    picks = [random.choice(ids) for _ in range(min(size, 2000))]
    for sid in picks:
        samples["get"].add(timed_ms(lambda: store.get(sid)))  # noqa: B023
    for sid in picks:
        samples["update"].add(timed_ms(lambda: store.update(sid, _bump)))  # noqa: B023
    samples["list all"] = measure(lambda: list(store.records()), 2 if ctx.quick else 5, 1)
    store.close()
    return samples


def _bump(data: dict[str, Any]) -> dict[str, Any]:
    data["last_active_at"] = time.time()
    return data


# --------------------------------------------------------------------------- pool


def pool_rows(ctx: Context) -> list[Row]:
    """create from a filled warm pool vs bare ``python3 -c pass``. The pool is refilled
    (untimed) before every hand-out; in real use a background filler does that."""
    name, base_name = "create from warm pool", "bare `python3 -c pass`"
    target = TARGETS[("pool", "create")]
    from dataclasses import fields, replace

    if "pool_size" not in {f.name for f in fields(Settings)}:
        return [unavailable("pool", name, "this tree has no warm pool", base_name, target)]

    mgr = SandboxManager(replace(ctx.settings, pool_size=2, pool_refill="off"), user=ctx.user)
    handed: list[str] = []
    base = spawn([ctx.python, "-c", "pass"])
    a, b = Sample(), Sample()
    ctx.log(f"[pool] create from a warm pool x{ctx.create_reps}")
    try:
        for i in range(ctx.create_reps + 2):
            mgr.pool.fill()
            time.sleep(0.05)  # let the new agents settle, as they would in a real pool
            elapsed = timed_ms(lambda: handed.append(mgr.create("bench-pool").sandbox_id))
            base_ms = timed_ms(base)
            if i >= 2:
                a.add(elapsed)
                b.add(base_ms)
        hits = sum(1 for sid in handed if (mgr.store.get(sid) or {}).get("pooled_at"))
    finally:
        for sid in handed:
            mgr.stop(sid)
        mgr.pool.drain()
        mgr.close()
    return [Row("pool", name, a, base_name, b, target=target,
                note=f"{hits}/{len(handed)} hand-outs came from the pool")]
