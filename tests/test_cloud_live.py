"""The e2b and modal providers against the REAL services, with the checks the fake-SDK tests
run (``cloud_contract.py``).

Run only when credentials are present where each SDK's own configuration puts them:
``E2B_API_KEY`` (or nexus's ``e2b_api_key`` setting) for E2B; ``MODAL_TOKEN_ID`` with
``MODAL_TOKEN_SECRET``, or the token ``modal token new`` writes to ~/.modal.toml
(``MODAL_CONFIG_PATH``, ``MODAL_PROFILE``) for Modal. Otherwise every test is reported as
SKIPPED with the reason, never as passed. Each test creates sandboxes with a
short TTL under a store id of its own and destroys whatever carries that id at the end, so
a failed run leaves nothing billing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.errors import UnsupportedOperationError
from nexus_kernel.models import SandboxSpec
from nexus_kernel.providers.base import KEEPS_MEMORY

from .cloud_contract import (
    check_all_languages,
    check_destroy,
    check_framing,
    check_streaming,
    client_for,
)

pytestmark = pytest.mark.slow

TTL_SECONDS = 300.0


def _spec(store_id: str, ttl: float = TTL_SECONDS, **changes) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id="sb_live_" + uuid.uuid4().hex[:8],
        owner="nexus-live-test",
        deadline=time.time() + ttl,
        store_id=store_id,
        **changes,
    )


def _provider(kind: str, **options):
    """The live provider of ``kind``, or a skip naming what is missing (the SDK, or the
    credentials, looked up as the provider looks them up)."""
    pytest.importorskip(kind, reason=f"the {kind} SDK is not installed: live tests not run")
    from nexus_kernel.errors import MissingCredentialsError
    from nexus_kernel.providers import e2b, modal

    cls = {"e2b": e2b.E2BProvider, "modal": modal.ModalProvider}[kind]
    settings = Settings.load()
    try:
        cls.check_available(settings, **options)
    except MissingCredentialsError as exc:
        pytest.skip(f"live {kind} tests not run: {exc}")
    return cls(settings, **options)


def _sweep(provider, store_id: str) -> None:
    """Destroy every resource this test run created (even after a failure)."""
    for row in provider.list_resources(store_id):
        provider.destroy(row["handle"])


@pytest.fixture(scope="module")
def store_id() -> str:
    return "nexus-live-" + uuid.uuid4().hex[:12]


# =========================================================================== E2B


@pytest.fixture(scope="module")
def e2b(store_id: str) -> Iterator:
    provider = _provider("e2b")
    yield provider
    _sweep(provider, store_id)


@pytest.fixture
def e2b_handle(e2b, store_id: str) -> Iterator[dict]:
    handle = e2b.create(_spec(store_id))
    try:
        yield handle
    finally:
        e2b.destroy(handle)


def test_live_e2b_sessions_streaming_framing(e2b, e2b_handle: dict) -> None:
    with client_for(e2b, e2b_handle) as client:
        languages = tuple(client.hello()["languages"])
        assert {"python", "bash"} <= set(languages)
        check_all_languages(client, languages)
        check_streaming(client)
        check_framing(client)


def test_live_e2b_pause_resume_keeps_state(e2b, e2b_handle: dict) -> None:
    with client_for(e2b, e2b_handle) as client:
        client.run("python", "kept = 41", session="s", timeout=60)
        client.set_deadline(None)
    e2b.pause(e2b_handle)
    assert e2b.alive(e2b_handle)
    e2b.resume(e2b_handle)
    with client_for(e2b, e2b_handle) as client:
        assert client.run("python", "kept + 1", session="s", timeout=60)["result"] == {
            "text/plain": "42"
        }


def test_live_e2b_pause_leaves_no_relay_behind(e2b, e2b_handle: dict) -> None:
    """The relays this provider opened end before the pause (afterwards the paused VM
    cannot be reached, and a relay held an agent connection until the sandbox ended)."""
    import e2b as sdk

    client = client_for(e2b, e2b_handle)
    client.run("python", "kept = 1", session="s", timeout=60)
    client.set_deadline(None)
    e2b.pause(e2b_handle)
    client.close()
    e2b.resume(e2b_handle)
    sandbox = sdk.Sandbox.connect(e2b_handle["sandbox_id"])
    relays = [p for p in sandbox.commands.list() if "relay" in " ".join([p.cmd, *p.args])]
    assert relays == [], relays
    with client_for(e2b, e2b_handle) as again:
        assert again.run("python", "kept", session="s", timeout=60)["result"] == {
            "text/plain": "1"
        }


def test_live_e2b_timeout_never_passes_the_runtime_cap(store_id: str) -> None:
    """With a runtime cap of 10 minutes (as a plan's), the handle says when E2B ends the
    sandbox and the timeout the provider sets never passes it."""
    from nexus_kernel.models import HARD_END

    provider = _provider("e2b", max_timeout=600)
    handle = provider.create(_spec(store_id))
    try:
        import e2b as sdk

        provider.extend(handle, time.time() + 3600)
        info = sdk.Sandbox.get_info(handle["sandbox_id"])
        assert info.end_at.timestamp() <= handle[HARD_END] + 2
    finally:
        provider.destroy(handle)


def test_live_e2b_cap_pauses_and_the_next_stream_resumes(store_id: str) -> None:
    """A runtime cap of one minute: E2B pauses the sandbox there (create's lifecycle), and
    the next stream resumes it with the session's variables and a new hard end (~80 s)."""
    import e2b as sdk

    from nexus_kernel.models import HARD_END

    provider = _provider("e2b", max_timeout=60)
    handle = provider.create(_spec(store_id, ttl=50))
    try:
        with client_for(provider, handle) as client:
            client.run("python", "kept = 1", session="s", timeout=30)
            client.set_deadline(None)  # the TTL cannot pass the cap: the cap comes first
        first_end = handle[HARD_END]
        deadline = time.time() + 60 + 30
        while str(sdk.Sandbox.get_info(handle["sandbox_id"]).state.value) != "paused":
            assert time.time() < deadline, "E2B did not pause the sandbox at its timeout"
            time.sleep(3)
        with client_for(provider, handle) as client:
            assert client.run("python", "kept", session="s", timeout=60)["result"] == {
                "text/plain": "1"
            }
        assert handle[HARD_END] > first_end
    finally:
        provider.destroy(handle)


def test_live_e2b_timeout_follows_deadline_and_lists(e2b, e2b_handle: dict, store_id: str) -> None:
    import e2b as sdk

    e2b.extend(e2b_handle, time.time() + 1800)
    info = sdk.Sandbox.get_info(e2b_handle["sandbox_id"])
    assert info.end_at.timestamp() > time.time() + 1700
    ids = {row["handle"]["sandbox_id"] for row in e2b.list_resources(store_id)}
    assert e2b_handle["sandbox_id"] in ids
    with client_for(e2b, e2b_handle) as client:
        assert client.write_file("live.bin", b"\x00\x01live") == 7
        assert client.read_file("live.bin") == b"\x00\x01live"


def test_live_e2b_destroy(e2b, store_id: str) -> None:
    check_destroy(e2b, e2b.create(_spec(store_id)))


# =========================================================================== Modal


@pytest.fixture(scope="module")
def modal(store_id: str) -> Iterator:
    provider = _provider("modal")
    yield provider
    _sweep(provider, store_id)


@pytest.fixture
def modal_handle(modal, store_id: str) -> Iterator[dict]:
    handle = modal.create(_spec(store_id))
    try:
        yield handle
    finally:
        modal.destroy(handle)


def test_live_modal_sessions_streaming_framing(modal, modal_handle: dict) -> None:
    with client_for(modal, modal_handle) as client:
        languages = tuple(client.hello()["languages"])
        assert set(languages) == {"python", "javascript", "bash"}  # the default image has node
        check_all_languages(client, languages)
        check_streaming(client)
        check_framing(client)


def test_live_modal_no_pause_files_and_list(modal, modal_handle: dict, store_id: str) -> None:
    with pytest.raises(UnsupportedOperationError):
        modal.pause(modal_handle)
    with client_for(modal, modal_handle) as client:
        assert client.write_file("live.bin", b"\x00\x01live") == 7
        assert client.read_file("live.bin") == b"\x00\x01live"
    ids = {row["handle"]["sandbox_id"] for row in modal.list_resources(store_id)}
    assert modal_handle["sandbox_id"] in ids


def test_live_modal_agent_deadline_ends_the_sandbox(modal, store_id: str) -> None:
    handle = modal.create(_spec(store_id, ttl=60))
    try:
        deadline = time.monotonic() + 240
        while modal.alive(handle) and time.monotonic() < deadline:
            time.sleep(2)
        assert not modal.alive(handle)
    finally:
        modal.destroy(handle)


def test_live_modal_destroy(modal, store_id: str) -> None:
    check_destroy(modal, modal.create(_spec(store_id)))


def test_live_modal_memory_snapshot_forks_with_sessions(modal, modal_handle: dict,
                                                        store_id: str) -> None:
    """Modal's memory snapshot carries every session into a fork: a new sandbox, tagged
    with the fork's own ids, whose state then diverges from its source's."""
    assert modal_handle["snapshot_kind"] == "memory"
    with client_for(modal, modal_handle) as client:
        assert client.run("python", "x = 41", session="py", timeout=30)["exit_code"] == 0
        client.write_file("live.txt", b"before")
    snap = modal.snapshot(modal_handle)
    assert snap["snapshot_id"].startswith("sn-") and snap["keeps"] == KEEPS_MEMORY
    fork_spec = _spec(store_id, origin={"handle": modal_handle, "snapshot": snap["snapshot_id"]})
    fork = modal.create(fork_spec)
    try:
        assert fork["sandbox_id"] != modal_handle["sandbox_id"]
        assert modal._sandbox(fork).get_tags()["nexus_sandbox_id"] == fork_spec.sandbox_id
        with client_for(modal, fork) as client:
            result = client.run("python", "x + 1", session="py", timeout=30)
            assert result["result"] == {"text/plain": "42"}
            assert client.read_file("live.txt") == b"before"
            client.write_file("live.txt", b"fork")
        with client_for(modal, modal_handle) as client:
            assert client.read_file("live.txt") == b"before"
    finally:
        modal.destroy(fork)
