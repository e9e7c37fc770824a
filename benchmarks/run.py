"""Run the nexus-kernel benchmarks, print a table and write JSON.

    python3 -m benchmarks [--providers local,docker] [--quick] [--json PATH]
                          [--concurrency 1,10,50,100] [--only GROUPS] [--markdown PATH]
                          [--peers] [--peers-clean]

Groups (``--only``): create, run, session, pause, memory, stop, provider (the provider alone,
without the manager), kernel, cli, mcp, concurrency, store, pool, snapshot, peers (only with
``--peers``: llm-sandbox and nexus-ai-fs side by side, see benchmarks/peers.py). Sandboxes live in a private temporary NEXUS_HOME (``--home`` to choose one),
so the benchmark never touches your own sandboxes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python3 benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from .timing import Row, unavailable  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GROUPS = ("create", "run", "session", "pause", "memory", "stop", "provider", "kernel", "cli",
          "mcp", "concurrency", "store", "pool", "snapshot", "peers")
#: The groups of cases.provider_rows (through the manager).
MANAGER_GROUPS = ("create", "run", "session", "pause", "memory", "stop")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--providers", default=None,
                   help="comma-separated providers (default: local, plus docker when it "
                        "answers); docker-runsc: docker under gVisor")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, concurrency 1,10")
    p.add_argument("--json", default=str(RESULTS / "latest.json"), metavar="PATH",
                   help="where to write the JSON results (default benchmarks/results/latest.json)")
    p.add_argument("--markdown", default=None, metavar="PATH",
                   help="also write the table as markdown (e.g. benchmarks/results/README-table.md)")
    p.add_argument("--concurrency", default=None, metavar="N,N,...",
                   help="concurrent local sandboxes (default 1,10,50,100; quick 1,10)")
    p.add_argument("--reps", type=int, default=None, help="repetitions of fast operations")
    p.add_argument("--only", default=None, help=f"comma-separated groups: {','.join(GROUPS)}")
    p.add_argument("--home", default=None, help="NEXUS_HOME to use (default: a fresh temp dir)")
    p.add_argument("--peers", action="store_true",
                   help="also measure llm-sandbox and nexus-ai-fs side by side on docker "
                        "(installs them, pinned, into throwaway venvs once)")
    p.add_argument("--peers-clean", action="store_true",
                   help="remove the peers' virtual environments and image, and exit")
    args = p.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(GROUPS)
        if unknown:
            p.error(f"unknown group(s): {', '.join(sorted(unknown))}")
        if "peers" in args.only.split(",") and not args.peers:
            p.error("the peers group needs --peers")
    return args


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f
                                if ln.startswith("model name")), "?")
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    for key, cmd in (("docker", ["docker", "version", "--format", "{{.Server.Version}}"]),
                     ("bwrap", ["bwrap", "--version"])):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
            info[key] = out.split()[-1] if out else "unavailable"
        except (OSError, subprocess.TimeoutExpired):
            info[key] = "unavailable"
    return info


def docker_available(settings: Any) -> str | None:
    """None when the docker provider can run here, else why not."""
    try:
        from nexus_kernel.providers.docker import DockerProvider

        DockerProvider.check_available(settings)
    except Exception as exc:
        return str(exc)
    return None


def fmt(value: float | None, unit: str = "ms") -> str:
    if value is None:
        return "-"
    if unit == "ms":
        digits = 3 if value < 1 else 2 if value < 10 else 1 if value < 100 else 0
        return f"{value:.{digits}f}"
    return f"{value:.1f}"


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = [["group", "measurement", "median", "p95", "baseline (median)", "ratio", "target",
            "verdict"]]
    for r in rows:
        unit = r.sample.unit if r.sample else ""
        base = ""
        if r.baseline_name:
            base = r.baseline_name
            if r.baseline is not None:
                base += f" {fmt(r.baseline.median, r.baseline.unit)} {r.baseline.unit}"
        out.append([
            r.group,
            r.name,
            f"{fmt(r.sample.median, unit)} {unit}" if r.sample else "-",
            f"{fmt(r.sample.p95, unit)} {unit}" if r.sample else "-",
            base,
            f"{r.ratio:.2f}x" if r.ratio is not None else "-",
            r.goal,
            r.verdict if r.available else "n/a (" + r.note.removeprefix("not available: ") + ")",
        ])
    return out


def render_text(rows: list[Row]) -> str:
    cells = table_rows(rows)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r.group}/{r.name.strip()}: {r.note}" for r in rows if r.note and r.available]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def render_markdown(rows: list[Row], machine: dict[str, Any], started: str) -> str:
    cells = table_rows(rows)
    head = (f"Measured {started} on {machine.get('nproc')} x {machine.get('cpu')}, "
            f"{machine.get('memory_gib')} GiB, Linux {machine.get('kernel')}, "
            f"Docker {machine.get('docker')}, bubblewrap {machine.get('bwrap')}, "
            f"Python {machine.get('python')}.")
    lines = [head, "", "| " + " | ".join(cells[0]) + " |",
             "|" + "|".join("---" for _ in cells[0]) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells[1:]]
    notes = [f"- {r.group}/{r.name.strip()}: {r.note}" for r in rows if r.note and r.available]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _peers_table(rows: list[Row]) -> str:
    """The side-by-side table of the peers group, "" without one."""
    if not any(r.group == "peers" for r in rows):
        return ""
    from .peers import side_by_side

    return side_by_side(rows)


def _default_environment(user_home: Path, home: Path) -> str:
    """Give the benchmark's NEXUS_HOME the default local environment (template
    "datascience") of the user's NEXUS_HOME, building it there when missing (what
    scripts/demo.sh does; a no-op when built); "" when done, else a note and lean sandboxes."""
    from nexus_kernel import templates
    from nexus_kernel.config import Settings
    from nexus_kernel.errors import SandboxError

    name = os.environ.get("NEXUS_DEFAULT_TEMPLATE") or "datascience"
    if name in templates.LEAN or (home / "templates" / name).exists():
        return ""
    try:
        built = templates.create_template(Settings.load(home=user_home), name, [], quiet=True)
    except SandboxError as exc:
        os.environ["NEXUS_DEFAULT_TEMPLATE"] = "minimal"
        return f"default environment {name!r} not available ({exc}): local rows are lean"
    (home / "templates").mkdir(parents=True, exist_ok=True)
    (home / "templates" / name).symlink_to(user_home / "templates" / name)
    return "" if built.get("cached") else f"built the default environment {name!r} first"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peers_clean:
        from nexus_kernel.config import Settings

        from .peers import PEER_IMAGE, clean, peers_dir

        clean(Settings.load().docker_host)
        print(f"removed {peers_dir()} and the image {PEER_IMAGE}", file=sys.stderr)
        return 0
    user_home = os.environ.get("NEXUS_HOME") or str(Path.home() / ".nexus")
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    os.environ["NEXUS_HOME"] = str(home)
    default_note = _default_environment(Path(user_home), home)
    os.environ["NEXUS_USER"] = "bench"
    os.environ.setdefault("NEXUS_POOL_SIZE", "0")  # the pool has its own rows

    from nexus_kernel.config import Settings

    from . import cases
    from .snapshots import snapshot_rows

    settings = Settings.load()
    providers = args.providers.split(",") if args.providers else ["local", "docker"]
    if not args.providers and docker_available(settings) is not None:
        providers.remove("docker")
    levels = [int(x) for x in (args.concurrency or ("1,10" if args.quick else "1,10,50,100")).split(",")]
    reps = args.reps or (8 if args.quick else 30)
    ctx = cases.Context(
        settings=settings, user="bench", reps=reps, create_reps=max(5, reps * 2 // 3),
        warmup=2, quick=args.quick, only=set(args.only.split(",")) if args.only else None,
        log=lambda msg: print(f"  .. {msg}", file=sys.stderr, flush=True),
    )
    if default_note:
        ctx.notes.append(default_note)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine = machine_info()
    print(f"nexus benchmarks: {machine}", file=sys.stderr)
    rows: list[Row] = []

    def attempt(group: str, fn: Any, *args: Any) -> None:
        """Run one group; a failure becomes a row saying so, and the others still run."""
        try:
            rows.extend(fn(*args))
        except Exception as exc:
            import traceback

            traceback.print_exc()
            rows.append(unavailable(group, f"{group} rows", f"failed: {exc}"))

    try:
        for provider in providers:
            if provider.startswith("docker") and (why := docker_available(settings)):
                rows.append(unavailable("docker", "every docker row", why))
                continue
            if any(ctx.wants(group) for group in MANAGER_GROUPS):
                attempt(provider, cases.provider_rows, ctx, provider)
            if ctx.wants("provider"):
                attempt(provider, cases.provider_level_rows, ctx, provider)
        for group, fn, *extra in (("pool", cases.pool_rows), ("kernel", cases.kernel_rows),
                                  ("cli", cases.cli_rows), ("mcp", cases.mcp_rows),
                                  ("concurrency", cases.concurrency_rows, levels),
                                  ("store", cases.store_rows),
                                  ("snapshot", snapshot_rows)):
            if ctx.wants(group):
                attempt(group, fn, ctx, *extra)
        if args.peers and ctx.wants("peers"):
            from .peers import peer_rows

            attempt("peers", peer_rows, ctx)
    finally:
        if ctx.ipykernel is not None:
            ctx.ipykernel.close()
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)

    print(render_text(rows))
    side = _peers_table(rows)
    if side:
        print("\n" + side)
    result = {"started": started, "machine": machine, "options": vars(args),
              "rows": [r.to_dict() for r in rows]}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {out}", file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(rows, machine, started)
                                       + (f"\n{side}" if side else ""))
        print(f"markdown: {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
