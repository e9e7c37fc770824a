"""The one ``%sandbox`` grammar: the magics and the proxy kernel read the same lines the same
way, reject the same bad lines with the same message, and each rejects the other's own
lines saying where they belong. No sandbox is started: these run in milliseconds."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError as IPythonUsageError

from magics import commands
from nexus_kernel import sandbox_lines
from nexus_kernel.errors import (
    InvalidArgumentError,
    SandboxNotFoundError,
    SandboxStateError,
    UsageError,
)
from nexus_kernel.kernel import completion
from nexus_kernel.kernel.commands import SandboxCommands
from nexus_kernel.sandbox_lines import KERNEL, MAGICS, parse

#: Lines both surfaces have, and what they mean.
SHARED = {
    "status": ("status", {}),
    "pause  # a comment": ("pause", {}),
    "resume": ("resume", {}),
    "stop": ("stop", {}),
    "trust on": ("trust", {"trust": True}),
    "trust OFF  # with 'quotes' in the comment": ("trust", {"trust": False}),
    "trust yes": ("trust", {"trust": True}),
    "usage": ("usage", {}),
}
#: Lines both surfaces reject, and the start of the one message both give.
BAD = {
    'status "unclosed': "%sandbox: cannot parse 'status \"unclosed': No closing quotation",
    "trust maybe": "%sandbox trust: argument on|off: invalid choice: 'maybe'",
    "trust": "%sandbox trust: the following arguments are required: on|off",
    "trust on off": "%sandbox trust: unrecognized arguments: off",
    "help me": "%sandbox help: unrecognized arguments: me",
    "frobnicate": "unknown subcommand 'frobnicate'; use one of: ",
}


def _kernel_line(line: str) -> sandbox_lines.SandboxLine:
    return parse(line, KERNEL)


@pytest.mark.parametrize("line", SHARED)
def test_both_surfaces_parse_a_shared_line_to_the_same_command(line: str) -> None:
    name, args = SHARED[line]
    magics, kernel = parse(line, MAGICS), _kernel_line(line)
    assert (kernel.name, kernel.help) == (magics.name, magics.help) == (name, None)
    assert {k: v for k, v in vars(magics.args).items() if k != "sandbox"} == vars(kernel.args)
    assert vars(kernel.args) == args


@pytest.mark.parametrize("line", BAD)
def test_both_surfaces_reject_a_bad_line_with_the_same_message(line: str) -> None:
    messages = []
    for surface in (MAGICS, KERNEL):
        with pytest.raises(UsageError) as info:
            parse(line, surface)
        messages.append(str(info.value))
    assert messages[0].startswith(BAD[line]) and messages[1].startswith(BAD[line])
    if line != "frobnicate":  # ... whose list names the surface's own subcommands
        assert messages[0] == messages[1]


def test_help_is_one_text_per_surface_naming_the_other_surfaces_lines() -> None:
    for line in ("", "help", "-h", "  # only a comment"):
        assert parse(line, MAGICS).help == sandbox_lines.usage(MAGICS)
        assert _kernel_line(line).help == sandbox_lines.usage(KERNEL)
    magics, kernel = sandbox_lines.usage(MAGICS), sandbox_lines.usage(KERNEL)
    assert "%sandbox create" in magics and "%%sandbox run" in magics and "%sandbox ttl" not in magics
    assert "Only in the Nexus Sandbox kernel: attach, ttl, timeout" in magics
    assert "%sandbox ttl [-h] MINUTES" in kernel and "%sandbox create" not in kernel
    assert "Only in the %sandbox magics" in kernel and "create, list, use" in kernel
    assert "--ttl MINUTES" in parse("create -h", MAGICS).help
    assert "SECONDS|off" in _kernel_line("timeout -h").help


def test_each_surface_rejects_the_others_lines_saying_where_they_belong() -> None:
    with pytest.raises(UsageError, match="a line of the Nexus Sandbox kernel only; here use one "
                                         "of: create, list"):
        parse("ttl 30", MAGICS)
    with pytest.raises(UsageError, match=r"%sandbox create is a line of the %sandbox magics"):
        _kernel_line("create box")
    with pytest.raises(UsageError, match="unrecognized arguments: sb_1"):
        _kernel_line("status sb_1")  # the kernel's lines act on its own sandbox
    assert parse("status sb_1", MAGICS).args.sandbox == "sb_1"


def test_cell_headers_and_kernel_only_values() -> None:
    assert parse("", MAGICS, cell=True).name == "run"
    run = parse("--timeout 20 -l bash  # a comment", MAGICS, cell=True).args
    assert (run.timeout, run.language, run.fresh) == (20.0, "bash", False)
    with pytest.raises(UsageError, match="put %%sandbox run on the first line"):
        parse("run", MAGICS)
    with pytest.raises(UsageError, match="takes no cell body"):
        parse("list", MAGICS, cell=True)
    assert _kernel_line("timeout off").args.seconds is None
    assert _kernel_line("timeout 90").args.seconds == 90.0
    assert _kernel_line("template none").args.template is None
    assert _kernel_line("network on").args.network is True
    assert _kernel_line("network off").args.network is False
    assert _kernel_line("network PyPI.org,api.example.com:443").args.network == (
        "pypi.org", "api.example.com:443")
    with pytest.raises(UsageError, match="bad network allow entry 'a..org'"):
        _kernel_line("network a..org")
    create = parse("create x --allow pypi.org --allow b.org:8080", MAGICS).args
    assert create.allow == ["pypi.org", "b.org:8080"]
    with pytest.raises(UsageError, match="'abc' is not a number of minutes"):
        _kernel_line("ttl abc")


def test_one_usage_error_for_every_surface() -> None:
    error = UsageError("argument --ttl: bad", prog="%sandbox create")
    assert isinstance(error, InvalidArgumentError) and error.exit_code == 2
    assert str(error) == "%sandbox create: argument --ttl: bad" and error.prog == "%sandbox create"
    assert str(UsageError("plain")) == "plain"


def test_errors_name_their_command_in_each_surfaces_syntax() -> None:
    missing = SandboxNotFoundError("sb_nexus sandbox list")  # data that looks like a command
    assert str(missing) == ("no sandbox 'sb_nexus sandbox list' for this user; "
                            "run 'nexus sandbox list' to see yours")
    assert missing.render("%sandbox") == ("no sandbox 'sb_nexus sandbox list' for this user; "
                                          "run '%sandbox list' to see yours")
    paused = SandboxStateError("sandbox sb_1 is paused; resume it first: nexus sandbox resume sb_1",
                               command="resume sb_1")
    assert paused.render("%sandbox").endswith("resume it first: %sandbox resume sb_1")
    plain = SandboxStateError("nexus sandbox list is only named here")
    assert plain.render("%sandbox") == str(plain)


def test_the_magics_route_every_subcommand_they_have() -> None:
    assert set(commands.HANDLERS) == set(sandbox_lines.names(MAGICS)) - {"help"}


def test_the_kernel_handles_every_subcommand_it_has() -> None:
    for name in sandbox_lines.names(KERNEL):
        assert name == "help" or callable(getattr(SandboxCommands, "cmd_" + name))


def test_a_magic_usage_error_is_ipythons_one_line_usage_error() -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from magics import SandboxMagics

    magics = SandboxMagics(shell=InteractiveShell.instance())
    with pytest.raises(IPythonUsageError, match="^%sandbox ttl is a line of the Nexus"):
        magics.sandbox("ttl 30")
    with pytest.raises(IPythonUsageError, match="^no current sandbox"):
        magics.sandbox("status")
    InteractiveShell.instance().configurables.remove(magics)


def test_host_side_completion_and_help_before_the_first_cell() -> None:
    assert completion.complete_builtin("pri", 3)["matches"] == ["print"]
    assert completion.complete_builtin("x = str.jo", 10) == {
        "matches": ["str.join"], "cursor_start": 4, "cursor_end": 10}
    assert completion.complete_builtin("f().x", 5)["matches"] == []
    assert "while" in completion.complete_builtin("whi", 3)["matches"]
    assert completion.complete_magic("%sa", 3)["matches"] == ["%sandbox"]
    assert completion.complete_magic("%%ba", 4)["matches"] == ["%%bash"]
    assert completion.complete_magic("%sandbox st", 11)["matches"] == ["status", "stop"]
    assert completion.complete_magic("%sandbox keep o", 15) == {
        "matches": ["on", "off"], "cursor_start": 14, "cursor_end": 15}
    assert completion.complete_magic("x = 1", 5) is None
    page = completion.inspect_builtin("zip")
    assert page["found"] and page["data"]["text/plain"].startswith("Type:      type")
    assert "Docstring:" in page["data"]["text/plain"]
    assert not completion.inspect_builtin("no_such_name")["found"]
