"""Snapshot benchmarks (issue 16): snapshot and restore time and memory overhead of a
python session holding 10 MB and 500 MB of Python objects (local sandboxes), and the
per-cell cost of the proxy kernel's automatic checkpoints (checkpoints on vs off, each
against a plain ipykernel execute round trip)."""

from __future__ import annotations

import time
from dataclasses import replace

from nexus_kernel.manager import SandboxManager

from .baselines import JupyterKernel, proxy_kernel_argv
from .cases import TARGETS, Context, _cgroup_memory_mb
from .timing import Row, Sample, compare, measure, timed_ms, unavailable

#: MB of Python objects in the session: bytearrays of 1000 bytes, one object each.
SIZES_MB = (10, 500)
SESSION = "bench"


def snapshot_rows(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for size in SIZES_MB:
        rows.extend(_size_rows(ctx, size))
    rows.extend(_kernel_rows(ctx))
    return rows


def _size_rows(ctx: Context, size: int) -> list[Row]:
    settings = replace(ctx.settings, memory_mb=max(ctx.settings.memory_mb, size * 3 + 512))
    mgr = SandboxManager(settings)
    sid = mgr.create(f"bench-snap-{size}", 10).sandbox_id
    label = f"session of {size} MB objects"
    try:
        ctx.log(f"[snapshot] filling a session with {size} MB")
        fill = f"data = [bytearray(1000) for _ in range({size * 1000})]"
        mgr.run(sid, "python", fill, 600, session=SESSION)
        handle = mgr.status(sid).handle
        before = _cgroup_memory_mb(handle)
        reps = 3 if size > 100 else ctx.reps
        snap = measure(lambda: mgr.snapshot(sid, "bench"), reps, 1)
        after = _cgroup_memory_mb(handle)
        restore = measure(lambda: mgr.restore(sid, "bench"), reps, 1)
        check = mgr.run(sid, "python", "print(len(data))", 60, session=SESSION)
        assert check.stdout.strip() == str(size * 1000), check
        mgr.run(sid, "python", "for b in data: b[0] = 1", 600, session=SESSION)
        rewritten = _cgroup_memory_mb(handle)
        rows = [Row("snapshot", f"snapshot, {label}", snap, note="fork of the worker + home copy"),
                Row("snapshot", f"restore, {label}", restore,
                    note="kill the worker, holder forks a new one, files synced")]
        if before is not None and after is not None and rewritten is not None:
            rows.append(Row("snapshot", f"memory right after a snapshot, {label}",
                            Sample([after - before], unit="MB"),
                            note="cgroup memory growth: copy-on-write pages are shared"))
            rows.append(Row("snapshot", f"memory once the session rewrote its objects, {label}",
                            Sample([rewritten - before], unit="MB"),
                            note="every page copied: the snapshot now pins its own copy"))
        return rows
    finally:
        mgr.stop(sid)
        mgr.close()


def _kernel_rows(ctx: Context) -> list[Row]:
    """The proxy kernel's cell round trip with automatic checkpoints on (the default) and
    off, each against the same plain ipykernel, interleaved."""
    base_name = "plain ipykernel execute"
    target = TARGETS[("kernel", "cell")]
    argv, why = proxy_kernel_argv()
    if argv is None:
        return [unavailable("snapshot", "kernel cell with checkpoints", why, base_name, target)]
    off_target = TARGETS[("kernel", "cell, checkpoints off")]
    ipy = ctx.ipy()
    rows = []
    for keep in (str(ctx.settings.checkpoints or 5), "0"):
        env = {"NEXUS_HOME": str(ctx.settings.home), "NEXUS_USER": ctx.user,
               "NEXUS_CHECKPOINTS": keep}
        kernel = JupyterKernel(argv, env=env)
        try:
            first = timed_ms(lambda k=kernel: k.execute("x = 1", timeout=120))
            reply = kernel.execute("print(1)")
            assert reply.get("status") == "ok", reply
            ctx.log(f"[snapshot] kernel cell round trip, NEXUS_CHECKPOINTS={keep}")
            a, b = compare(lambda k=kernel: k.execute("print(1)"), lambda: ipy.execute("print(1)"),
                           ctx.reps * 3, ctx.warmup + 3)
            state = f"checkpoints on (last {keep})" if keep != "0" else "checkpoints off"
            rows.append(Row("snapshot", f"proxy kernel cell round trip, {state}", a, base_name, b,
                            target=target if keep != "0" else off_target,
                            note=f"first cell {first:.0f} ms"))
        finally:
            kernel.close()
        time.sleep(0.5)
    return rows
