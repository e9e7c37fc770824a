"""The `nexus` CLI keeps the conventions of gh/docker/kubectl: help when run bare,
`--version`, help text for every argument, defaults from settings, errors naming the option
typed, a quiet exit on a closed pipe, exit codes documented. Each command runs in its own
process."""

from __future__ import annotations

import json

from .conftest import needs_bwrap, nexus


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert "Traceback" not in text
    return text


def create(*extra: str, env: dict[str, str] | None = None) -> dict:
    out = nexus("sandbox", "create", "conventions", "--json", *extra, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_bwrap
def test_code_with_a_nul_byte_is_a_usage_error(nexus_home, tmp_path):
    sandbox_id = create()["sandbox_id"]
    script = tmp_path / "nul.py"
    script.write_text("print('a\0b')\n")
    for out in (nexus("sandbox", "run", sandbox_id, "-c", "-", input="print('a\0b')"),
                nexus("sandbox", "run", sandbox_id, "-f", str(script)),
                nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "-", input="a\0b")):
        assert out.returncode == 2
        assert "code cannot contain NUL bytes" in one_line(out.stderr)
    nexus("sandbox", "stop", sandbox_id)
