"""Hostile code against the filesystem boundary, on the local and docker providers: host
files, other sandboxes' files, writes outside the sandbox's scratch mounts, persistence across
stop/create, and path / symlink tricks against file upload and download.

Upload and download go through the agent inside the sandbox (``write_file`` / ``read_file``),
so a path can only ever resolve in the sandbox's own view of the filesystem; these tests check
that no trick reaches a host file. No archive is extracted anywhere (tar-slip does not apply;
``test_no_archive_is_extracted_on_the_file_path`` keeps it that way).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from pathlib import Path

import pytest

from nexus_kernel.errors import InvalidArgumentError, SandboxError

from ..conftest import ROOT
from .conftest import LANGUAGES

pytestmark = pytest.mark.timeout(120)

#: Prints one JSON object {path: "ok" | error name} for the paths given as a JSON list.
READ_PROBE = {
    "python": (
        "import json, os\n"
        "out = {{}}\n"
        "for p in json.loads({paths!r}):\n"
        "    try:\n"
        "        if os.path.isdir(p):\n"
        "            os.listdir(p)\n"
        "        else:\n"
        "            open(p, 'rb').read()\n"
        "        out[p] = 'ok'\n"
        "    except OSError as exc:\n"
        "        out[p] = type(exc).__name__\n"
        "print(json.dumps(out))\n"
    ),
    "bash": (
        "printf '{{'\n"
        "sep=\n"
        "while IFS= read -r p; do\n"
        "  if [ -d \"$p\" ]; then ls \"$p\" >/dev/null 2>&1; else cat \"$p\" >/dev/null 2>&1; fi\n"
        "  if [ $? -eq 0 ]; then r=ok; else r=error; fi\n"
        "  printf '%s\"%s\": \"%s\"' \"$sep\" \"$p\" \"$r\"; sep=', '\n"
        "done <<'EOF'\n{lines}\nEOF\n"
        "echo '}}'\n"
    ),
    "javascript": (
        "const fs = require('fs');\n"
        "const out = {{}};\n"
        "for (const p of JSON.parse({paths_js})) {{\n"
        "  try {{\n"
        "    if (fs.existsSync(p) && fs.statSync(p).isDirectory()) fs.readdirSync(p);\n"
        "    else fs.readFileSync(p);\n"
        "    out[p] = 'ok';\n"
        "  }} catch (e) {{ out[p] = e.code || 'error'; }}\n"
        "}}\n"
        "console.log(JSON.stringify(out));\n"
    ),
}

WRITE_PROBE = {
    "python": (
        "import json, os\n"
        "out = {{}}\n"
        "for d in json.loads({paths!r}):\n"
        "    try:\n"
        "        with open(os.path.join(d, 'nexus-probe'), 'w') as f:\n"
        "            f.write('x')\n"
        "        out[d] = 'ok'\n"
        "    except OSError as exc:\n"
        "        out[d] = type(exc).__name__\n"
        "print(json.dumps(out))\n"
    ),
    "bash": (
        "printf '{{'\n"
        "sep=\n"
        "while IFS= read -r d; do\n"
        "  if (echo x > \"$d/nexus-probe\") 2>/dev/null; then r=ok; else r=error; fi\n"
        "  printf '%s\"%s\": \"%s\"' \"$sep\" \"$d\" \"$r\"; sep=', '\n"
        "done <<'EOF'\n{lines}\nEOF\n"
        "echo '}}'\n"
    ),
    "javascript": (
        "const fs = require('fs');\n"
        "const out = {{}};\n"
        "for (const d of JSON.parse({paths_js})) {{\n"
        "  try {{ fs.writeFileSync(d + '/nexus-probe', 'x'); out[d] = 'ok'; }}\n"
        "  catch (e) {{ out[d] = e.code || 'error'; }}\n"
        "}}\n"
        "console.log(JSON.stringify(out));\n"
    ),
}


def probe(box, table: dict[str, str], language: str, paths: list[str]) -> dict[str, str]:
    code = table[language].format(
        paths=json.dumps(paths), paths_js=json.dumps(json.dumps(paths)), lines="\n".join(paths)
    )
    return json.loads(box.ok(language, code))


@pytest.fixture
def host_secret(tmp_path: Path) -> tuple[Path, str]:
    """A file on the host holding a secret no sandbox may ever read."""
    secret = "host-secret-" + secrets.token_hex(8)
    path = tmp_path / "host-secret.txt"
    path.write_text(secret)
    return path, secret


@pytest.mark.parametrize("language", LANGUAGES)
def test_host_files_and_other_sandboxes_are_out_of_reach(env, box, host_secret, language):
    path, secret = host_secret
    neighbour = env.create("neighbour")
    try:
        neighbour.ok("bash", f"echo {secret} > secret.txt")
        targets = [
            "/etc/shadow",
            str(Path.home()),  # the host user's home
            str(env.settings.home),  # the state directory: store, sandboxes, handles
            str(env.settings.store_dir),
            str(path),
        ]
        handle = neighbour.record.handle
        if env.name == "local":
            targets += [handle["dir"], f"/proc/{handle['child_pid']}/root/home/user/secret.txt"]
        else:
            targets += [f"/var/lib/docker/containers/{handle['container_id']}",
                        "/var/run/docker.sock", "/run/docker.sock"]
        results = probe(box, READ_PROBE, language, targets)
        assert all(result != "ok" for result in results.values()), results
        # and nothing readable anywhere inside holds the secrets
        found = box.run("bash", "grep -rIl --exclude-dir=usr --exclude-dir=proc --exclude-dir=sys "
                                f"-e {secret} / 2>/dev/null | head -5", timeout=60)
        assert found.stdout == "", found.stdout
    finally:
        neighbour.stop()


#: Places sandbox code must not be able to write (root, system and agent dirs, kernel knobs).
READ_ONLY = ["/", "/etc", "/usr", "/usr/bin", "/bin", "/lib", "/opt/nexus-agent", "/var",
             "/root", "/proc/sys/kernel", "/sys/kernel", "/run", "/dev"]
WRITABLE = ["/home/user", "/tmp", "/dev/shm"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_writes_land_only_in_the_scratch_mounts(box, language):
    results = probe(box, WRITE_PROBE, language, READ_ONLY + WRITABLE)
    assert [d for d in READ_ONLY if results[d] == "ok"] == []
    assert [d for d in WRITABLE if results[d] != "ok"] == [], results
    kernel_knobs = box.run("bash", "echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger;"
                                   " head -c1 /proc/kcore; echo done")
    assert kernel_knobs.stdout == "done\n"
    assert kernel_knobs.stderr.count("\n") >= 3  # three refusals


def test_nothing_persists_across_stop_and_create(env, box):
    marker = "persist-" + secrets.token_hex(6)
    box.ok("bash", "for d in /home/user /tmp /dev/shm /var/tmp; do "
                   f"echo {marker} > $d/{marker} 2>/dev/null; done; true")
    box.stop()
    fresh = env.create("fresh")
    try:
        found = fresh.ok("bash", f"ls -a /home/user /tmp /dev/shm /var/tmp 2>/dev/null | grep -c {marker} || true")
        assert found.strip() == "0"
        assert fresh.ok("bash", "ls -A /home/user | wc -l").strip() == "0"
    finally:
        fresh.stop()


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "path",
    ["../../escape.txt", "../../../../../../usr/escape.txt", "/etc/escape.txt",
     "/opt/nexus-agent/escape.txt", "a\0b", "", ".."],
)
def test_upload_cannot_leave_the_sandbox(env, shared_box, path):
    with pytest.raises(SandboxError) as info:
        env.manager.put_file(shared_box.id, path, b"escaped")
    assert isinstance(info.value, InvalidArgumentError)
    _one_line(info.value)
    assert not Path("/escape.txt").exists() and not Path("/usr/escape.txt").exists()
    assert not list(env.home.rglob("escape.txt"))


def test_upload_to_an_absolute_path_stays_inside(env, shared_box):
    name = f"/tmp/abs-{secrets.token_hex(6)}.txt"
    env.manager.put_file(shared_box.id, name, b"inside")
    assert shared_box.ok("bash", f"cat {name}") == "inside"
    assert not Path(name).exists(), "an upload must never land on the host"


@pytest.mark.parametrize("path", ["../../../../etc/shadow", "/etc/shadow", "/root/.bashrc",
                                  "no/such/file", "a\0b", ""])
def test_download_of_host_or_private_paths_fails_cleanly(env, shared_box, path):
    with pytest.raises(SandboxError) as info:
        env.manager.get_file(shared_box.id, path)
    _one_line(info.value)


def test_a_symlink_to_a_host_path_is_resolved_inside(env, shared_box, host_secret):
    path, secret = host_secret
    shared_box.ok("bash", f"ln -sfn {path} link-to-host && ln -sfn /proc/1/root{path} via-proc")
    for link in ("link-to-host", "via-proc"):
        with pytest.raises(SandboxError, match="no such file"):
            env.manager.get_file(shared_box.id, link)
    shared_box.ok("bash", "rm -f link-to-host via-proc")


def test_a_symlink_swapped_during_downloads_never_yields_a_host_file(env, shared_box, host_secret):
    path, secret = host_secret
    shared_box.ok("bash", "echo sandbox-data > data.txt")
    swapper = (
        "( while :; do ln -sfn data.txt swap; ln -sfn " + str(path) + " swap;"
        " ln -sfn /etc/hostname swap; done ) >/dev/null 2>&1 &"
    )
    shared_box.run("bash", swapper, session="swapper")
    seen: set[bytes] = set()
    errors: list[str] = []

    def download() -> None:
        for _ in range(100):
            try:
                seen.add(env.manager.get_file(shared_box.id, "swap"))
            except SandboxError as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=download) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with env.client(shared_box.record) as client:
        client.close_session("swapper")
    assert not any(secret.encode() in data for data in seen), seen
    assert seen <= {b"sandbox-data\n", b"sandbox\n"}, seen
    assert len(seen) + bool(errors) >= 2, "the link never changed under the downloads"
    assert all("no such file" in e or "cannot read" in e for e in errors), errors[:3]
    shared_box.assert_settles()


#: Where an archive is allowed, and why it cannot slip: the docker agent volume's tar and a
#: docker template's package tar are built by the host from files it made (the agent package;
#: wheels pip unpacked) and only ever written into the engine (``put_archive``), never read
#: back or unpacked by the host (checked below).
ARCHIVE_WRITERS = {"nexus_kernel/providers/docker_agent.py",
                   "nexus_kernel/providers/docker_template.py"}
#: Code that runs inside a sandbox (the agent): what it unpacks stays in that sandbox; its
#: fork import checks its members itself (test_a_fork_archive_cannot_write_through_a_symlink).
IN_SANDBOX = ROOT / "nexus_kernel" / "agent" / "sandbox_agent"


def test_no_archive_is_extracted_on_the_file_path():
    """Tar-slip applies where archives are unpacked; files move one by one through the agent.
    Should an archive path appear (``put_archive``, ``tarfile``, ``extractall``...), this test
    fails so that a tar-slip test is written with it."""
    sources = [p for p in [*(ROOT / "nexus_kernel").rglob("*.py"), *(ROOT / "magics").rglob("*.py")]
               if IN_SANDBOX not in p.parents]
    pattern = re.compile(r"\b(tarfile|zipfile|put_archive|get_archive|extractall|unpack_archive)\b")
    hits = {f"{p.relative_to(ROOT)}" for p in sources if pattern.search(p.read_text())}
    assert hits <= ARCHIVE_WRITERS, hits - ARCHIVE_WRITERS
    reading = re.compile(r"\b(get_archive|extractall|extract|unpack_archive|zipfile)\b|mode=\"r")
    for name in ARCHIVE_WRITERS:
        assert not reading.search((ROOT / name).read_text()), f"{name} reads an archive"


def test_the_agent_volume_archive_holds_only_the_agent_package():
    """What the docker provider writes into the agent's volume: the package's files under
    one relative folder, regular files and directories only, root's and world-readable."""
    import io
    import tarfile

    from nexus_kernel.agent.deploy import PACKAGE_NAME
    from nexus_kernel.providers import docker_agent

    with tarfile.open(fileobj=io.BytesIO(docker_agent._archive(docker_agent.agent_version()))) as tar:
        members = tar.getmembers()
    assert members and all(m.isfile() or m.isdir() for m in members)
    for member in members:
        parts = Path(member.name).parts
        assert parts[0] == PACKAGE_NAME and ".." not in parts and not member.name.startswith("/")
        assert (member.uid, member.gid) == (0, 0) and member.mode in (0o644, 0o755)


