"""Bind the SDK fakes (``tests/fakes``) to the installed e2b and modal SDKs.

For every SDK callable the providers use, the fake's signature must match the real one:
each parameter the provider passes exists in both with the same kind, and the fake has no
parameter the real SDK lacks. Attributes and return shapes the providers read are checked
too. An SDK release that renames or moves any of them fails here, before the fakes can
drift into testing an SDK that no longer exists.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import pytest

from nexus_kernel.providers import modal as modal_provider
from nexus_kernel.providers.e2b import LIFECYCLE

from .fakes import e2b_fake, modal_fake

Param = inspect.Parameter
NAMED = (Param.POSITIONAL_ONLY, Param.POSITIONAL_OR_KEYWORD, Param.KEYWORD_ONLY)


def _params(func: Any) -> dict[str, Param]:
    params = dict(inspect.signature(func).parameters)
    params.pop("self", None)
    params.pop("cls", None)
    return params


def _same_default(real: Any, fake: Any) -> bool:
    """Defaults agree: equal values, or the same SDK constant (an enum member, a sentinel)
    stood in for by the fake's own object of that name."""
    if real is Param.empty or fake is Param.empty:
        return real is fake
    try:
        if real == fake:
            return True
    except Exception:
        pass
    return getattr(real, "name", repr(real)) == getattr(fake, "name", repr(fake))


def assert_same_call(real: Any, fake: Any, used: set[str], via_kwargs: set[str] = frozenset()):
    """``used``: parameters the provider passes (``*`` = positional varargs). ``via_kwargs``:
    names the real SDK takes through ``**opts`` (e.g. e2b's ApiParams)."""
    rp, fp = _params(real), _params(fake)
    real_var = next((p for p in rp.values() if p.kind is Param.VAR_POSITIONAL), None)
    fake_var = next((p for p in fp.values() if p.kind is Param.VAR_POSITIONAL), None)
    for name in used:
        if name == "*":
            assert real_var is not None and fake_var is not None, f"{real}: *args"
            continue
        if name in via_kwargs:
            assert any(p.kind is Param.VAR_KEYWORD for p in rp.values()), f"{real}: **opts"
            assert any(p.kind is Param.VAR_KEYWORD for p in fp.values()), f"{fake}: **opts"
            continue
        assert name in rp, f"the real {real.__qualname__} has no parameter {name!r}"
        assert name in fp, f"the fake {fake.__qualname__} has no parameter {name!r}"
        assert rp[name].kind == fp[name].kind, f"{name!r}: {rp[name].kind} != {fp[name].kind}"
    for name, param in fp.items():
        if param.kind in (Param.VAR_POSITIONAL, Param.VAR_KEYWORD):
            assert any(p.kind is param.kind for p in rp.values()), f"{fake}: {param}"
            continue
        assert name in rp, f"the fake {fake.__qualname__} invents parameter {name!r}"
        assert rp[name].kind == param.kind, f"{fake.__qualname__}.{name}: kind differs"
        assert _same_default(rp[name].default, param.default), (
            f"{fake.__qualname__}.{name}: the SDK's default is {rp[name].default!r}, "
            f"the fake's {param.default!r}"
        )
    real_named = [n for n, p in rp.items() if p.kind in NAMED[:2]]
    fake_named = [n for n, p in fp.items() if p.kind in NAMED[:2]]
    assert fake_named == real_named[: len(fake_named)], "positional order differs"


# =========================================================================== e2b

e2b = pytest.importorskip(
    "e2b", reason="the e2b SDK is not installed: pip install 'nexus-kernel[e2b]'"
)
API_PARAMS = set(e2b.ApiParams.__annotations__)


def test_e2b_api_params_carry_the_key() -> None:
    assert {"api_key", "domain"} <= API_PARAMS


