"""The e2b and modal providers against faithful fakes of their SDKs (no network).

The fakes (``tests/fakes/``) keep the installed SDKs' names, argument names and return
shapes (``test_sdk_fakes_match.py`` binds them to the real signatures) and run the REAL
agent as a local process per sandbox, so every stream carries real protocol traffic. The
providers get the fake through their ``sdk`` option (``provider_options={"e2b": {"sdk":
fake}}`` through the manager).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nexus_kernel.agent import zipapp_bytes, zipapp_file
from nexus_kernel.agent.client import AgentClient
from nexus_kernel.config import Settings
from nexus_kernel.errors import (
    AgentError,
    InvalidArgumentError,
    MissingCredentialsError,
    MissingDependencyError,
    PermissionDeniedError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStateError,
    UnsupportedOperationError,
)
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import AT_CAP, HARD_END, Limits, SandboxRecord, SandboxSpec, Status, iso
from nexus_kernel.providers import capability_matrix
from nexus_kernel.providers import e2b as e2b_provider
from nexus_kernel.providers import modal as modal_provider
from nexus_kernel.providers._stream import QUEUED_CHUNKS, PumpChannel
from nexus_kernel.providers.base import DATASCIENCE_PACKAGES, KEEPS_FILES, KEEPS_MEMORY
from nexus_kernel.providers.e2b import E2BProvider
from nexus_kernel.providers.modal import ModalProvider

from .cloud_contract import (
    check_all_languages,
    check_destroy,
    check_framing,
    check_streaming,
    client_for,
)
from .fakes import e2b_fake, modal_fake

ROOT = Path(__file__).resolve().parent.parent
LANGUAGES = ("python", "javascript", "bash")
CREDENTIAL_VARS = ("E2B_API_KEY", "E2B_TEMPLATE_ID", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")


@pytest.fixture(autouse=True)
def clean_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No host credentials leak in; every fake sandbox is killed afterwards."""
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    yield
    e2b_fake.reset()
    modal_fake.reset()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(home=tmp_path / "nexus", user="tester", e2b_api_key="e2b_test_key")


@pytest.fixture
def e2b(settings: Settings) -> E2BProvider:
    return E2BProvider(settings, sdk=e2b_fake)


@pytest.fixture
def modal(settings: Settings) -> ModalProvider:
    return ModalProvider(settings, sdk=modal_fake, token_id="ak-test", token_secret="as-test")


def spec(ttl: float = 600.0, **changes) -> SandboxSpec:
    values = {
        "sandbox_id": "sb_" + os.urandom(4).hex(),
        "owner": "tester",
        "deadline": time.time() + ttl,
        "store_id": "store-a",
    }
    values.update(changes)
    return SandboxSpec(**values)


# ============================================================================ E2B


def test_e2b_create_maps_the_spec_onto_the_sdk(e2b: E2BProvider) -> None:
    s = spec(ttl=600, network=False)
    handle = e2b.create(s)
    record = e2b_fake.SANDBOXES[handle["sandbox_id"]]
    assert record.template == "code-interpreter-v1"  # E2B's IPython + PyData template
    assert record.metadata == {
        "nexus_sandbox_id": s.sandbox_id,
        "nexus_owner": "tester",
        "nexus_store": "store-a",
        "nexus_expires_at": f"{s.deadline:.3f}",
    }
    assert record.allow_internet_access is False
    assert record.envs == {}  # no host environment enters the sandbox
    assert abs(record.end_at - (s.deadline + e2b_provider.TIMEOUT_GRACE)) < 3
    uploaded = record.vm.host_path(e2b_provider.AGENT_PATH)
    assert uploaded.read_bytes() == zipapp_bytes()
    assert record.owners[e2b_provider.AGENT_PATH] == "root"
    assert oct(uploaded.stat().st_mode & 0o777) == "0o644"
    assert oct(uploaded.parent.stat().st_mode & 0o777) == "0o755"
    home = record.vm.host_path("/home/user")
    assert not [p for p in home.iterdir() if p.name.startswith(".nexus")]  # token file deleted
    assert set(handle) == {"token", "sandbox_id", "template", "timeout", HARD_END, "socket",
                           "agent_pid", AT_CAP}
    assert handle["socket"].startswith("@nexus-") and len(handle["socket"]) == 23
    assert handle["agent_pid"] == record.handles[1].pid  # the boot command: seal, boot
    assert handle[AT_CAP] == "pause" and record.on_timeout == ("pause", "full")  # lifecycle
    json.dumps(handle)


def test_e2b_template_and_network_settings(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path, e2b_api_key="k", e2b_template_id="tmpl-env")
    provider = E2BProvider(settings, sdk=e2b_fake)
    first = provider.create(spec(network=True))
    assert e2b_fake.SANDBOXES[first["sandbox_id"]].template == "tmpl-env"
    assert e2b_fake.SANDBOXES[first["sandbox_id"]].allow_internet_access is True
    second = provider.create(spec(template_id="tmpl-arg"))
    assert e2b_fake.SANDBOXES[second["sandbox_id"]].template == "tmpl-arg"
    lean = provider.create(spec(template_id="minimal"))
    assert e2b_fake.SANDBOXES[lean["sandbox_id"]].template == "base"


def test_an_allow_list_maps_onto_the_platforms_egress_filters(e2b: E2BProvider,
                                                               modal: ModalProvider) -> None:
    allow = ("pypi.org", "*.example.org", "10.0.0.5", "[fd00::5]")
    record = e2b_fake.SANDBOXES[e2b.create(spec(allow=allow))["sandbox_id"]]
    assert record.network == {"allow_out": ["pypi.org", "*.example.org", "10.0.0.5", "fd00::5"],
                              "deny_out": ["0.0.0.0/0"]}
    options = modal_fake.SANDBOXES[modal.create(spec(allow=allow))["sandbox_id"]].options
    assert options["block_network"] is False
    assert options["outbound_domain_allowlist"] == ["pypi.org", "*.example.org"]
    assert options["outbound_cidr_allowlist"] == ["10.0.0.5/32", "fd00::5/128"]
    for provider in (e2b, modal):  # they filter hosts, not ports: said, not widened
        with pytest.raises(UnsupportedOperationError, match="by host, not port"):
            provider.create(spec(allow=("api.example.com:443",)))


def test_e2b_sessions_in_every_language(e2b: E2BProvider) -> None:
    handle = e2b.create(spec())
    with client_for(e2b, handle) as client:
        check_all_languages(client, LANGUAGES)


def test_e2b_streams_output_live_and_keeps_framing(e2b: E2BProvider) -> None:
    handle = e2b.create(spec())
    with client_for(e2b, handle) as client:
        check_streaming(client)
        check_framing(client)


def check_outlives_command_timeout(provider: E2BProvider) -> None:
    """The agent and a relay outlive E2B's command timeout (the SDK's 60 s default ends a
    command and its process unless ``timeout=0``; the fake runs it 50 times faster)."""
    e2b_fake.COMMAND_SECONDS = 0.02
    handle = provider.create(spec())
    with client_for(provider, handle) as client:
        slow = client.run("bash", "sleep 1.6; echo still here", timeout=30)  # one relay
        assert slow["stdout"] == "still here\n", slow
    with client_for(provider, handle) as client:  # the agent too
        assert client.run("bash", "echo again", timeout=30)["stdout"] == "again\n"


