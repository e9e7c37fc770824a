"""The diskcache store: atomic updates across processes, locks that expire, no eviction."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from nexus_kernel.errors import SandboxError
from nexus_kernel.models import SandboxRecord, Status
from nexus_kernel.store import Store


def _record(sandbox_id: str, **extra) -> dict:
    now = time.time()
    return SandboxRecord(
        sandbox_id=sandbox_id, name="n", owner="u", provider="local", status=Status.ACTIVE,
        ttl_minutes=10, created_at=now, last_active_at=now, expires_at=now + 600, **extra,
    ).to_dict()


def _increment(directory: str, times: int) -> None:
    store = Store(directory)
    for _ in range(times):
        store.update("sb_1", lambda d: {**d, "handle": {"n": d["handle"].get("n", 0) + 1}})


def test_updates_from_many_processes_are_not_lost(tmp_path):
    store = Store(tmp_path)
    store.insert(_record("sb_1"))
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_increment, args=(str(tmp_path), 25)) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert store.get("sb_1")["handle"]["n"] == 200


def test_writer_threads_waiting_on_a_transaction_finish_right_after_it(tmp_path):
    # They queue on the store's lock, not in sqlite's busy handler, whose sleeps (up to
    # 100 ms per retry) left 30 waiters finishing 250-750 ms after the lock was free.
    store = Store(tmp_path)
    for i in range(30):
        store.insert(_record(f"sb_{i}"))
    go, done = threading.Event(), []

    def write(i: int) -> None:
        go.wait()
        store.update(f"sb_{i}", lambda d: {**d, "last_active_at": 1.0})
        done.append(time.perf_counter())

    writers = [threading.Thread(target=write, args=(i,)) for i in range(30)]
    for w in writers:
        w.start()
    with store.transaction():
        go.set()
        time.sleep(0.3)  # every writer is waiting now
        released = time.perf_counter()
    for w in writers:
        w.join(60)
    assert len(done) == 30
    assert max(done) - released < 0.2


def test_threads_share_one_connection_and_lose_no_update(tmp_path, monkeypatch):
    # diskcache opened a connection per thread: 0.5 ms of CPU for a thread's first write.
    import sqlite3

    store = Store(tmp_path)
    store.insert(_record("sb_1"))
    store.get("sb_1")
    opened = []
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(a) or connect(*a, **k))

    def work() -> None:
        for _ in range(10):
            store.update("sb_1", lambda d: {**d, "handle": {"n": d["handle"].get("n", 0) + 1}})
            with store.transaction():
                assert store.get("sb_1")["handle"]["n"] > 0
            with store.lock("sb_1"):
                assert store.get("sb_1") is not None

    threads = [threading.Thread(target=work) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.get("sb_1")["handle"]["n"] == 200
    assert opened == []


def test_insert_refuses_duplicates_and_update_of_missing_is_none(tmp_path):
    store = Store(tmp_path)
    store.insert(_record("sb_1"))
    with pytest.raises(SandboxError, match="already exists"):
        store.insert(_record("sb_1"))
    assert store.update("sb_missing", lambda d: d) is None


def test_records_round_trip_and_are_versioned(tmp_path):
    store = Store(tmp_path)
    store.insert(_record("sb_1", handle={"token": "t"}))
    data = store.get("sb_1")
    assert data["version"] == 1 and data["status"] == "active"
    record = SandboxRecord.from_dict({**data, "unknown_future_field": 1})
    assert record.handle == {"token": "t"}
    assert Store(tmp_path).store_id == store.store_id  # stable across opens


def test_lock_held_by_a_dead_holder_expires(tmp_path):
    store = Store(tmp_path)
    import diskcache

    stale = diskcache.Lock(store._cache, "lock:sb_1", expire=0.5)
    stale.acquire()  # never released, as if its process was SIGKILLed
    started = time.monotonic()
    with store.lock("sb_1"):
        waited = time.monotonic() - started
    assert 0.3 < waited < 5


def test_claim_throttles(tmp_path):
    store = Store(tmp_path)
    assert store.claim("reap", 60) is True
    assert store.claim("reap", 60) is False


def test_stores_opened_at_once_agree_on_one_id_and_write_the_marker_safely(tmp_path):
    """Several stores of one new directory (threads of one process, as pool fillers are) ask
    for the store id at once: each writes the marker through a temp file of its own, so none
    moves another's away (it raised FileNotFoundError), and all see the same id."""
    import threading

    for round_ in range(20):
        directory = tmp_path / f"store-{round_}"
        stores = [Store(directory) for _ in range(8)]
        start, ids, errors = threading.Barrier(len(stores)), [], []

        def ask(store: Store, start=start, ids=ids, errors=errors) -> None:
            start.wait()
            try:
                ids.append(store.store_id)
            except Exception as exc:  # the assertion below shows it
                errors.append(repr(exc))

        threads = [threading.Thread(target=ask, args=(store,)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == [] and len(set(ids)) == 1 and len(ids) == len(stores), (errors, ids)
        assert (directory / "store.id").read_text().strip() == ids[0]
        assert not [p.name for p in directory.iterdir() if p.name.startswith(".store.id")]


def test_a_reader_sees_every_record_whole_while_other_processes_write(tmp_path):
    """A store that only reads (``nexus sandbox list``) reads the table with sqlite3 and
    pickle, never diskcache: under writers in other processes each read is a committed
    state, so no record is ever missing or half-written, and each value is one a writer
    stored."""
    store = Store(tmp_path)
    for i in range(20):
        store.insert(_record(f"sb_{i}", handle={"n": 0}))
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_increment, args=(str(tmp_path), 40)) for _ in range(4)]
    for w in workers:
        w.start()
    reader, seen = Store(tmp_path), set()
    while any(w.is_alive() for w in workers):
        records = {r["sandbox_id"]: r for r in reader.records()}
        assert len(records) == 20 and all(r["version"] == 1 for r in records.values())
        seen.add(reader.get("sb_1")["handle"]["n"])
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert reader.get("sb_1")["handle"]["n"] == 160 and len(seen) > 1
    assert reader._db is None  # diskcache was never opened by this reader
