"""Drive one peer sandbox library from its own virtual environment (standard library only).

    PEER_VENV/bin/python peer_driver.py ADAPTER IMAGE

ADAPTER is ``llm-sandbox``, ``nexus-ai-fs`` or ``FILE.py:CLASS`` (any class with the adapter
methods below). One JSON request per line on stdin, one JSON answer per line on stdout; the
peer's own output goes to stderr. Times are measured here, around the peer's call only:

    {"op": "hello"}                    -> {"name", "version", "unsupported": {op: why}}
    {"op": "create"}                   -> {"id", "ms"}
    {"op": "run", "id", "code"}        -> {"ms", "stdout"}
    {"op": "create_run", "code"}       -> {"id", "ms", "stdout", "run_ms"}
    {"op": "pause_resume", "id"}       -> {"ms"}
    {"op": "stop", "id"}               -> {"ms"}
    {"op": "discard", "id"}            -> {}   (stopped untimed, in the background)
    {"op": "quit"}                     -> {}   (waits for discards, stops what is left)

A failure answers {"error": "..."}; an operation the peer lacks, {"unsupported": "why"}.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sys
import threading
import time
from typing import Any


class LlmSandbox:
    """llm-sandbox's docker backend: ``SandboxSession(...).open()``, ``.run(code)``, ``.close()``."""

    dist = "llm-sandbox"
    unsupported = {"pause_resume": "llm-sandbox has no pause/resume"}

    def __init__(self, image: str):
        from llm_sandbox import SandboxSession

        self._session = SandboxSession
        self.image = image

    def create(self) -> Any:
        # skip_environment_setup: its setup makes a venv and pip-upgrades (needs the network)
        session = self._session(lang="python", image=self.image, skip_environment_setup=True,
                                runtime_configs={"network_mode": "none"})
        session.open()
        return session

    def run(self, session: Any, code: str) -> str:
        return session.run(code).stdout

    def stop(self, session: Any) -> None:
        session.close()


class NexusAiFs:
    """nexus-ai-fs's ``DockerSandboxProvider`` (async), on an event loop of its own thread as
    a synchronous caller would use it."""

    dist = "nexus-ai-fs"
    unsupported: dict[str, str] = {}

    def __init__(self, image: str):
        import asyncio

        os.environ.setdefault("NEXUS_DOCKER_NETWORK", "none")  # it requires a network name
        from nexus.core.sandbox_docker_provider import DockerSandboxProvider

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.provider = DockerSandboxProvider(default_image=image)

    def _call(self, coro: Any) -> Any:
        return self._asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def create(self) -> Any:
        return self._call(self.provider.create())

    def run(self, sid: Any, code: str) -> str:
        return self._call(self.provider.run_code(sid, "python", code)).stdout

    def pause(self, sid: Any) -> None:
        self._call(self.provider.pause(sid))

    def resume(self, sid: Any) -> None:
        self._call(self.provider.resume(sid))

    def stop(self, sid: Any) -> None:
        self._call(self.provider.destroy(sid))


ADAPTERS = {"llm-sandbox": LlmSandbox, "nexus-ai-fs": NexusAiFs}


def load_adapter(name: str) -> type:
    """A built-in adapter by name, or ``FILE.py:CLASS``."""
    if name in ADAPTERS:
        return ADAPTERS[name]
    path, _, cls = name.rpartition(":")
    spec = importlib.util.spec_from_file_location("peer_adapter", path)
    if not path.endswith(".py") or spec is None or spec.loader is None:
        raise SystemExit(f"unknown adapter {name!r}: use {', '.join(ADAPTERS)} or FILE.py:CLASS")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, cls)


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args)
    return value, (time.perf_counter() - start) * 1000.0


class Driver:
    """Answers requests against one adapter, keeping its sandboxes by integer id."""

    def __init__(self, adapter: Any):
        self.adapter = adapter
        self.handles: dict[int, Any] = {}
        self.background: list[threading.Thread] = []
        self.made = 0

    def _new(self, handle: Any) -> int:
        self.made += 1
        self.handles[self.made] = handle
        return self.made

    def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        op, a = req.get("op"), self.adapter
        unsupported = getattr(a, "unsupported", {})
        if op in unsupported:
            return {"unsupported": unsupported[op]}
        if op == "hello":
            try:
                version = importlib.metadata.version(a.dist)
            except importlib.metadata.PackageNotFoundError:
                version = getattr(a, "version", "?")
            return {"name": a.dist, "version": version, "unsupported": unsupported}
        if op == "create":
            handle, ms = _timed(a.create)
            return {"id": self._new(handle), "ms": ms}
        if op == "create_run":
            start = time.perf_counter()
            handle = a.create()
            key = self._new(handle)  # stopped at quit even when the run fails
            out, run_ms = _timed(a.run, handle, req["code"])
            return {"id": key, "ms": (time.perf_counter() - start) * 1000.0,
                    "stdout": out, "run_ms": run_ms}
        if op == "run":
            out, ms = _timed(a.run, self.handles[req["id"]], req["code"])
            return {"ms": ms, "stdout": out}
        if op == "pause_resume":
            handle = self.handles[req["id"]]
            start = time.perf_counter()
            a.pause(handle)
            a.resume(handle)
            return {"ms": (time.perf_counter() - start) * 1000.0}
        if op == "stop":
            _, ms = _timed(a.stop, self.handles.pop(req["id"]))
            return {"ms": ms}
        if op == "discard":
            thread = threading.Thread(target=a.stop, args=(self.handles.pop(req["id"]),))
            thread.start()
            self.background.append(thread)
            return {}
        if op == "quit":
            self.close()
            return {}
        return {"error": f"unknown op {op!r}"}

    def close(self) -> None:
        for key in list(self.handles):
            self.answer({"op": "discard", "id": key})
        for thread in self.background:
            thread.join(timeout=120)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit(__doc__.splitlines()[2].strip())
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the peer's prints and logs go to stderr, never into the answers
    sys.stdout = sys.stderr
    driver = Driver(load_adapter(argv[0])(argv[1]))
    try:
        for line in sys.stdin:
            req = json.loads(line)
            try:
                ans = driver.answer(req)
            except Exception as exc:  # the peer failed: say so, keep serving
                ans = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            out.write(json.dumps(ans) + "\n")
            if req.get("op") == "quit":
                return 0
    finally:
        driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