def test_a_fork_archive_cannot_write_through_a_symlink(tmp_path: Path):
    """A fork's archive comes out of a sandbox: a symlink to anywhere and then a file under
    it would write where the link points (the sandbox's python 3.11.2 has no tarfile data
    filter). The agent refuses such an archive, and ``..`` names, before unpacking."""
    import io
    import tarfile

    from nexus_kernel.agent.sandbox_agent.snapshots import _check_members
    from nexus_kernel.agent.sandbox_agent.wire import Invalid

    def members(*entries: tuple[str, bytes | str | None]) -> list[tarfile.TarInfo]:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, content in entries:
                info = tarfile.TarInfo(name)
                if isinstance(content, str):  # a symlink to content
                    info.type, info.linkname = tarfile.SYMTYPE, content
                    tar.addfile(info)
                else:
                    info.size = len(content or b"")
                    tar.addfile(info, io.BytesIO(content or b""))
        buffer.seek(0)
        with tarfile.open(fileobj=buffer) as tar:
            return tar.getmembers()

    _check_members(members(("home/a.txt", b"x"), ("home/venv/python", "/usr/bin/python3")))
    for bad in (
        members(("home/link", str(tmp_path)), ("home/link/owned", b"x")),
        members(("home/./link", "/"), ("home/link/etc/x", b"x")),
        members(("home/../../escape", b"x")),
        members(("/abs", b"x")),
    ):
        with pytest.raises(Invalid, match="bad member"):
            _check_members(bad)
