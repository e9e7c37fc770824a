"""Side by side with the peers (issue 18): llm-sandbox and nexus-ai-fs, each installed at a
pinned version into a throwaway virtual environment of its own and driven by
``peer_driver.py`` there, measured interleaved with our docker provider and raw docker-py on
the same engine and image: create -> ready, stateless ``print(1)``, create + first result,
pause + resume, stop.

The environments live in ``$NEXUS_BENCH_PEERS_DIR`` (default
``~/.cache/nexus-kernel/bench-peers``), reused while the pins match; ``--peers-clean``
removes them and the peers' image.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .timing import Row, Sample, unavailable

DRIVER = Path(__file__).resolve().parent / "peer_driver.py"
CODE = "print(1)"
#: The run's share of "create + first result" (the first run in a new sandbox).
FIRST = "  of which the first run"


@dataclass(frozen=True)
class Peer:
    """A peer library: its adapter's name in peer_driver.py, its environment's pins."""

    name: str
    requirements: tuple[str, ...]


PEERS = (
    Peer("nexus-ai-fs", ("nexus-ai-fs==0.5.6", "docker==7.2.0")),  # docker: not among its deps
    Peer("llm-sandbox", ("llm-sandbox[docker]==0.3.46",)),
)
#: Both peers run ``python`` (not ``python3``): the sandbox image plus that one symlink.
PEER_IMAGE = "nexus-bench-peers:latest"
OPS = ("create -> ready", "stateless print(1)", "create + first result", FIRST, "pause + resume",
       "stop")
#: Targets of issue 18, ratio us / docker-py and us / peer of medians.
RAW_TARGETS = {"stateless print(1)": 0.2, "create + first result": 1.0, "pause + resume": 1.5}
PEER_TARGETS = {
    ("stateless print(1)", "nexus-ai-fs"): 0.1,
    ("stateless print(1)", "llm-sandbox"): 0.04,
    ("create + first result", "nexus-ai-fs"): 1.0,
    ("create + first result", "llm-sandbox"): 1.0,
    ("pause + resume", "nexus-ai-fs"): 1.0,
}
RAW_NAMES = {
    "create -> ready": "docker-py containers.run(detach)",
    "stateless print(1)": "docker-py exec_run(python3)",
    "create + first result": "docker-py containers.run + exec_run",
    FIRST: "docker-py exec_run(python3), new container",
    "pause + resume": "docker-py pause()+unpause()",
    "stop": "docker-py remove(force=True)",
}


def peers_dir() -> Path:
    return Path(os.environ.get("NEXUS_BENCH_PEERS_DIR")
                or Path.home() / ".cache" / "nexus-kernel" / "bench-peers")


def clean(docker_host: str = "") -> None:
    """Remove every peer environment and the peers' image."""
    shutil.rmtree(peers_dir(), ignore_errors=True)
    with contextlib.suppress(Exception):  # no engine, or no image: nothing to remove
        import docker

        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        client.images.remove(PEER_IMAGE)


def ensure_venv(peer: Peer, log: Callable[[str], None]) -> Path:
    """The python of ``peer``'s environment, (re)installed when its pins changed."""
    venv = peers_dir() / peer.name
    python, pins = venv / "bin" / "python", venv / "pins.txt"
    want = "\n".join(peer.requirements)
    if python.exists() and pins.exists() and pins.read_text() == want:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    log(f"[peers] installing {' '.join(peer.requirements)} into {venv} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", *peer.requirements],
                          capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"pip install {' '.join(peer.requirements)} failed: {' / '.join(tail)}")
    pins.write_text(want)
    return python


def ensure_peer_image(base: str, client: Any) -> str:
    """Our sandbox image with ``python`` -> ``python3`` (both peers call ``python``), built
    offline once per base image id."""
    base_id = client.images.get(base).id
    with contextlib.suppress(Exception):
        if client.images.get(PEER_IMAGE).labels.get("nexus.bench.base") == base_id:
            return PEER_IMAGE
    dockerfile = (f"FROM {base}\nUSER root\nRUN ln -sf /usr/bin/python3 /usr/local/bin/python\n"
                  f"USER 1000:1000\nLABEL nexus.bench.base={base_id}\n")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "Dockerfile").write_text(dockerfile)
        client.images.build(path=tmp, tag=PEER_IMAGE, rm=True, pull=False)
    return PEER_IMAGE


