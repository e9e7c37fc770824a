"""What a new user of the CLI meets (the rough-edges issue): Ctrl-C in a real terminal
interrupts the code and keeps a session, piped data reaches a script, and only an admin sees
every user's sandboxes. Each command in its own process; Ctrl-C through a real pty."""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import sys
import termios
import time

import pytest

from .conftest import ROOT, needs_bwrap, nexus

pytestmark = needs_bwrap


def create(name: str = "cli-user", **env: str) -> str:
    out = nexus("sandbox", "create", name, "--json", env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["sandbox_id"]


class Terminal:
    """`nexus ...` with a pty as its controlling terminal, as in a user's shell."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()

        def controlling_tty() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_kernel.cli", *args], cwd=ROOT,
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=controlling_tty,
        )
        os.close(slave)
        self.screen = b""

    def read_until(self, text: str, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while text.encode() not in self.screen and time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:  # the process ended and closed the pty
                    break
        return self.screen.decode(errors="replace")

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")  # the line discipline sends SIGINT to the foreground

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self.read_until("\0", timeout=0.5)  # drain
        os.close(self.master)
        return code


def test_ctrl_c_interrupts_the_code_and_keeps_the_session(nexus_home):
    sandbox_id = create()
    assert nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "x = 41").returncode == 0
    term = Terminal("sandbox", "run", sandbox_id, "--session", "s", "-c",
                    "import time\nprint('busy', flush=True)\ntime.sleep(60)")
    term.read_until("busy")
    started = time.monotonic()
    term.ctrl_c()
    assert term.wait() == 130
    assert time.monotonic() - started < 5, "the code kept running after Ctrl-C"
    assert "KeyboardInterrupt" in term.screen.decode()
    after = nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "print(x + 1)",
                  timeout=10)  # no hang: the session answers at once
    assert after.stdout == "42\n"
    nexus("sandbox", "stop", sandbox_id)


def test_code_ignoring_ctrl_c_is_ended_and_the_lost_session_is_said(nexus_home):
    sandbox_id = create()
    nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "x = 41")
    term = Terminal("sandbox", "run", sandbox_id, "--session", "s", "-c",
                    "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                    "print('busy', flush=True)\ntime.sleep(60)")
    term.read_until("busy")
    started = time.monotonic()
    term.ctrl_c()
    assert term.wait() == 130
    assert time.monotonic() - started < 8
    screen = term.screen.decode()
    assert "interrupting the code" in screen and "its variables are gone" in screen
    after = nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "print(x)", timeout=10)
    assert "NameError" in after.stderr
    nexus("sandbox", "stop", sandbox_id)


def test_a_second_ctrl_c_stops_waiting_and_says_how_to_end_the_code(nexus_home):
    sandbox_id = create()
    term = Terminal("sandbox", "run", sandbox_id, "-c",
                    "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                    "print('busy', flush=True)\ntime.sleep(60)")
    term.read_until("busy")
    term.ctrl_c()
    term.read_until("Ctrl-C again")
    term.ctrl_c()
    assert term.wait() == 130
    assert f"nexus sandbox stop {sandbox_id}" in term.screen.decode()
    nexus("sandbox", "stop", sandbox_id)


def test_piped_data_is_the_stdin_of_a_script(nexus_home, tmp_path):
    sandbox_id = create()
    script = tmp_path / "count.py"
    script.write_text("import sys\nlines = sys.stdin.read().splitlines()\nprint(len(lines), lines[-1])\n")
    out = nexus("sandbox", "run", sandbox_id, "-f", str(script), input="a\nb\nc\n")
    assert (out.returncode, out.stdout) == (0, "3 c\n")
    with open(tmp_path / "data.txt", "w") as f:
        f.write("from a file\n")
    with open(tmp_path / "data.txt") as f:  # `< data.txt`
        redirected = subprocess.run(
            [sys.executable, "-m", "nexus_kernel.cli", "sandbox", "run", sandbox_id, "-l",
             "bash", "-c", "cat"], stdin=f, capture_output=True, text=True, cwd=ROOT)
    assert redirected.stdout == "from a file\n"
    quiet = nexus("sandbox", "run", sandbox_id, "-c", "import sys; print(repr(sys.stdin.read()))")
    assert quiet.stdout == "''\n"  # /dev/null: nothing, no hang
    nexus("sandbox", "stop", sandbox_id)


def test_every_users_sandboxes_need_an_admin(nexus_home):
    mine = create("mine", NEXUS_USER="alice")
    theirs = create("theirs", NEXUS_USER="bob")
    denied = nexus("sandbox", "list", "--all", env={"NEXUS_USER": "alice"})
    assert denied.returncode == 1 and len(denied.stderr.strip().splitlines()) == 1
    assert "NEXUS_ADMIN=1" in denied.stderr and theirs not in denied.stdout
    admin = nexus("sandbox", "list", "--all", "--json",
                  env={"NEXUS_USER": "alice", "NEXUS_ADMIN": "1"})
    ids = {sb["sandbox_id"] for sb in json.loads(admin.stdout)["sandboxes"]}
    assert {mine, theirs} <= ids
    assert nexus("sandbox", "stop", theirs, env={"NEXUS_USER": "alice"}).returncode == 2
    assert nexus("sandbox", "stop", theirs, env={"NEXUS_USER": "alice",
                                                 "NEXUS_ADMIN": "1"}).returncode == 0
    nexus("sandbox", "stop", mine, env={"NEXUS_USER": "alice"})


@pytest.mark.parametrize("surface", ["api", "cli"])
def test_a_timeout_in_a_session_keeps_its_state_and_says_when_it_cannot(nexus_home, surface):
    sandbox_id = create()
    nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "x = 41")
    slow = "import time\ntime.sleep(60)"
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    kept = nexus("sandbox", "run", sandbox_id, "--session", "s", "--timeout", "1", "-c", slow)
    assert kept.returncode == 124 and "variables are gone" not in kept.stderr
    assert nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "print(x)").stdout == "41\n"
    lost = nexus("sandbox", "run", sandbox_id, "--session", "s", "--timeout", "1", "-c", stubborn)
    assert lost.returncode == 124 and "its variables are gone" in lost.stderr
    nexus("sandbox", "stop", sandbox_id)


HOSTILE_OUTPUT = ("import sys\n"
                  "sys.stdout.write('\\x1b]52;c;cHduZWQ=\\x07'  # OSC 52: write the clipboard\n"
                  "                 '\\x1b]0;fake title\\x07\\x1b[1A\\x1b[2K'  # title, erase a line\n"
                  "                 '\\x9b31m\\u202eevil\\u202c \\x1b[31mred\\x1b[0m\\n')\n")


def test_sandbox_output_cannot_drive_the_terminal(nexus_home):
    sandbox_id = create()
    term = Terminal("sandbox", "run", sandbox_id, "-c", HOSTILE_OUTPUT)
    assert term.wait() == 0
    screen = term.screen.decode()
    assert "\x1b]" not in screen and "\x1b[1A" not in screen and "\x1b[2K" not in screen
    assert "\x9b" not in screen and "\u202e" not in screen
    assert "\\x1b]52;c;cHduZWQ=\\x07" in screen and "\\u202eevil" in screen
    assert "\x1b[31mred\x1b[0m" in screen  # colours stay
    raw = Terminal("sandbox", "run", sandbox_id, "--raw", "-c", HOSTILE_OUTPUT)
    assert raw.wait() == 0 and "\x1b]52;c;cHduZWQ=\x07" in raw.screen.decode()
    piped = nexus("sandbox", "run", sandbox_id, "-c", HOSTILE_OUTPUT)  # a pipe, not a terminal
    assert "\x1b]52;c;cHduZWQ=\x07" in piped.stdout
    nexus("sandbox", "stop", sandbox_id)


@pytest.mark.parametrize("name", ["abc\u202edef", "zero\u200bwidth", "c1\x9bcontrol"])
def test_names_reject_bidi_overrides_and_c1_controls(nexus_home, name):
    out = nexus("sandbox", "create", name)
    assert out.returncode == 2 and "invisible format characters" in out.stderr
