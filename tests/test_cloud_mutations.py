"""Mutation checks: the fakes must notice when a load-bearing SDK argument is dropped.

Each case copies ``nexus_kernel/providers/e2b.py``, removes one argument the live service
needs (``timeout=0``: E2B's daemon would end the agent or a relay after the SDK's 60 s;
``retain_output=False``: the SDK's handles would keep every byte of output; the pause mode;
ending relays before a pause; reading every page of a listing; ``user="root"`` of the
agent's file and of the relays: the sandbox user could replace the one and hijack the
other through its dotfiles; the auto-pause lifecycle at create and its snapshot mode),
imports the mutant
in-process and runs the fake-SDK check that guards it: the check must fail. A case whose
text is no longer in the source fails too, so a refactor cannot silently disarm it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.errors import SandboxError
from nexus_kernel.providers import e2b as e2b_provider

from .fakes import e2b_fake
from .security.test_cloud_channel import (
    check_agent_file_is_roots,
    check_relays_skip_the_users_dotfiles,
)
from .test_cloud_providers import (
    check_cap_pause_keeps_the_session,
    check_lists_every_page,
    check_outlives_command_timeout,
    check_pause_ends_relays_and_keeps_memory,
    stream_output,
)

SOURCE = Path(e2b_provider.__file__)


def check_keeps_no_output(provider) -> None:
    retained, _growth = stream_output(provider, 20)
    assert retained < 64 * 1024, retained


#: (name, text in e2b.py, its replacement, the check that must then fail)
MUTATIONS: list[tuple[str, str, str, Callable]] = [
    (
        "agent without timeout=0",
        "background=True, user=USER, timeout=0, retain_output=False,\n",
        "background=True, user=USER, retain_output=False,\n",
        check_outlives_command_timeout,
    ),
    (
        "relay without timeout=0",
        "            user=ROOT,\n            timeout=0,\n",
        "            user=ROOT,\n",
        check_outlives_command_timeout,
    ),
    (
        "output retained (SDK default)",
        "retain_output=False",
        "retain_output=True",
        check_keeps_no_output,
    ),
    (
        "pause mode left to the API",
        "mode=PAUSE_MODE, ",
        "",
        check_pause_ends_relays_and_keeps_memory,
    ),
    (
        "relays left open across a pause",
        "        self.close_relays(handle)\n",
        "",
        check_pause_ends_relays_and_keeps_memory,
    ),
    (
        "first page of the listing only",
        "while pages.has_next:",
        "if pages.has_next:",
        check_lists_every_page,
    ),
    (
        "agent file written as the sandbox user",
        "zipapp_bytes(), user=ROOT)",
        "zipapp_bytes())",
        check_agent_file_is_roots,
    ),
    (
        "relays run as the sandbox user",
        "            user=ROOT,\n            timeout=0,\n",
        "            timeout=0,\n",
        check_relays_skip_the_users_dotfiles,
    ),
    (
        "created without the auto-pause lifecycle",
        "                **lifecycle,\n",
        "",
        check_cap_pause_keeps_the_session,
    ),
    (
        "auto-pause mode left to the API",
        '{"action": "pause", "mode": PAUSE_MODE}',
        '{"action": "pause"}',
        check_cap_pause_keeps_the_session,
    ),
]


@pytest.fixture(autouse=True)
def clean_fakes():
    yield
    e2b_fake.reset()


def mutant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str):
    """The e2b provider module with ``old`` replaced by ``new`` everywhere it occurs."""
    text = SOURCE.read_text()
    assert old in text, f"the mutated text is no longer in {SOURCE.name}: {old!r}"
    path = tmp_path / "e2b_mutant.py"
    path.write_text(text.replace(old, new))
    name = "nexus_kernel.providers._e2b_mutant"  # in the package: relative imports work
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("old", "new", "check"),
    [case[1:] for case in MUTATIONS],
    ids=[case[0] for case in MUTATIONS],
)
def test_the_fakes_catch_a_dropped_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str, check: Callable
) -> None:
    module = mutant(tmp_path, monkeypatch, old, new)
    settings = Settings.load(home=tmp_path / "nexus", user="tester", e2b_api_key="k")
    provider = module.E2BProvider(settings, sdk=e2b_fake)
    with pytest.raises((AssertionError, SandboxError)) as failed:
        check(provider)
    print(f"the mutant failed: {failed.type.__name__}: {str(failed.value)[:200]}")


def test_the_unmutated_provider_passes_every_check(tmp_path: Path) -> None:
    """The same checks against the real module pass (the mutants fail for their mutation)."""
    settings = Settings.load(home=tmp_path / "nexus", user="tester", e2b_api_key="k")
    for check in {case[3] for case in MUTATIONS}:
        check(e2b_provider.E2BProvider(settings, sdk=e2b_fake))
        e2b_fake.reset()