def test_e2b_agent_and_relay_outlive_the_command_timeout(e2b: E2BProvider) -> None:
    check_outlives_command_timeout(e2b)


def stream_output(provider: E2BProvider | ModalProvider, megabytes: int) -> tuple[int, int]:
    """Stream ``megabytes`` MB of a sandbox's output through a session; (characters the
    SDK's E2B command handles keep, bytes the client's memory grew by)."""
    handle = provider.create(spec())
    record = e2b_fake.SANDBOXES.get(handle["sandbox_id"])
    with client_for(provider, handle) as client:
        client.hello()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(megabytes // 10):
                result = client.run(
                    "bash", "head -c 10000000 /dev/zero | tr '\\0' a", timeout=60
                )
                assert len(result["stdout"]) == 10_000_000, result["exit_code"]
                del result
            growth = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    return sum(h.retained for h in record.handles) if record else 0, growth


def test_e2b_client_memory_stays_bounded_over_100_mb_of_output(e2b: E2BProvider) -> None:
    """E2B's command handles keep every byte by default (``retain_output``); the agent's
    stream lives as long as the manager, so the provider must turn that off."""
    retained, growth = stream_output(e2b, 100)
    assert retained < 64 * 1024, f"the SDK's handles kept {retained} characters"
    assert growth < 8 * 1024 * 1024, f"the client grew by {growth} bytes for 100 MB streamed"


def test_e2b_sessions_survive_reconnects(e2b: E2BProvider) -> None:
    handle = e2b.create(spec())
    with client_for(e2b, handle) as client:
        client.run("python", "kept = 'yes'", session="s", timeout=30)
    other = E2BProvider(e2b.settings, sdk=e2b_fake)  # another process: only the handle
    with client_for(other, handle) as client:
        assert client.run("python", "kept", session="s", timeout=30)["result"] == {
            "text/plain": "'yes'"
        }


def test_e2b_extend_moves_the_e2b_timeout(e2b: E2BProvider) -> None:
    handle = e2b.create(spec(ttl=600))
    record = e2b_fake.SANDBOXES[handle["sandbox_id"]]
    with client_for(e2b, handle) as client:
        e2b.extend(handle, time.time() + 600)  # as at create: no API call
        assert record.timeouts_set == []
        e2b.extend(handle, time.time() + 3600)
        assert record.timeouts_set and abs(record.timeouts_set[-1] - 3720) <= 2
        assert abs(record.end_at - (time.time() + 3720)) < 3
        calls = len(record.timeouts_set)
        e2b.extend(handle, time.time() + 3610)  # within the refresh slack
        client.set_deadline(None)  # watchdog off (pause): E2B's timeout stays
        client.set_deadline(time.time() + 7200)  # the agent protocol is not the provider's
        assert len(record.timeouts_set) == calls


def test_e2b_pause_and_resume_keep_memory_state(e2b: E2BProvider) -> None:
    handle = e2b.create(spec())
    record = e2b_fake.SANDBOXES[handle["sandbox_id"]]
    client = client_for(e2b, handle)
    client.run("python", "counter = 41", session="s", timeout=30)
    e2b.pause(handle)
    e2b.pause(handle)  # idempotent
    assert record.state is e2b_fake.SandboxState.PAUSED and record.vm.paused
    assert e2b.alive(handle)
    with pytest.raises(AgentError):  # a pause drops open streams
        client.run("python", "counter", session="s", timeout=5)
    client.close()
    e2b.resume(handle)
    e2b.resume(handle)  # idempotent
    assert record.state is e2b_fake.SandboxState.RUNNING
    with client_for(e2b, handle) as client:
        result = client.run("python", "counter + 1", session="s", timeout=30)
    assert result["result"] == {"text/plain": "42"}


def live_relays(record) -> int:
    """Relay processes still running in a fake E2B sandbox (root's commands: the agent runs
    as the sandbox user, and root's other command, the seal, has ended)."""
    return sum(h._proc.poll() is None for h in record.handles if h.user == "root")


def check_pause_ends_relays_and_keeps_memory(provider: E2BProvider) -> None:
    """A relay left to the pause could not be ended (its sandbox is paused) and held an
    agent connection until the sandbox ended; the pause mode is not left to the API (were
    its default to become a filesystem-only snapshot, sessions would be lost)."""
    e2b_fake.API_PAUSE_MODE = "filesystem"
    handle = provider.create(spec())
    record = e2b_fake.SANDBOXES[handle["sandbox_id"]]
    client = client_for(provider, handle)
    client.run("python", "kept = 7", session="s", timeout=30)
    assert live_relays(record) == 1
    provider.pause(handle)
    client.close()  # as the manager does after a pause: the relay can no longer be reached
    assert record.pause_modes == ["full"]
    provider.resume(handle)
    deadline = time.monotonic() + 3
    while live_relays(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_relays(record) == 0
    with client_for(provider, handle) as again:
        assert again.run("python", "kept", session="s", timeout=30)["result"] == {
            "text/plain": "7"
        }


def test_e2b_pause_ends_relays_first_and_asks_for_a_full_snapshot(e2b: E2BProvider) -> None:
    check_pause_ends_relays_and_keeps_memory(e2b)


def test_e2b_destroy_is_idempotent(e2b: E2BProvider) -> None:
    handle = e2b.create(spec())
    root = e2b_fake.SANDBOXES[handle["sandbox_id"]].vm.root
    check_destroy(e2b, handle)
    assert not root.exists()
    e2b.destroy({"token": ""})  # a handle without a sandbox id: nothing to do


def test_e2b_connect_to_a_gone_sandbox_is_an_agent_error(e2b: E2BProvider) -> None:
    handle = e2b.create(spec())
    e2b.destroy(handle)
    with pytest.raises(AgentError, match="gone"):
        e2b.connect(handle)
    with pytest.raises(SandboxStateError):
        e2b.pause(handle)


def test_e2b_list_resources_by_metadata(e2b: E2BProvider) -> None:
    mine = spec(store_id="store-a")
    handle = e2b.create(mine)
    e2b.create(spec(store_id="store-b"))
    rows = e2b.list_resources("store-a")
    assert rows == [
        {"sandbox_id": mine.sandbox_id, "handle": {"token": "", "sandbox_id": handle["sandbox_id"]}}
    ]
    e2b.pause(handle)
    assert len(e2b.list_resources("store-a")) == 1  # paused sandboxes are resources too
    assert e2b.list_resources("store-c") == []


def check_lists_every_page(provider: E2BProvider) -> None:
    """E2B lists a page at a time: more sandboxes than a page are all found."""
    for _ in range(e2b_fake.LIST_PAGE + 3):
        e2b_fake.Sandbox.create(metadata={"nexus_store": "store-a"}, api_key="k")
    assert len(provider.list_resources("store-a")) == e2b_fake.LIST_PAGE + 3


def test_e2b_list_resources_reads_every_page(e2b: E2BProvider) -> None:
    check_lists_every_page(e2b)


def test_e2b_ttl_longer_than_e2b_allows_is_refused(e2b: E2BProvider) -> None:
    with pytest.raises(InvalidArgumentError, match="at most 1440 minutes"):
        e2b.create(spec(ttl=2 * 24 * 3600))
    assert e2b_fake.SANDBOXES == {}


def test_e2b_runtime_cap_is_the_plans(tmp_path: Path) -> None:
    """E2B runs a sandbox at most the plan's minutes without a pause (Hobby: 60), whatever
    set_timeout asks: the handle carries that hard end, the timeout never passes it, a
    resume restarts it, and the messages name it (auto-pause off: E2B ends it at the cap)."""
    settings = Settings.load(home=tmp_path, e2b_api_key="k", e2b_max_minutes=60)
    provider = E2BProvider(settings, sdk=e2b_fake, auto_pause=False)
    with pytest.raises(InvalidArgumentError) as info:
        provider.create(spec(ttl=90 * 60))
    assert str(info.value) == (
        "E2B runs a sandbox at most 60 minutes without a pause (the plan's runtime cap, "
        "NEXUS_E2B_MAX_MINUTES: 60 on Hobby, 1440 on Pro); use a shorter ttl_minutes"
    )
    start = time.time()
    handle = provider.create(spec(ttl=30 * 60))
    assert abs(handle[HARD_END] - (start + 3600)) < 3
    record = e2b_fake.SANDBOXES[handle["sandbox_id"]]
    provider.extend(handle, time.time() + 50 * 60)  # + grace would pass the cap
    assert record.timeouts_set and record.timeouts_set[-1] <= 3600
    provider.pause(handle)
    time.sleep(1)
    provider.resume(handle)
    assert handle[HARD_END] >= start + 3601
    record.end_at = time.time()  # E2B ends it at the cap
    handle[HARD_END] = time.time() - 1
    with pytest.raises(AgentError) as info:
        provider.connect(handle)
    assert str(info.value).endswith(
        ": E2B ends a sandbox after 60 minutes of running (the plan's runtime cap; a pause "
        "and resume restarts it)"
    )


def test_e2b_agent_that_cannot_start_is_cleaned_up(settings: Settings) -> None:
    provider = E2BProvider(settings, sdk=e2b_fake, python="python-does-not-exist")
    with pytest.raises(AgentError, match="exited during startup: .*python-does-not-exist"):
        provider.create(spec())
    assert e2b_fake.SANDBOXES == {}


def test_e2b_missing_credentials(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path)
    with pytest.raises(MissingCredentialsError) as info:
        E2BProvider.check_available(settings, sdk=e2b_fake)
    message = str(info.value)
    assert message == (
        "E2B needs an API key: export E2B_API_KEY=... (get one at e2b.dev) "
        "or pass e2b_api_key= to NexusFS"
    )
    assert "\n" not in message


def test_e2b_api_key_from_argument_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexus_kernel.api import LocalBackend, NexusFS

    nx = NexusFS(backend=LocalBackend(tmp_path / "files"), home=tmp_path, e2b_api_key="arg-key")
    assert E2BProvider(nx.settings, sdk=e2b_fake)._api()["api_key"] == "arg-key"
    E2BProvider.check_available(nx.settings, sdk=e2b_fake)
    nx.close()
    monkeypatch.setenv("E2B_API_KEY", "env-key")
    monkeypatch.setenv("E2B_TEMPLATE_ID", "tmpl-from-env")
    settings = Settings.load(home=tmp_path)
    assert settings.e2b_template_id == "tmpl-from-env"
    assert E2BProvider(settings, sdk=e2b_fake)._api()["api_key"] == "env-key"


def test_e2b_missing_sdk(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "e2b", None)  # import e2b -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'nexus-kernel\[e2b\]'"):
        E2BProvider.check_available(settings)
    with pytest.raises(MissingDependencyError, match=r"pip install 'nexus-kernel\[e2b\]'"):
        E2BProvider(settings).create(spec())


# ============================================================================ Modal


def test_modal_create_maps_the_spec_onto_the_sdk(modal: ModalProvider) -> None:
    s = spec(ttl=600, limits=Limits(memory_mb=768, cpus=2.0))
    handle = modal.create(s)
    record = modal_fake.SANDBOXES[handle["sandbox_id"]]
    assert record.entrypoint[:2] == ("/bin/sh", "-c")
    assert "serve" in record.entrypoint[2] and handle["token"] not in record.entrypoint[2]
    assert record.app.name == "nexus-kernel"
    assert record.tags == {
        "nexus_sandbox_id": s.sandbox_id,
        "nexus_owner": "tester",
        "nexus_store": "store-a",
        "nexus_expires_at": f"{s.deadline:.3f}",
    }
    options = record.options
    assert options["block_network"] is True
    assert options["timeout"] == modal_provider.MAX_LIFETIME
    assert abs(options["idle_timeout"] - (600 + modal_provider.IDLE_GRACE)) <= 2
    assert options["memory"] == (768, 768) and options["cpu"] == (2.0, 2.0)
    assert options["gpu"] is None and options["env"] is None
    assert record.image.steps[:3] == [("debian_slim", "3.12"), ("apt_install", ("nodejs",)),
                                      ("pip_install", DATASCIENCE_PACKAGES)]
    agent = zipapp_file(modal.settings.home / "agent-cache")
    assert record.image.files == {modal_provider.AGENT_PATH: str(agent)}
    assert handle["socket"].startswith("@nexus-") and handle["socket"] in record.entrypoint[2]
    assert handle["agent_pid"] == record.entry._proc.pid  # the entrypoint execs the agent
    json.dumps(handle)


def test_modal_image_gpu_and_network_options(settings: Settings, tmp_path: Path) -> None:
    provider = ModalProvider(settings, sdk=modal_fake, token_id="a", token_secret="b", gpu="T4")
    handle = provider.create(spec(network=True, template_id="python:3.12-bookworm"))
    record = modal_fake.SANDBOXES[handle["sandbox_id"]]
    assert record.options["gpu"] == "T4" and record.options["block_network"] is False
    assert record.image.steps[0] == ("from_registry", "python:3.12-bookworm")
    handle = provider.create(spec(template_id="minimal"))  # lean: no pip_install step
    assert [step[0] for step in modal_fake.SANDBOXES[handle["sandbox_id"]].image.steps] == [
        "debian_slim", "apt_install", "add_local_file"]
    handle = provider.create(spec(template_id="im-123abc"))
    assert modal_fake.SANDBOXES[handle["sandbox_id"]].image.steps[0] == ("from_id", "im-123abc")
    from_settings = ModalProvider(
        Settings.load(home=tmp_path, modal_image="my/img:1"), sdk=modal_fake,
        token_id="a", token_secret="b",
    )  # fmt: skip
    handle = from_settings.create(spec())
    assert modal_fake.SANDBOXES[handle["sandbox_id"]].image.steps[0] == (
        "from_registry",
        "my/img:1",
    )


def test_modal_sessions_in_every_language(modal: ModalProvider) -> None:
    handle = modal.create(spec())
    with client_for(modal, handle) as client:
        check_all_languages(client, LANGUAGES)


def test_modal_streams_output_live_and_keeps_framing(modal: ModalProvider) -> None:
    handle = modal.create(spec())
    with client_for(modal, handle) as client:
        check_streaming(client)
        check_framing(client)


def test_modal_closing_a_stream_ends_its_relay(modal: ModalProvider) -> None:
    handle = modal.create(spec())
    with client_for(modal, handle) as client:
        client.run("python", "v = 1", session="s", timeout=30)
    record = modal_fake.SANDBOXES[handle["sandbox_id"]]
    deadline = time.monotonic() + 10
    while any(p.poll() is None for p in record.execs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(p.poll() is not None for p in record.execs)
    with client_for(modal, handle) as client:  # sessions survive the disconnect
        assert client.run("python", "v", session="s", timeout=30)["result"] == {"text/plain": "1"}


def test_modal_pause_and_resume_are_unsupported(modal: ModalProvider) -> None:
    handle = modal.create(spec())
    assert modal.capabilities.pause is False and modal.capabilities.resume is False
    for operation in (modal.pause, modal.resume):
        with pytest.raises(UnsupportedOperationError) as info:
            operation(handle)
        assert "stop it and create a new one" in str(info.value)
    assert modal.alive(handle)


def test_modal_agent_deadline_ends_the_sandbox(modal: ModalProvider) -> None:
    """The agent is the entrypoint: its TTL watchdog ends the Modal sandbox itself."""
    handle = modal.create(spec(ttl=1.5))
    assert modal.alive(handle)
    deadline = time.monotonic() + 15
    while modal.alive(handle) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not modal.alive(handle)


def test_modal_destroy_is_idempotent(modal: ModalProvider) -> None:
    handle = modal.create(spec())
    check_destroy(modal, handle)
    modal.destroy({"token": "", "sandbox_id": "sb-unknown"})  # unknown id: nothing to do


def test_modal_list_resources_by_tags(modal: ModalProvider) -> None:
    mine = spec(store_id="store-a")
    handle = modal.create(mine)
    modal.create(spec(store_id="store-b"))
    assert modal.list_resources("store-a") == [
        {"sandbox_id": mine.sandbox_id, "handle": {"token": "", "sandbox_id": handle["sandbox_id"]}}
    ]
    modal.destroy(handle)
    assert modal.list_resources("store-a") == []


def test_modal_ttl_longer_than_modal_allows_is_refused(modal: ModalProvider) -> None:
    with pytest.raises(InvalidArgumentError, match="at most 1440 minutes"):
        modal.create(spec(ttl=2 * 24 * 3600))
    assert modal_fake.SANDBOXES == {}


def test_modal_client_memory_stays_bounded_over_100_mb_of_output(modal: ModalProvider) -> None:
    """Modal's stream readers keep nothing once read; nor does the client around them."""
    _retained, growth = stream_output(modal, 100)
    assert growth < 8 * 1024 * 1024, f"the client grew by {growth} bytes for 100 MB streamed"


def test_modal_runtime_cap_is_24_hours_from_start(modal: ModalProvider) -> None:
    start = time.time()
    handle = modal.create(spec())
    assert abs(handle[HARD_END] - (start + 24 * 3600)) < 3
    with pytest.raises(InvalidArgumentError) as info:
        modal.create(spec(ttl=25 * 3600))
    assert str(info.value) == (
        "a Modal sandbox lives at most 1440 minutes after its start, whatever its TTL; use a "
        "shorter ttl_minutes"
    )


def test_modal_agent_that_cannot_start_is_cleaned_up(settings: Settings) -> None:
    provider = ModalProvider(
        settings, sdk=modal_fake, token_id="a", token_secret="b", python="python-does-not-exist"
    )
    with pytest.raises(AgentError, match="exited during startup: .*python-does-not-exist"):
        provider.create(spec())
    assert all(r.terminated for r in modal_fake.SANDBOXES.values())


def test_modal_entrypoint_that_ends_before_its_token_is_reported_by_its_exit(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token write finding the entrypoint gone (a broken pipe: under load it may end
    before the write) is not the error: its exit and stderr are. Deterministic: the write
    waits for the entrypoint's end."""
    drain = modal_fake.StreamWriter.drain

    def late_drain(self: modal_fake.StreamWriter) -> None:
        entries = [r.entry for r in modal_fake.SANDBOXES.values() if r.entry is not None]
        if entries and self is entries[-1].stdin:
            entries[-1].wait()
        drain(self)

    monkeypatch.setattr(modal_fake.StreamWriter, "drain", late_drain)
    test_modal_agent_that_cannot_start_is_cleaned_up(settings)


def test_modal_missing_credentials(settings: Settings) -> None:
    with pytest.raises(MissingCredentialsError) as info:
        ModalProvider.check_available(settings, sdk=modal_fake)
    assert str(info.value) == (
        "Modal needs a token: run 'modal token new' or export MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
    )


def test_modal_token_from_environment_or_options(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ModalProvider.check_available(settings, sdk=modal_fake, token_id="a", token_secret="b")
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-1")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-1")
    ModalProvider.check_available(settings, sdk=modal_fake)
    provider = ModalProvider(settings, sdk=modal_fake)  # the SDK's environment client
    assert provider.alive(provider.create(spec()))


def test_modal_missing_sdk(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "modal", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'nexus-kernel\[modal\]'"):
        ModalProvider.check_available(settings, token_id="a", token_secret="b")
    with pytest.raises(MissingDependencyError, match=r"pip install 'nexus-kernel\[modal\]'"):
        ModalProvider(settings).create(spec())


# ============================================================================ through the manager


def manager_for(settings: Settings) -> SandboxManager:
    return SandboxManager(
        settings,
        provider_options={
            "e2b": {"sdk": e2b_fake},
            "modal": {"sdk": modal_fake, "token_id": "a", "token_secret": "b"},
        },
    )


def test_manager_drives_e2b_end_to_end(settings: Settings) -> None:
    manager = manager_for(settings)
    record = manager.create("cloud", ttl_minutes=5, provider="e2b")
    fake = e2b_fake.SANDBOXES[record.handle["sandbox_id"]]
    events = []
    result = manager.run(
        record.sandbox_id, "python", "n = 6\nprint(n * 7)", session="s", on_event=events.append
    )
    assert result.stdout == "42\n"
    assert "".join(e.data for e in events if e.kind == "stdout") == "42\n"
    before = fake.end_at
    manager.store.update(record.sandbox_id, lambda d: {**d, "ttl_minutes": 30.0})
    manager.run(record.sandbox_id, "bash", "true")  # the run extends E2B's timeout too
    assert fake.end_at > before + 20 * 60
    status = manager.status(record.sandbox_id).public(time.time())
    assert status["hard_end_at"] == iso(record.handle[HARD_END])  # the platform's cap
    assert manager.pause(record.sandbox_id).status is Status.PAUSED
    assert fake.state is e2b_fake.SandboxState.PAUSED
    assert manager.resume(record.sandbox_id).status is Status.ACTIVE
    assert manager.run(record.sandbox_id, "python", "print(n)", session="s").stdout == "6\n"
    assert manager.stop(record.sandbox_id).status is Status.STOPPED
    assert record.handle["sandbox_id"] not in e2b_fake.SANDBOXES
    manager.close()


def test_manager_drives_modal_and_refuses_pause(settings: Settings) -> None:
    manager = manager_for(settings)
    record = manager.create("cloud", provider="modal")
    assert manager.run(record.sandbox_id, "javascript", "console.log(6 * 7)").stdout == "42\n"
    with pytest.raises(UnsupportedOperationError):
        manager.pause(record.sandbox_id)
    assert manager.status(record.sandbox_id).status is Status.ACTIVE
    manager.stop(record.sandbox_id)
    assert modal_fake.SANDBOXES[record.handle["sandbox_id"]].terminated
    manager.close()


def test_manager_reaps_orphans_by_metadata_and_tags(settings: Settings) -> None:
    manager = manager_for(settings)
    kept = manager.create("kept", provider="e2b")
    store = manager.store.store_id
    stray_e2b = E2BProvider(settings, sdk=e2b_fake).create(spec(store_id=store))
    stray_modal = ModalProvider(settings, sdk=modal_fake, token_id="a", token_secret="b").create(
        spec(store_id=store)
    )
    manager.create("warm-modal", provider="modal")  # so reap looks at the modal provider
    reaped = manager.reap()
    assert len(reaped["orphans"]) == 2
    assert stray_e2b["sandbox_id"] not in e2b_fake.SANDBOXES
    assert modal_fake.SANDBOXES[stray_modal["sandbox_id"]].terminated
    assert kept.handle["sandbox_id"] in e2b_fake.SANDBOXES
    manager.close()


def test_manager_files_go_through_the_agent_on_e2b(settings: Settings) -> None:
    """Files are the agent's (the provider contract has no file methods)."""
    manager = manager_for(settings)
    record = manager.create("files", provider="e2b")
    handle = record.handle
    vm = e2b_fake.SANDBOXES[handle["sandbox_id"]].vm
    data = b"\x00\xffbinary" * 100
    assert manager.put_file(record.sandbox_id, "data/in.bin", data) == len(data)
    with client_for(manager.provider("e2b"), handle) as client:
        assert client.read_file("data/in.bin") == data
        client.write_file("out.txt", b"from the agent")
    assert manager.get_file(record.sandbox_id, "out.txt") == b"from the agent"
    assert vm.host_path("/home/user/out.txt").read_bytes() == b"from the agent"
    manager.close()


def test_manager_files_go_through_the_agent_on_modal(settings: Settings) -> None:
    manager = manager_for(settings)
    record = manager.create("files", provider="modal")
    data = bytes(range(256)) * 10
    assert manager.put_file(record.sandbox_id, "in.bin", data) == len(data)
    with client_for(manager.provider("modal"), record.handle) as client:
        assert client.read_file("in.bin") == data
        client.write_file("sub/out.txt", b"agent wrote this")
    assert manager.get_file(record.sandbox_id, "sub/out.txt") == b"agent wrote this"
    manager.close()


def test_manager_moves_e2b_timeout_on_touch_and_resume(settings: Settings) -> None:
    """The manager calls Provider.extend whenever a record's deadline moves."""
    manager = manager_for(settings)
    record = manager.create("ttl", ttl_minutes=5, provider="e2b")
    fake = e2b_fake.SANDBOXES[record.handle["sandbox_id"]]
    manager.touch(record.sandbox_id, ttl_minutes=60)
    assert abs(fake.end_at - (time.time() + 3600 + e2b_provider.TIMEOUT_GRACE)) < 10
    manager.pause(record.sandbox_id)
    manager.touch(record.sandbox_id, ttl_minutes=90)  # paused: stored, nothing moves
    manager.resume(record.sandbox_id)
    assert abs(fake.end_at - (time.time() + 5400 + e2b_provider.TIMEOUT_GRACE)) < 10
    manager.close()


def test_modal_extend_calls_nothing(modal: ModalProvider) -> None:
    """Modal cannot move a running sandbox's timeouts: extend is a quiet no-op."""
    handle = modal.create(spec())
    options = dict(modal_fake.SANDBOXES[handle["sandbox_id"]].options)
    modal.extend(handle, time.time() + 3600)
    assert modal_fake.SANDBOXES[handle["sandbox_id"]].options == options
    assert modal.alive(handle)


@pytest.mark.parametrize("provider", ["e2b", "modal"])
def test_manager_without_credentials_stores_nothing(tmp_path: Path, provider: str) -> None:
    manager = SandboxManager(
        Settings.load(home=tmp_path),
        provider_options={"e2b": {"sdk": e2b_fake}, "modal": {"sdk": modal_fake}},
    )
    with pytest.raises(MissingCredentialsError):
        manager.create("x", provider=provider)
    assert list(manager.store.records()) == []
    assert e2b_fake.SANDBOXES == {} and modal_fake.SANDBOXES == {}


# ============================================================================ CLI and matrix


def nexus(args: list[str], env: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess:
    code = f"import sys\n{prelude}\nfrom nexus_kernel.cli import main\nsys.exit(main({args!r}))"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    env.update(
        NEXUS_HOME=str(tmp_path / "home"),
        NEXUS_USER="tester",
        MODAL_CONFIG_PATH=str(tmp_path / "none.toml"),
    )
    return env


@pytest.mark.parametrize(
    ("provider", "needle"),
    [("e2b", "export E2B_API_KEY="), ("modal", "run 'modal token new'")],
)
def test_cli_create_without_credentials(
    cli_env: dict[str, str], provider: str, needle: str
) -> None:
    done = nexus(["sandbox", "create", "x", "--provider", provider], cli_env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    listed = nexus(["sandbox", "list", "--json"], cli_env)
    assert json.loads(listed.stdout)["count"] == 0


@pytest.mark.parametrize("provider", ["e2b", "modal"])
def test_cli_create_without_the_sdk(cli_env: dict[str, str], provider: str) -> None:
    hide = f"sys.modules[{provider!r}] = None"
    done = nexus(["sandbox", "create", "x", "--provider", provider], cli_env, prelude=hide)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"nexus: the {provider} provider needs the {provider!r} package: "
        f"pip install 'nexus-kernel[{provider}]'"
    )


def test_capability_matrix(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {row["name"]: row for row in capability_matrix(settings)}
    assert set(rows) == {"local", "docker", "e2b", "modal"}
    assert rows["e2b"]["capabilities"]["pause"] is True
    assert rows["modal"]["capabilities"]["pause"] is False
    assert rows["modal"]["capabilities"]["gpu"] is True
    assert rows["e2b"]["configured"] is True and rows["e2b"]["reason"] is None  # key in settings
    assert rows["modal"]["configured"] is False
    assert "modal token new" in rows["modal"]["reason"]
    for row in rows.values():
        assert set(row) == {"name", "installed", "configured", "reason", "capabilities",
                            "runtimes"}
        assert row["runtimes"] == [] or row["name"] == "docker"  # docker: the engine's
        assert set(row["capabilities"]) == {"pause", "resume", "network", "egress_allow", "gpu",
                                            "snapshots", "platform_snapshots", "languages"}
        assert row["capabilities"]["snapshots"] is True  # every provider has snapshots
        assert row["capabilities"]["platform_snapshots"] is (row["name"] in ("e2b", "modal"))
    monkeypatch.setitem(sys.modules, "e2b", None)
    row = {r["name"]: r for r in capability_matrix(settings)}["e2b"]
    assert row["installed"] is False and row["configured"] is False
    assert "pip install 'nexus-kernel[e2b]'" in row["reason"]
    json.dumps(rows)


# ============================================================================ stream adapter units


def test_pump_channel_keeps_bytes_and_reports_end() -> None:
    sent: list[bytes] = []
    chunks = ["é".encode()[:1], "é".encode()[1:] + b"\n", b"tail"]
    channel = PumpChannel(iter(chunks), sent.append)
    got = b""
    while True:
        data = channel.recv(3)
        if not data:
            break
        got += data
    assert got == "é\ntail".encode()
    assert channel.recv(10) == b""
    channel.sendall(b"x")
    assert sent == [b"x"]
    channel.close()
    with pytest.raises(ConnectionError):
        channel.sendall(b"y")


def test_pump_channel_timeout_and_write_errors() -> None:
    def never():
        time.sleep(30)
        yield b""

    def broken(data: bytes) -> None:
        raise RuntimeError("sdk failed")

    channel = PumpChannel(never(), broken)
    channel.settimeout(0.1)
    with pytest.raises(TimeoutError):
        channel.recv(10)
    with pytest.raises(ConnectionError, match="sdk failed"):
        channel.sendall(b"x")
    channel.close()
    channel.settimeout(None)
    assert channel.recv(10) == b""  # close wakes a blocked reader


def test_pump_channel_holds_back_a_stream_nobody_reads() -> None:
    """A reader that falls behind holds the SDK's stream back: the client keeps at most
    QUEUED_CHUNKS chunks, not everything the sandbox sent."""
    produced = 0

    def endless():
        nonlocal produced
        while True:
            produced += 1
            yield b"x" * 65536

    channel = PumpChannel(endless(), lambda data: None)
    time.sleep(0.5)
    assert produced <= QUEUED_CHUNKS + 2, produced
    assert channel.recv(10) == b"x" * 10
    channel.close()
    for _ in range(QUEUED_CHUNKS + 2):  # what was queued, then the end
        if channel.recv(1 << 20) == b"":
            break
    else:
        raise AssertionError("a closed channel never reported its end")


def test_agent_client_over_a_modal_channel_sees_utf8_split_across_chunks(
    modal: ModalProvider,
) -> None:
    """Multibyte characters split by the SDK's chunking still decode (framing is bytes)."""
    handle = modal.create(spec())
    client = AgentClient(lambda: modal.connect(handle), handle["token"])
    text = "😀" * 5000  # 20000 bytes: crosses the fake's 8 KiB reads mid-character
    assert client.run("python", f"print({text!r})", timeout=30)["stdout"] == text + "\n"
    client.close()


# ============================================================================ E2B at its cap


def capped_settings(tmp_path: Path, **changes) -> Settings:
    return Settings.load(home=tmp_path / "nexus", user="tester", e2b_api_key="e2b_test_key",
                         e2b_max_minutes=60, **changes)


def reach_the_cap(manager: SandboxManager, sandbox_id: str) -> e2b_fake._Record:
    """The plan's cap passes: E2B's timeout (bounded by the hard end) fires, and the stored
    hard end is behind us. Returns the fake's record of the sandbox."""
    now = time.time()
    manager.store.update(sandbox_id, lambda d: {**d, "handle": {**d["handle"], HARD_END: now - 1}})
    fake = e2b_fake.SANDBOXES[manager.get(sandbox_id).handle["sandbox_id"]]
    fake.end_at = now
    return fake


def test_e2b_cap_pauses_and_the_next_run_resumes_the_session(tmp_path: Path) -> None:
    """At the runtime cap E2B pauses the sandbox (create's lifecycle), not kills it; the next
    run (another process) resumes it with the session's variables, restarts the hard end
    (stored) and bounds E2B's timeout by the TTL again."""
    manager = manager_for(capped_settings(tmp_path))
    sandbox_id = manager.create("capped", ttl_minutes=30, provider="e2b").sandbox_id
    assert manager.run(sandbox_id, "python", "n = 6", session="s").exit_code == 0
    fake = reach_the_cap(manager, sandbox_id)
    assert e2b_fake.Sandbox.get_info(fake.sandbox_id, api_key="k").state is e2b_fake.SandboxState.PAUSED
    assert fake.pause_modes == ["full"]
    manager.close()
    later = manager_for(capped_settings(tmp_path))
    start = time.time()
    assert later.run(sandbox_id, "python", "print(n * 7)", session="s").stdout == "42\n"
    assert fake.state is e2b_fake.SandboxState.RUNNING
    hard_end = later.get(sandbox_id).handle[HARD_END]
    assert start + 3600 <= hard_end < time.time() + 3600  # the plan's window restarted
    assert start + 30 * 60 < fake.end_at <= hard_end  # the TTL's timeout, within the cap
    later.close()


def check_cap_pause_keeps_the_session(provider: E2BProvider) -> None:
    """The same process (a kernel) at the cap: E2B paused the sandbox (create's lifecycle,
    a full snapshot whatever the API's default), its cached SDK object is of the paused
    microVM; the next stream resumes it and the session is intact."""
    e2b_fake.API_PAUSE_MODE = "filesystem"
    handle = provider.create(spec())
    with client_for(provider, handle) as client:
        client.run("python", "n = 6", session="s", timeout=30)
    fake = e2b_fake.SANDBOXES[handle["sandbox_id"]]
    provider.extend(handle, time.time() + 600)
    fake.end_at = time.time()
    handle[HARD_END] = time.time() - 1
    with client_for(provider, handle) as client:
        assert client.run("python", "print(n)", session="s", timeout=30)["stdout"] == "6\n"
    assert fake.pause_modes == ["full"] and handle[HARD_END] > time.time() + 3000


def test_e2b_cap_resumes_the_sandbox_a_provider_holds(e2b: E2BProvider) -> None:
    check_cap_pause_keeps_the_session(e2b)


def test_e2b_cap_without_auto_pause_ends_the_sandbox(tmp_path: Path) -> None:
    """auto_pause off (NEXUS_E2B_AUTO_PAUSE=0): E2B kills the sandbox at the cap, and the
    next run fails with one line naming the cap."""
    manager = manager_for(capped_settings(tmp_path, e2b_auto_pause=False))
    record = manager.create("capped", ttl_minutes=30, provider="e2b")
    assert record.handle[AT_CAP] == "end"
    fake = reach_the_cap(manager, record.sandbox_id)
    assert fake.on_timeout == ("kill", "")
    manager.close()
    later = manager_for(capped_settings(tmp_path, e2b_auto_pause=False))
    with pytest.raises(SandboxError) as info:
        later.run(record.sandbox_id, "python", "print(1)")
    assert "E2B ends a sandbox after 60 minutes of running (the plan's runtime cap" in str(
        info.value) and "\n" not in str(info.value)
    assert fake.sandbox_id not in e2b_fake.SANDBOXES
    later.close()


def test_e2b_cap_resume_that_fails_names_the_cap(e2b: E2BProvider) -> None:
    handle = e2b.create(spec())
    handle[HARD_END] = time.time() - 1
    e2b_fake.SANDBOXES.pop(handle["sandbox_id"]).vm.kill()  # E2B lost the paused snapshot
    with pytest.raises(AgentError) as info:
        e2b.connect(handle)
    assert str(info.value).endswith(
        ": E2B paused it after 1440 minutes of running (the plan's runtime cap) and it could "
        "not be resumed")


def test_modal_cap_reached_the_next_run_names_it(settings: Settings) -> None:
    """Modal kills a sandbox 24 h after its start: the next run says so in one line."""
    manager = manager_for(settings)
    record = manager.create("capped", provider="modal")
    manager.store.update(record.sandbox_id, lambda d: {
        **d, "handle": {**d["handle"], HARD_END: time.time() - 1}})
    fake = modal_fake.SANDBOXES[record.handle["sandbox_id"]]
    fake.terminated = True  # Modal ends it at the cap
    fake.vm.kill()
    manager.close()
    later = manager_for(settings)
    with pytest.raises(SandboxStateError) as info:
        later.run(record.sandbox_id, "python", "print(1)")
    assert str(info.value) == (f"sandbox {record.sandbox_id} is stopped: Modal ends a sandbox "
                               "1440 minutes after its start, whatever its TTL")
    later.close()


def test_e2b_sdk_without_lifecycle_keeps_the_kill_and_says_so(settings: Settings) -> None:
    class OldSandbox(e2b_fake.Sandbox):  # create as before the SDK had `lifecycle`
        @classmethod
        def create(cls, template=None, timeout=None, metadata=None, envs=None,
                   allow_internet_access=None, **opts):
            return super().create(template, timeout, metadata, envs,
                                  allow_internet_access=allow_internet_access, **opts)

    names = {name: getattr(e2b_fake, name) for name in e2b_fake.__all__}
    provider = E2BProvider(settings, sdk=types.SimpleNamespace(**{**names, "Sandbox": OldSandbox}))
    with pytest.warns(RuntimeWarning, match="no lifecycle option: a sandbox reaching the runtime"):
        handle = provider.create(spec())
    assert handle[AT_CAP] == "end"
    assert e2b_fake.SANDBOXES[handle["sandbox_id"]].on_timeout == ("kill", "")


@pytest.mark.parametrize("sweep", ["reap", "list", "reboot"])
def test_e2b_expired_sandbox_paused_by_e2b_is_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep: str
) -> None:
    """No nexus process alive at its TTL: E2B's timeout paused it (auto-pause); the next
    nexus command (reap, list, the after-reboot reap) kills it and stops the record."""
    manager = manager_for(capped_settings(tmp_path))
    record = manager.create("idle", ttl_minutes=5, provider="e2b")
    fake = e2b_fake.SANDBOXES[record.handle["sandbox_id"]]
    fake.end_at = time.time()  # TTL + grace passed with nobody to reap it: E2B pauses it
    assert e2b_fake.Sandbox.get_info(fake.sandbox_id, api_key="k").state is e2b_fake.SandboxState.PAUSED
    manager.store.update(record.sandbox_id, lambda d: {**d, "expires_at": time.time() - 1})
    manager.close()
    # list reaps lazily, at most every reap_interval: here the last reap is long past
    later = manager_for(capped_settings(tmp_path, reap_interval=0 if sweep == "list" else 600))
    if sweep == "reap":
        assert later.reap()["expired"] == [record.sandbox_id]
    elif sweep == "list":
        assert [r.status for r in later.list()] == [Status.STOPPED]
    else:
        monkeypatch.setattr("nexus_kernel.reaper.host_boot_id", lambda: "a-new-boot")
        later.reap_expired()
    assert fake.sandbox_id not in e2b_fake.SANDBOXES  # killed while paused
    assert later.get(record.sandbox_id).status is Status.STOPPED
    later.close()


def test_e2b_user_paused_sandbox_is_never_resumed_behind_the_user(tmp_path: Path) -> None:
    """A sandbox the user paused, past its hard end: reap, list, status and run leave it
    paused on E2B (a run says to resume it first)."""
    manager = manager_for(capped_settings(tmp_path))
    record = manager.create("paused", ttl_minutes=30, provider="e2b")
    manager.run(record.sandbox_id, "python", "n = 6", session="s")
    manager.pause(record.sandbox_id)
    manager.store.update(record.sandbox_id,
                         lambda d: {**d, "handle": {**d["handle"], HARD_END: time.time() - 1}})
    fake = e2b_fake.SANDBOXES[record.handle["sandbox_id"]]
    manager.close()
    later = manager_for(capped_settings(tmp_path))
    later.reap()
    assert [r.status for r in later.list()] == [Status.PAUSED]
    assert later.status(record.sandbox_id).status is Status.PAUSED
    with pytest.raises(SandboxStateError, match="resume it first"):
        later.run(record.sandbox_id, "python", "print(n)", session="s")
    assert fake.state is e2b_fake.SandboxState.PAUSED and fake.pause_modes == ["full"]
    assert later.resume(record.sandbox_id).status is Status.ACTIVE  # the user's own resume
    assert later.run(record.sandbox_id, "python", "print(n)", session="s").stdout == "6\n"
    later.close()


def test_automatic_checkpoints_are_off_on_platform_snapshots(settings: Settings) -> None:
    """The snapshot mechanism is the agent's on local and docker, the platform's own on e2b
    and modal: no automatic checkpoints there, said in one line."""
    from nexus_kernel.checkpoints import CellCheckpoints

    manager = manager_for(settings)
    for provider in ("e2b", "modal"):
        record = manager.create("cloud", provider=provider)
        sid = record.sandbox_id
        with pytest.raises(UnsupportedOperationError, match="not automatic checkpoints"):
            manager.run(sid, "python", "1", session="s", checkpoint={"name": "c", "keep_auto": 2})
        checkpoints = CellCheckpoints(manager, 5)
        note, checkpoint = checkpoints.before_cell(record.sandbox_id, "In [1]")
        assert note.startswith("Nexus: no undo in this sandbox") and checkpoint is None
        assert checkpoints.keep == 0
        manager.stop(record.sandbox_id)
    manager.close()


def test_e2b_fork_and_snapshots_go_through_e2b_with_fresh_tokens(settings: Settings) -> None:
    """Forks are E2B's (``Sandbox.fork``, ``create`` from a snapshot): new records of the
    caller with their own TTL and a token of their own (the fake restarts the agent in a
    copy of the files: it checks the wiring, not memory semantics). Snapshots are E2B's,
    recorded on the sandbox, deleted through the SDK; restore in place is refused."""
    manager = manager_for(settings)
    source = manager.create("cloud", ttl_minutes=7, provider="e2b")
    sid = source.sandbox_id
    manager.put_file(sid, "state.txt", b"before")
    assert manager.provider("e2b").capabilities.snapshots
    forks, report = manager.fork(sid, count=2)
    assert report["sessions"] == "all" and len(forks) == 2
    tokens = {source.handle["token"]}
    for fork in forks:
        assert fork.owner == "tester" and fork.status is Status.ACTIVE
        assert fork.ttl_minutes == 7 and fork.sandbox_id != sid
        assert fork.handle["sandbox_id"] in e2b_fake.SANDBOXES
        tokens.add(fork.handle["token"])
        sent = b"".join(data for kind, _pid, data in
                        e2b_fake.SANDBOXES[fork.handle["sandbox_id"]].daemon_log if kind == "stdin")
        assert b'"op":"rekey"' in sent and b'"op":"deadline"' in sent  # the fork's own
        assert manager.get_file(fork.sandbox_id, "state.txt") == b"before"
        # the source's token no longer opens the fork's agent
        stale = AgentClient(lambda f=fork: manager.provider("e2b").connect(f.handle),
                            source.handle["token"])
        with pytest.raises(AgentError):
            stale.hello()
        stale.close()
    assert len(tokens) == 3
    manager.put_file(forks[0].sandbox_id, "state.txt", b"fork")
    assert manager.get_file(sid, "state.txt") == b"before"

    _refused_while_running(manager, source, manager.snapshot, manager.fork)
    snap = manager.snapshot(sid, "first")
    assert snap["persists"] and snap["name"] == "first" and snap["snapshot_id"] in e2b_fake.SNAPSHOTS
    assert [s["snapshot_id"] for s in manager.snapshots(sid)] == [snap["snapshot_id"]]
    manager.put_file(sid, "state.txt", b"after")
    with pytest.raises(UnsupportedOperationError, match="fork from the snapshot"):
        manager.restore(sid, "first")
    [again], _ = manager.fork(sid, "first")
    assert manager.get_file(again.sandbox_id, "state.txt") == b"before"
    assert e2b_fake.SANDBOXES[again.handle["sandbox_id"]].metadata["nexus_sandbox_id"] == (
        again.sandbox_id)
    with pytest.raises(InvalidArgumentError, match="no snapshot"):
        manager.fork(sid, "nope")
    assert manager.delete_snapshot(sid, "first") == snap["snapshot_id"]
    assert snap["snapshot_id"] not in e2b_fake.SNAPSHOTS and manager.snapshots(sid) == []

    other = SandboxManager(settings, user="mallory", provider_options=manager._provider_options)
    with pytest.raises((PermissionDeniedError, SandboxNotFoundError)):
        other.fork(sid)
    other.close()
    # E2B's forks carry their source's labels: reaping the stopped source's leftovers
    # leaves the forks running
    assert e2b_fake.SANDBOXES[forks[1].handle["sandbox_id"]].metadata["nexus_sandbox_id"] == sid
    manager.stop(sid)
    manager.reap()
    assert forks[1].handle["sandbox_id"] in e2b_fake.SANDBOXES
    assert manager.get_file(forks[1].sandbox_id, "state.txt") == b"before"
    manager.close()


def _refused_while_running(manager: SandboxManager, source: SandboxRecord,
                           *operations: Callable[[str], Any]) -> None:
    """Each of ``operations`` on ``source`` is refused while a run goes on in it."""
    sid = source.sandbox_id
    running = threading.Thread(target=manager.run, args=(sid, "python", "import time; "
                               "time.sleep(1)"))
    running.start()
    deadline = time.time() + 5
    while (not any(r["state"] == "running" for r in manager._client(source).runs())
           and time.time() < deadline):
        time.sleep(0.05)
    for operation in operations:
        with pytest.raises(SandboxStateError, match="running code"):
            operation(sid)
    running.join()


def _stale_token_refused(manager: SandboxManager, provider: str, fork: SandboxRecord,
                         token: str) -> None:
    """The source's token no longer opens the fork's agent (rotated by ``rekey``)."""
    stale = AgentClient(lambda: manager.provider(provider).connect(fork.handle), token)
    with pytest.raises(AgentError):
        stale.hello()
    stale.close()


def test_modal_fork_and_snapshots_go_through_modal_with_fresh_tokens(settings: Settings) -> None:
    """Modal's memory snapshots: sandboxes made for them, forks restored from one
    (``_experimental_from_snapshot``; one snapshot for all forks of "now") as records of the
    caller with their own TTL, tags and token (the fake restarts the entrypoint in a copy
    of the files: it checks the wiring, not memory semantics). Restore in place is refused,
    deletion is refused (they expire at Modal)."""
    manager = manager_for(settings)
    source = manager.create("cloud", ttl_minutes=7, provider="modal")
    sid = source.sandbox_id
    assert source.handle["snapshot_kind"] == "memory"
    assert modal_fake.SANDBOXES[source.handle["sandbox_id"]].options["enable_snapshot"] is True
    manager.put_file(sid, "state.txt", b"before")
    forks, report = manager.fork(sid, count=2)
    assert report["sessions"] == "all" and report["keeps"] == KEEPS_MEMORY and len(forks) == 2
    assert len(modal_fake.SNAPSHOTS) == 1  # one fork point for both
    tokens = {source.handle["token"]}
    for fork in forks:
        assert fork.owner == "tester" and fork.status is Status.ACTIVE
        assert fork.ttl_minutes == 7 and fork.sandbox_id != sid
        record = modal_fake.SANDBOXES[fork.handle["sandbox_id"]]
        assert record.restored and record.tags["nexus_sandbox_id"] == fork.sandbox_id
        assert fork.handle["agent_pid"] == source.handle["agent_pid"]  # the memory copy's
        assert fork.handle[HARD_END] == source.handle[HARD_END]  # the earliest it can be
        assert b'"op":"rekey"' in record.exec_sent and b'"op":"deadline"' in record.exec_sent
        tokens.add(fork.handle["token"])
        assert manager.get_file(fork.sandbox_id, "state.txt") == b"before"
        _stale_token_refused(manager, "modal", fork, source.handle["token"])
    assert len(tokens) == 3
    manager.put_file(forks[0].sandbox_id, "state.txt", b"fork")
    assert manager.get_file(sid, "state.txt") == b"before"
    assert manager.get_file(forks[1].sandbox_id, "state.txt") == b"before"

    _refused_while_running(manager, source, manager.snapshot)
    snap = manager.snapshot(sid, "first")
    assert snap["persists"] and snap["keeps"] == KEEPS_MEMORY and snap["name"] == "first"
    assert snap["snapshot_id"] in modal_fake.SNAPSHOTS and snap["expires"] > snap["created"]
    manager.put_file(sid, "state.txt", b"after")
    with pytest.raises(UnsupportedOperationError, match="fork from the snapshot"):
        manager.restore(sid, "first")
    [again], _ = manager.fork(sid, "first")
    assert manager.get_file(again.sandbox_id, "state.txt") == b"before"
    with pytest.raises(UnsupportedOperationError, match="expires at Modal 7 days"):
        manager.delete_snapshot(sid, "first")
    assert [s["snapshot_id"] for s in manager.snapshots(sid)] == [snap["snapshot_id"]]
    other = SandboxManager(settings, user="mallory", provider_options=manager._provider_options)
    with pytest.raises((PermissionDeniedError, SandboxNotFoundError)):
        other.fork(sid, "first")
    other.close()
    manager.stop(sid)
    manager.reap()  # the forks carry their own tags: reaping leaves them running
    assert manager.get_file(forks[1].sandbox_id, "state.txt") == b"before"
    manager.close()


def test_modal_without_memory_snapshots_forks_files_only(settings: Settings) -> None:
    """A sandbox made without memory snapshots (a GPU, or ``memory_snapshots=False``):
    ``snapshot_filesystem``, said "files only"; its forks boot a new agent on the image
    (new token); the image is deleted through the SDK."""
    manager = SandboxManager(settings, provider_options={"modal": {
        "sdk": modal_fake, "token_id": "a", "token_secret": "b", "memory_snapshots": False}})
    source = manager.create("cloud", provider="modal")
    sid = source.sandbox_id
    assert modal_fake.SANDBOXES[source.handle["sandbox_id"]].options["enable_snapshot"] is False
    manager.put_file(sid, "state.txt", b"files")
    snap = manager.snapshot(sid, "disk")
    assert snap["keeps"] == KEEPS_FILES and snap["expires"] is None
    assert snap["snapshot_id"].startswith("im-") and snap["snapshot_id"] in modal_fake.IMAGES
    [fork], report = manager.fork(sid, "disk")
    assert report["keeps"] == KEEPS_FILES and report["sessions"] == []
    assert not modal_fake.SANDBOXES[fork.handle["sandbox_id"]].restored
    assert manager.get_file(fork.sandbox_id, "state.txt") == b"files"
    assert fork.handle["token"] != source.handle["token"]
    assert manager.delete_snapshot(sid, "disk") == snap["snapshot_id"]
    assert snap["snapshot_id"] not in modal_fake.IMAGES and manager.snapshots(sid) == []
    [now], report = manager.fork(sid)  # from an image taken for it, kept as long as a fork lives
    assert report["keeps"] == KEEPS_FILES and manager.get_file(now.sandbox_id, "state.txt") == b"files"
    manager.close()