# --------------------------------------------------------------------------- subjects


class PeerProcess:
    """One peer's driver, run by its environment's python; answers in JSON lines."""

    def __init__(self, python: str | os.PathLike[str], adapter: str, image: str):
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen([str(python), str(DRIVER), adapter, image],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, bufsize=1)
        hello = self.ask({"op": "hello"})
        self.name, self.version = hello["name"], hello["version"]
        self.unsupported: dict[str, str] = hello.get("unsupported", {})

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.seek(0)
            tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"peer driver exited: {' / '.join(tail) or 'no output'}")
        ans = json.loads(line)
        if "error" in ans:
            raise RuntimeError(f"{req['op']}: {ans['error']}")
        return ans

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask({"op": "quit"})
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=180)
        if self.proc.poll() is None:
            self.proc.kill()
        self.stderr.close()


class Subject:
    """What is measured; ``why`` names the operations the subject lacks and says why.
    ``create_run`` returns (handle, total ms, stdout, ms of the run alone). A subject that
    ``may_fail`` gets "failed: ..." for an operation that raised, instead of ending the run."""

    label: str
    why: dict[str, str]
    may_fail = False

    def create(self) -> tuple[Any, float]: ...
    def run(self, h: Any) -> tuple[float, str]: ...
    def create_run(self) -> tuple[Any, float, str, float]: ...
    def pause_resume(self, h: Any) -> float: ...
    def stop(self, h: Any) -> float: ...
    def discard(self, h: Any) -> None: ...
    def close(self) -> None: ...


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class PeerSubject(Subject):
    may_fail = True

    def __init__(self, proc: PeerProcess):
        self.proc, self.label = proc, proc.label
        self.why = dict(proc.unsupported)

    def create(self) -> tuple[Any, float]:
        ans = self.proc.ask({"op": "create"})
        return ans["id"], ans["ms"]

    def run(self, h: Any) -> tuple[float, str]:
        ans = self.proc.ask({"op": "run", "id": h, "code": CODE})
        return ans["ms"], ans["stdout"]

    def create_run(self) -> tuple[Any, float, str, float]:
        ans = self.proc.ask({"op": "create_run", "code": CODE})
        return ans["id"], ans["ms"], ans["stdout"], ans["run_ms"]

    def pause_resume(self, h: Any) -> float:
        return self.proc.ask({"op": "pause_resume", "id": h})["ms"]

    def stop(self, h: Any) -> float:
        return self.proc.ask({"op": "stop", "id": h})["ms"]

    def discard(self, h: Any) -> None:
        self.proc.ask({"op": "discard", "id": h})

    def close(self) -> None:
        self.proc.close()


class NexusSubject(Subject):
    """Our docker provider through the manager (what every surface pays)."""

    label = "nexus (docker)"
    why: dict[str, str] = {}

    def __init__(self, mgr: Any):
        self.mgr = mgr

    def create(self) -> tuple[Any, float]:
        start = time.perf_counter()
        sid = self.mgr.create("bench-peers", provider="docker").sandbox_id
        return sid, _ms(start)

    def run(self, h: Any) -> tuple[float, str]:
        start = time.perf_counter()
        out = self.mgr.run(h, "python", CODE).stdout
        return _ms(start), out

    def create_run(self) -> tuple[Any, float, str, float]:
        start = time.perf_counter()
        sid = self.mgr.create("bench-peers", provider="docker").sandbox_id
        ran = time.perf_counter()
        out = self.mgr.run(sid, "python", CODE).stdout
        return sid, _ms(start), out, _ms(ran)

    def pause_resume(self, h: Any) -> float:
        start = time.perf_counter()
        self.mgr.pause(h)
        self.mgr.resume(h)
        return _ms(start)

    def stop(self, h: Any) -> float:
        start = time.perf_counter()
        self.mgr.stop(h)
        return _ms(start)

    def discard(self, h: Any) -> None:
        self.mgr.stop(h)

    def close(self) -> None:
        self.mgr.close()