@pytest.mark.parametrize(
    ("name", "used"),
    [
        (
            "create",
            {"template", "timeout", "metadata", "envs", "allow_internet_access", "lifecycle",
             "api_key"},
        ),
        ("_cls_connect_sandbox", {"sandbox_id", "timeout", "api_key"}),
        ("_cls_kill", {"sandbox_id", "api_key"}),
        ("_cls_pause", {"sandbox_id", "mode", "api_key"}),
        ("_cls_set_timeout", {"sandbox_id", "timeout", "request_timeout", "api_key"}),
        ("_cls_get_info", {"sandbox_id", "api_key"}),
        ("list", {"query", "limit", "request_timeout", "api_key"}),
        ("connect", set()),
        ("kill", set()),
        ("pause", set()),
        ("set_timeout", {"timeout"}),
        ("get_info", set()),
        ("_cls_fork_sandbox", {"sandbox_id", "timeout", "count", "api_key"}),
        ("_cls_create_snapshot", {"sandbox_id", "api_key"}),
        ("delete_snapshot", {"snapshot_id", "api_key"}),
        ("fork", {"timeout", "count"}),
        ("create_snapshot", set()),
    ],
)
def test_e2b_sandbox_methods(name: str, used: set[str]) -> None:
    assert_same_call(getattr(e2b.Sandbox, name), getattr(e2b_fake.Sandbox, name), used, API_PARAMS)


@pytest.mark.parametrize(
    ("public", "target"),
    [
        ("connect", "_cls_connect_sandbox"),
        ("kill", "_cls_kill"),
        ("pause", "_cls_pause"),
        ("set_timeout", "_cls_set_timeout"),
        ("get_info", "_cls_get_info"),
        ("fork", "_cls_fork_sandbox"),
        ("create_snapshot", "_cls_create_snapshot"),
    ],
)
def test_e2b_class_calls_dispatch_like_the_sdk(public: str, target: str) -> None:
    """The provider calls ``Sandbox.kill(sandbox_id, ...)`` on the class: the SDK routes
    that to ``_cls_kill`` through its ``class_method_variant`` descriptor; so does the fake."""
    real = e2b.Sandbox.__dict__[public]
    fake = e2b_fake.Sandbox.__dict__[public]
    assert type(real).__name__ == type(fake).__name__ == "class_method_variant"
    assert real.class_method_name == fake.class_method_name == target


def test_e2b_commands_files_and_handle() -> None:
    from e2b.sandbox_sync.commands.command import Commands
    from e2b.sandbox_sync.filesystem.filesystem import Filesystem

    assert_same_call(
        Commands.run, e2b_fake.Commands.run, {"cmd", "background", "stdin", "timeout", "user"}
    )
    assert_same_call(Commands.send_stdin, e2b_fake.Commands.send_stdin, {"pid", "data"})
    assert_same_call(Commands.kill, e2b_fake.Commands.kill, {"pid"})
    assert_same_call(Filesystem.write, e2b_fake.Filesystem.write, {"path", "data", "user"})
    handle = e2b.CommandHandle
    for name, used in [
        ("send_stdin", {"data"}),
        ("kill", set()),
        ("disconnect", set()),
        ("wait", set()),
        ("close_stdin", set()),
    ]:
        assert_same_call(getattr(handle, name), getattr(e2b_fake.CommandHandle, name), used)
    assert isinstance(inspect.getattr_static(handle, "pid"), property)
    assert callable(handle.__iter__)
    # iteration yields (stdout, stderr, pty) with str chunks decoded incrementally as UTF-8
    source = inspect.getsource(e2b.CommandHandle._handle_events)
    assert "yield out, None, None" in source and "yield None, out, None" in source
    assert 'getincrementaldecoder("utf-8")' in inspect.getsource(e2b.CommandHandle.__init__)
    # send_stdin accepts bytes as they are
    assert "data.encode() if isinstance(data, str) else data" in inspect.getsource(
        Commands.send_stdin
    )


def test_e2b_users_and_login_shell() -> None:
    """What the fake models of E2B's users: the default user, and commands run by a login
    shell of that user (which reads the user's dotfiles first)."""
    from e2b.connection_config import default_username
    from e2b.sandbox_sync.commands.command import Commands

    assert default_username == e2b_fake.DEFAULT_USER == "user"
    assert 'cmd="/bin/bash"' in inspect.getsource(Commands._start)
    assert 'args=["-l", "-c", cmd]' in inspect.getsource(Commands._start)


