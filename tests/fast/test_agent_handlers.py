"""The agent's request threads (``sandbox_agent.handlers``): a finished one takes the next
request instead of a new thread per request; at most IDLE_MAX wait."""

from __future__ import annotations

import threading

from nexus_kernel.agent.sandbox_agent.handlers import IDLE_MAX, HandlerThreads


def _run(handlers: HandlerThreads, job) -> None:
    done = threading.Event()

    def wrapped() -> None:
        try:
            job()
        finally:
            done.set()

    handlers.submit(wrapped)
    assert done.wait(5)


def test_requests_one_after_another_reuse_one_thread() -> None:
    handlers = HandlerThreads()
    seen: list[threading.Thread] = []  # kept: a new thread could not reuse an old one's id
    for _ in range(5):
        _run(handlers, lambda: seen.append(threading.current_thread()))
        for _ in range(100):  # the thread goes back to waiting right after its job
            if handlers._idle:
                break
            threading.Event().wait(0.01)
    assert all(thread is seen[0] for thread in seen)
    assert seen[0] is not threading.current_thread()


def test_concurrent_requests_get_threads_of_their_own_and_few_stay() -> None:
    handlers = HandlerThreads()
    count = IDLE_MAX + 3
    release = threading.Event()
    started = threading.Semaphore(0)
    idents: list[int] = []

    def job() -> None:
        idents.append(threading.get_ident())
        started.release()
        release.wait(5)

    for _ in range(count):
        handlers.submit(job)
    for _ in range(count):
        assert started.acquire(timeout=5)  # none waits for another: all run at once
    assert len(set(idents)) == count
    release.set()
    for _ in range(200):
        if len(handlers._idle) == IDLE_MAX:
            break
        threading.Event().wait(0.01)
    assert len(handlers._idle) == IDLE_MAX  # the others exited