class RawDockerSubject(Subject):
    """Plain docker-py: a detached ``sleep infinity`` container (as DockerBaseline.running
    makes, but labelled for this group alone: another benchmark's DockerBaseline.cleanup
    removes every ``nexus.bench`` container), ``exec_run`` of python3."""

    label = "docker-py"
    why: dict[str, str] = {}

    def __init__(self, client: Any, image: str):
        self.client, self.image = client, image
        self.made: list[Any] = []

    def _start(self) -> Any:
        container = self.client.containers.run(
            self.image, ["sleep", "infinity"], detach=True, user="1000:1000",
            network_mode="none", labels={"nexus.bench.peers": "1"})
        self.made.append(container)
        return container

    def create(self) -> tuple[Any, float]:
        start = time.perf_counter()
        container = self._start()
        return container, _ms(start)

    def run(self, h: Any) -> tuple[float, str]:
        start = time.perf_counter()
        out = h.exec_run(["python3", "-c", CODE], user="1000:1000").output.decode()
        return _ms(start), out

    def create_run(self) -> tuple[Any, float, str, float]:
        start = time.perf_counter()
        container = self._start()
        ran = time.perf_counter()
        out = container.exec_run(["python3", "-c", CODE], user="1000:1000").output.decode()
        return container, _ms(start), out, _ms(ran)

    def pause_resume(self, h: Any) -> float:
        start = time.perf_counter()
        h.pause()
        h.unpause()
        return _ms(start)

    def stop(self, h: Any) -> float:
        start = time.perf_counter()
        h.remove(force=True)
        self.made.remove(h)
        return _ms(start)

    def discard(self, h: Any) -> None:
        with contextlib.suppress(Exception):
            h.remove(force=True)
        if h in self.made:
            self.made.remove(h)

    def close(self) -> None:
        for container in list(self.made):
            self.discard(container)
        self.client.close()


# --------------------------------------------------------------------------- measurement