def test_e2b_data_shapes_and_errors() -> None:
    real_info = {f.name for f in dataclasses.fields(e2b.SandboxInfo)}
    fake_info = {f.name for f in dataclasses.fields(e2b_fake.SandboxInfo)}
    assert {"sandbox_id", "metadata", "state"} <= fake_info <= real_info
    real_query = {f.name for f in dataclasses.fields(e2b.SandboxQuery)}
    assert {f.name for f in dataclasses.fields(e2b_fake.SandboxQuery)} == real_query
    assert {s.value for s in e2b.SandboxState} == {s.value for s in e2b_fake.SandboxState}
    from e2b.sandbox.sandbox_api import SnapshotInfo  # what create_snapshot returns
    assert ({f.name for f in dataclasses.fields(e2b_fake.SnapshotInfo)}
            == {f.name for f in dataclasses.fields(SnapshotInfo)})
    paginator = e2b.SandboxPaginator
    assert isinstance(inspect.getattr_static(paginator, "has_next"), property)
    assert_same_call(paginator.next_items, e2b_fake.SandboxPaginator.next_items, set())
    assert issubclass(e2b.SandboxNotFoundException, e2b.NotFoundException)
    assert issubclass(e2b_fake.SandboxNotFoundException, e2b_fake.NotFoundException)
    for name in (
        "AuthenticationException",
        "SandboxException",
        "NotFoundException",
        "SandboxNotFoundException",
        "FileNotFoundException",
        "TimeoutException",
    ):
        assert hasattr(e2b, name) and hasattr(e2b_fake, name), name
    assert not issubclass(e2b.AuthenticationException, e2b.SandboxException)


def test_e2b_api_failures_the_fake_injects() -> None:
    """A refused key is AuthenticationException (401) or SandboxException(status_code=403),
    with the SDK's texts; a request's default timeout is 60 s."""
    from e2b.api import api_exception_from_code
    from e2b.connection_config import REQUEST_TIMEOUT

    refused = api_exception_from_code(401, "Invalid API key")
    assert type(refused) is e2b.AuthenticationException
    assert str(refused) == "401: Unauthorized, please check your credentials. - Invalid API key"
    forbidden = api_exception_from_code(403, "Forbidden")
    assert type(forbidden) is e2b.SandboxException and forbidden.status_code == 403
    assert_same_call(
        e2b.SandboxException.__init__, e2b_fake.SandboxException.__init__, {"status_code"}
    )
    assert REQUEST_TIMEOUT == 60.0


