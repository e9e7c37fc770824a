"""Docker's time to a first result (issue 18 item 5): the direct stream to the agent
(``providers/docker_direct.py``) against the exec relay it replaces (``NEXUS_DOCKER_DIRECT=0``)
and docker-py, interleaved in one run.

``python -m benchmarks.first_result [--reps N]`` prints, as medians (ms) and ratios:

- create + first result: ``create`` then a stateless ``print(1)`` through the manager, vs
  docker-py ``containers.run(detach)`` + ``exec_run(python3 -c print(1))`` of the same image;
- a new CLI process's ``nexus sandbox run ID -c 'print(1)'`` on docker vs the same on local
  (with bytecode caches: the warm-up round writes them);
- pause + resume through the manager vs docker-py ``pause()`` + ``unpause()``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from nexus_kernel.config import Settings
from nexus_kernel.manager import SandboxManager

from .baselines import DockerBaseline

CLI = "import sys; from nexus_kernel.cli import main; sys.exit(main())"
ROOT = Path(__file__).resolve().parent.parent


def interleaved(cases: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                after: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """ms per call of each case, round robin (A, B, C, A, B, C ...); ``after`` (untimed)
    runs after each round."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(warmup + reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            elapsed = (time.perf_counter() - start) * 1000.0
            if i >= warmup:
                times[name].append(elapsed)
        if after is not None:
            after()
    return times


def report(title: str, times: dict[str, list[float]], baseline: str) -> None:
    base = statistics.median(times[baseline])
    print(f"\n{title}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<48} median {med:8.1f} ms  p90 {sorted(values)[int(len(values) * .9) - 1]:8.1f}"
              f"  ratio {med / base:5.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_result")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--only", default="create,cli,pause")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    home = Path(tempfile.mkdtemp(prefix="nexus-bench-first-"))
    os.environ.setdefault("NEXUS_POOL_SIZE", "0")
    settings = Settings.load(home=home, default_template="minimal")
    managers = {"direct": SandboxManager(settings),
                "relay": SandboxManager(replace(settings, docker_direct=False))}
    plain = DockerBaseline(settings.docker_image, settings.docker_host)
    made: list[tuple[SandboxManager, str]] = []
    print(f"loadavg before: {Path('/proc/loadavg').read_text().strip()}")
    try:
        if "create" in only:
            def first(mode: str) -> Callable[[], None]:
                def go() -> None:
                    mgr = managers[mode]
                    sid = mgr.create(f"first-{mode}", provider="docker").sandbox_id
                    made.append((mgr, sid))
                    assert mgr.run(sid, "python", "print(1)").stdout == "1\n"
                return go

            def base() -> None:
                container = plain.running()
                assert container.exec_run(["python3", "-c", "print(1)"]).output == b"1\n"

            def clean() -> None:
                while made:
                    mgr, sid = made.pop()
                    mgr.stop(sid)
                while plain._made:
                    plain._made.pop().remove(force=True)

            report("docker create + first result (print(1))",
                   interleaved({"direct stream": first("direct"), "exec relay": first("relay"),
                                "docker-py containers.run + exec_run": base},
                               args.reps, after=clean), "docker-py containers.run + exec_run")
        if "cli" in only:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            env.update(NEXUS_HOME=str(home), NEXUS_DEFAULT_TEMPLATE="minimal",
                       PYTHONPATH=str(ROOT))  # bytecode caches, as an installed package has
            ids = {"docker": managers["direct"].create("cli-docker", provider="docker").sandbox_id,
                   "local": managers["direct"].create("cli-local", provider="local").sandbox_id}
            made += [(managers["direct"], sid) for sid in ids.values()]

            def cli(sid: str, **extra: str) -> Callable[[], None]:
                cmd = [sys.executable, "-c", CLI, "sandbox", "run", sid, "-c", "print(1)"]
                run_env = {**env, **extra}

                def go() -> None:
                    out = subprocess.run(cmd, env=run_env, capture_output=True, text=True)
                    assert out.stdout == "1\n", out.stderr
                return go

            report("new CLI process: nexus sandbox run ID -c 'print(1)'",
                   interleaved({"docker, direct stream": cli(ids["docker"]),
                                "docker, exec relay": cli(ids["docker"], NEXUS_DOCKER_DIRECT="0"),
                                "local": cli(ids["local"])}, args.reps), "local")
        if "pause" in only:
            sids = {mode: mgr.create(f"pause-{mode}", provider="docker").sandbox_id
                    for mode, mgr in managers.items()}
            made += [(managers[mode], sid) for mode, sid in sids.items()]
            container = plain.running()

            def cycle(mode: str) -> Callable[[], None]:
                def go() -> None:
                    managers[mode].pause(sids[mode])
                    managers[mode].resume(sids[mode])
                return go

            def base() -> None:
                container.pause()
                container.unpause()

            report("pause + resume",
                   interleaved({"direct stream": cycle("direct"), "exec relay": cycle("relay"),
                                "docker-py pause()+unpause()": base}, args.reps),
                   "docker-py pause()+unpause()")
    finally:
        for mgr, sid in made:
            try:
                mgr.stop(sid)
            except Exception as exc:  # report and go on cleaning
                print(f"stop {sid}: {exc}", file=sys.stderr)
        for mgr in managers.values():
            mgr.close()
        plain.cleanup()
        print(f"loadavg after: {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