def measure_all(subjects: list[Subject], creates: int, runs: int, stops: int, warmup: int = 1,
                log: Callable[[str], None] = lambda _m: None) -> dict[str, dict[str, Sample]]:
    """Every operation on every subject, interleaved (one of each subject per round, the
    order rotating), so load drift hits all alike. Returns {op: {label: Sample}}; a subject
    lacking an operation has no sample for it. Every sandbox made is stopped or discarded."""
    samples: dict[str, dict[str, Sample]] = {op: {} for op in OPS}
    made: dict[str, list[Any]] = {s.label: [] for s in subjects}

    def rounds(op: str, n: int, fn: Callable[[Subject, int], float | None]) -> None:
        able = [s for s in subjects if op_key(op) not in s.why]
        log(f"[peers] {op} x{n} on {', '.join(s.label for s in able)}")
        for i in range(warmup + n):
            shift = i % len(able)
            for s in able[shift:] + able[:shift]:
                if op_key(op) in s.why:  # failed in an earlier round
                    continue
                try:
                    ms = fn(s, i)
                except Exception as exc:
                    if not s.may_fail:
                        raise
                    log(f"[peers] {s.label}: {op} failed: {exc}")
                    s.why[op_key(op)] = f"failed: {exc}"[:200]
                    for same in (o for o in OPS if op_key(o) == op_key(op)):
                        samples[same].pop(s.label, None)
                    continue
                if i >= warmup and ms is not None:
                    samples[op].setdefault(s.label, Sample()).add(ms)

    def create(s: Subject, _i: int) -> float:
        h, ms = s.create()
        made[s.label].append(h)
        return ms

    def run(s: Subject, _i: int) -> float:
        ms, out = s.run(made[s.label][0])
        if out.strip() != "1":
            raise RuntimeError(f"{s.label}: print(1) gave {out!r}")
        return ms

    def create_run(s: Subject, i: int) -> float:
        h, ms, out, run_ms = s.create_run()
        s.discard(h)
        if out.strip() != "1":
            raise RuntimeError(f"{s.label}: print(1) in a new sandbox gave {out!r}")
        if i >= warmup:
            samples[FIRST].setdefault(s.label, Sample()).add(run_ms)
        return ms

    def stop(s: Subject, i: int) -> float | None:
        victims = made[s.label]
        return s.stop(victims.pop()) if len(victims) > 1 else None

    try:
        rounds("create -> ready", creates, create)
        rounds("stateless print(1)", runs, run)
        rounds("create + first result", creates, create_run)
        rounds("pause + resume", max(5, runs // 2), lambda s, _i: s.pause_resume(made[s.label][0]))
        rounds("stop", min(stops, creates - 1), stop)  # the first sandbox stays to the end
    finally:
        for s in subjects:
            for h in made[s.label]:
                with contextlib.suppress(Exception):
                    s.discard(h)
    return samples


def op_key(op: str) -> str:
    """The driver's name of a table operation."""
    return {"create -> ready": "create", "stateless print(1)": "run",
            "create + first result": "create_run", FIRST: "create_run",
            "pause + resume": "pause_resume",
            "stop": "stop"}[op]


def rows_from(samples: dict[str, dict[str, Sample]], ours: str, raw: str,
              peers: list[Subject]) -> list[Row]:
    """Per operation: us against docker-py, then us against each peer (ratio us / peer)."""
    rows = []
    for op in OPS:
        mine = samples[op].get(ours)
        rows.append(Row("peers", f"{op}: nexus docker", mine, RAW_NAMES[op],
                        samples[op].get(raw), target=RAW_TARGETS.get(op)))
        for p in peers:
            name = f"{op}: nexus docker vs {p.label.split()[0]}"
            target = PEER_TARGETS.get((op, p.label.split()[0]))
            if op_key(op) in p.why:
                rows.append(unavailable("peers", name, p.why[op_key(op)], p.label, target))
            else:
                rows.append(Row("peers", name, mine, p.label, samples[op].get(p.label),
                                target=target))
    return rows


def side_by_side(rows: list[Row]) -> str:
    """The README's table: one line per operation, medians of each subject and us / peer."""
    peers = []
    for r in rows:
        if r.group == "peers" and " vs " in r.name and r.baseline_name not in peers:
            peers.append(r.baseline_name)
    head = ["operation (median ms)", "nexus (docker)", "docker-py", *peers,
            *(f"us / {p.split()[0]}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for op in OPS:
        own = [r for r in rows if r.group == "peers" and r.name.startswith(op + ":")]
        if not own:
            continue
        base = own[0]
        cells = [op, _median(base.sample), _median(base.baseline)]
        ratios = []
        for p in peers:
            r = next((r for r in own[1:] if r.baseline_name == p), None)
            if r is None or not r.available:
                cells.append("n/a")
                ratios.append("n/a")
            else:
                cells.append(_median(r.baseline))
                ratios.append(f"{r.ratio:.2f}x" if r.ratio is not None else "-")
        lines.append("| " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines) + "\n"


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _median(sample: Sample | None) -> str:
    if sample is None or sample.median is None:
        return "-"
    return f"{sample.median:.{1 if sample.median < 100 else 0}f}"


# --------------------------------------------------------------------------- the group


def peer_rows(ctx: Any) -> list[Row]:
    """The "peers" group: install (once), build the peer image (once), measure, tabulate."""
    settings = ctx.settings
    import docker

    client = (docker.DockerClient(base_url=settings.docker_host) if settings.docker_host
              else docker.from_env())
    image = ensure_peer_image(settings.docker_image, client)
    subjects: list[Subject] = [NexusSubject(ctx.manager()),
                               RawDockerSubject(client, settings.docker_image)]
    rows: list[Row] = []
    peers: list[Subject] = []
    load = _loadavg()
    try:
        for peer in PEERS:
            try:
                python = ensure_venv(peer, ctx.log)
                peers.append(PeerSubject(PeerProcess(python, peer.name, image)))
            except Exception as exc:
                rows.append(unavailable("peers", f"every {peer.name} row", str(exc)))
        subjects += peers
        reps = max(5, ctx.create_reps // 2)
        samples = measure_all(subjects, reps, ctx.reps, stops=5, warmup=1, log=ctx.log)
    finally:
        for s in subjects:
            with contextlib.suppress(Exception):
                s.close()
    note = (f"peers on {image} ({settings.docker_image} + a `python` symlink: both peers "
            f"run `python`), network none; llm-sandbox without its environment setup (a venv "
            f"+ pip upgrade, needs the network); load average {load} -> {_loadavg()}")
    out = rows_from(samples, subjects[0].label, subjects[1].label, peers) + rows
    out[0].note = note
    return out