def test_e2b_defaults_the_provider_overrides() -> None:
    """The SDK defaults the e2b provider must override, read from the installed SDK (the
    fake models each; an SDK upgrade that changes one fails here first)."""
    from e2b.envd.utils import timeout_to_ms
    from e2b.sandbox.sandbox_api import SnapshotMode
    from e2b.sandbox_sync.commands.command import Commands

    run = inspect.signature(Commands.run).parameters
    # envd ends a command (and its process) after 60 s unless timeout=0 (or None): no limit
    assert run["timeout"].default == 60 and timeout_to_ms(0) is None
    # a command handle keeps every chunk of output unless retain_output=False
    assert run["retain_output"].default is True
    assert inspect.signature(e2b.CommandHandle.__init__).parameters["retain_output"].default
    assert "self._stdout_chunks.append(out)" in inspect.getsource(e2b.CommandHandle)
    fake_handle = e2b_fake.CommandHandle.__init__
    assert inspect.signature(fake_handle).parameters["retain_output"].default is True
    # pause with no mode leaves the snapshot kind to the API; "full" keeps memory
    pause = inspect.signature(e2b.Sandbox._cls_pause).parameters
    assert pause["mode"].default is None and pause["keep_memory"].default is None
    assert typing.get_args(SnapshotMode) == ("full", "filesystem")
    # a request to a paused sandbox's daemon: SandboxNotRunningException, a TimeoutException
    for sdk in (e2b, e2b_fake):
        assert issubclass(sdk.SandboxNotRunningException, sdk.TimeoutException)
    # create with no lifecycle leaves the timeout's action to the API, which kills (the
    # fake's API_ON_TIMEOUT); the provider's lifecycle is one the SDK accepts, and it and
    # the fake read every lifecycle alike: auto-pause, its memory, no auto-resume
    from e2b.sandbox.sandbox_api import SandboxLifecycle, build_lifecycle_config

    assert inspect.signature(e2b.Sandbox.create).parameters["lifecycle"].default is None
    said = " ".join(inspect.getdoc(SandboxLifecycle).split())
    assert 'leaves the choice to the API (currently `"kill"`)' in said
    assert e2b_fake.API_ON_TIMEOUT == "kill"
    for lifecycle in (None, {"on_timeout": "pause"}, {"on_timeout": {"action": "kill"}},
                      {"on_timeout": {"action": "pause", "mode": "filesystem"}}, LIFECYCLE):
        body = build_lifecycle_config(lifecycle)
        action, mode = e2b_fake._on_timeout(lifecycle)
        assert (body.auto_pause is True) == (action == "pause"), lifecycle
        if isinstance(body.auto_pause_memory, bool):  # else the API's default mode
            assert body.auto_pause_memory == (mode == "full"), lifecycle
    assert build_lifecycle_config(LIFECYCLE).auto_resume.enabled is False
    # list pages: the paginator asks for `limit` (the API's default when unset) per page
    assert inspect.signature(e2b.Sandbox.list).parameters["limit"].default is None
    assert "next_token=self._next_token" in inspect.getsource(e2b.SandboxPaginator.next_items)


def test_e2b_fake_pages_like_the_api() -> None:
    e2b_fake.reset()
    try:
        for _ in range(5):
            e2b_fake.Sandbox.create(metadata={"k": "v"}, api_key="k")
        pages = e2b_fake.Sandbox.list(limit=2, api_key="k")
        sizes = []
        while pages.has_next:
            sizes.append(len(pages.next_items()))
        assert sizes == [2, 2, 1]
    finally:
        e2b_fake.reset()


# =========================================================================== modal

modal = pytest.importorskip(
    "modal", reason="the modal SDK is not installed: pip install 'nexus-kernel[modal]'"
)


@pytest.mark.parametrize(
    ("name", "used"),
    [
        (
            "create",
            {
                "*",
                "app",
                "image",
                "tags",
                "timeout",
                "idle_timeout",
                "block_network",
                "client",
                "cpu",
                "memory",
                "gpu",
                "_experimental_enable_snapshot",
            },
        ),
        ("from_id", {"sandbox_id", "client"}),
        ("list", {"app_id", "tags", "client"}),
        ("exec", {"*", "text"}),
        ("terminate", set()),
        ("poll", set()),
        ("get_tags", set()),
        ("set_tags", {"tags"}),
        ("wait", set()),
        ("_experimental_snapshot", set()),
        ("_experimental_from_snapshot", {"snapshot", "client"}),
        ("snapshot_filesystem", {"ttl"}),
    ],
)
def test_modal_sandbox_methods(name: str, used: set[str]) -> None:
    assert_same_call(getattr(modal.Sandbox, name), getattr(modal_fake.Sandbox, name), used)


def test_modal_sandbox_attributes() -> None:
    for name in ("object_id", "stdin", "stdout", "stderr", "returncode"):
        assert hasattr(modal.Sandbox, name) and hasattr(modal_fake.Sandbox, name), name


def test_modal_snapshot_objects() -> None:
    """Memory snapshots (``SandboxSnapshot``, ids ``sn-``), filesystem snapshots (an
    ``Image``, ids ``im-``) and their deletion, as the provider uses them."""
    import modal.experimental

    assert_same_call(modal.SandboxSnapshot.from_id, modal_fake.SandboxSnapshot.from_id,
                     {"sandbox_snapshot_id", "client"})
    assert_same_call(modal.experimental.image_delete, modal_fake.experimental.image_delete,
                     {"image_id", "client"})
    for cls in (modal.SandboxSnapshot, modal.Image):
        assert isinstance(inspect.getattr_static(cls, "object_id"), property)
    assert "object_id" in vars(modal_fake.SandboxSnapshot("sn-probe"))
    assert "object_id" in vars(modal_fake.Image([], {}))
    from modal.sandbox._snapshot import _SandboxSnapshot

    assert "sn" in _SandboxSnapshot._type_prefixes and modal_provider.MEMORY_SNAPSHOT_PREFIX == "sn-"


def test_modal_app_image_client() -> None:
    assert_same_call(
        modal.App.lookup, modal_fake.App.lookup, {"name", "create_if_missing", "client"}
    )
    image, fake = modal.Image, modal_fake.Image
    assert_same_call(image.debian_slim, fake.debian_slim, {"python_version"})
    assert_same_call(image.apt_install, fake.apt_install, {"*"})
    assert_same_call(image.pip_install, fake.pip_install, {"*"})
    assert_same_call(image.from_registry, fake.from_registry, {"tag"})
    assert_same_call(image.from_id, fake.from_id, {"image_id", "client"})
    assert_same_call(image.add_local_file, fake.add_local_file, {"local_path", "remote_path"})
    assert_same_call(
        modal.Client.from_credentials, modal_fake.Client.from_credentials,
        {"token_id", "token_secret"},
    )  # fmt: skip
    assert_same_call(modal.Client.hello, modal_fake.Client.hello, set())
    assert_same_call(modal.Client.close, modal_fake.Client.close, set())
    assert isinstance(inspect.getattr_static(modal.App, "app_id"), property)
    assert "app_id" in vars(modal_fake.App("probe"))


def test_modal_streams_and_process() -> None:
    from modal.container_process import ContainerProcess
    from modal.io_streams import StreamReader, StreamWriter

    for name, used in [("write", {"data"}), ("drain", set()), ("write_eof", set())]:
        assert_same_call(getattr(StreamWriter, name), getattr(modal_fake.StreamWriter, name), used)
    assert callable(StreamReader.__iter__) and callable(StreamReader.read)
    assert_same_call(StreamReader.read, modal_fake.StreamReader.read, set())
    for name in ("stdin", "stdout", "stderr", "returncode"):
        assert isinstance(inspect.getattr_static(ContainerProcess, name), property), name
        assert isinstance(inspect.getattr_static(modal_fake.ContainerProcess, name), property)
    assert_same_call(ContainerProcess.poll, modal_fake.ContainerProcess.poll, set())
    assert_same_call(ContainerProcess.wait, modal_fake.ContainerProcess.wait, set())
    from modal import io_streams

    assert (
        io_streams.MAX_BUFFER_SIZE == modal_fake.MAX_BUFFER_SIZE
    )  # the cap the provider chunks under


def test_modal_errors_and_config() -> None:
    for name in (
        "Error",
        "AuthError",
        "NotFoundError",
        "InvalidError",
        "SandboxTerminatedError",
        "ConnectionError",
    ):
        assert hasattr(modal.exception, name) and hasattr(modal_fake.exception, name), name
    assert issubclass(modal.exception.NotFoundError, modal.exception.Error)
    assert_same_call(modal.config.config.get, modal_fake.config.config.get, {"key"})
    assert "token_id" in modal.config._SETTINGS and "token_secret" in modal.config._SETTINGS
    server_url = modal.config._SETTINGS["server_url"].default
    assert modal_fake.config.config.get("server_url") == server_url


def test_modal_connection_retries_the_fake_models() -> None:
    """With no network the SDK retries connecting for CONNECT_GIVE_UP seconds, then raises
    ``exception.ConnectionError``; a client connects when it is made."""
    from modal._utils import grpc_utils

    source = inspect.getsource(grpc_utils)
    assert f"total_timeout={modal_fake.CONNECT_GIVE_UP}" in source
    assert 'raise ConnectionError("Could not connect to the Modal server.")' in source
    assert grpc_utils.ConnectionError is modal.exception.ConnectionError
    assert "await client._open()" in inspect.getsource(modal.client._Client.from_credentials)
