"""Docker templates against a real engine: `nexus template create NAME --provider docker`
builds an image for the base image's own python3, sandboxes of it import the packages with
no network, `list` shows it, `remove` removes it (not while a sandbox runs it)."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import tarfile
from collections.abc import Iterator

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.errors import SandboxError

from .conftest import docker_not_ready, docker_problem, nexus

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def engine() -> Iterator[object]:
    """The engine's low-level docker-py client; skips (fails in CI) without docker."""
    problem = docker_problem(Settings.load())
    if problem:
        docker_not_ready(problem)
    import docker

    client = docker.from_env()
    yield client.api
    client.close()


@pytest.fixture
def name(engine) -> Iterator[str]:
    """A fresh template name (the engine is shared); its image is removed afterwards."""
    import docker

    name = "mypkgs-" + secrets.token_hex(4)
    yield name
    with contextlib.suppress(docker.errors.NotFound):
        engine.remove_image(f"nexus-template/{name}:latest", force=True)


def _listed(name: str) -> dict | None:
    out = nexus("template", "list", "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    return next((t for t in json.loads(out.stdout)["templates"] if t["name"] == name), None)


def test_requests_template_runs_offline_is_listed_and_removed(nexus_home, nx, name, engine):
    out = nexus("template", "create", name, "--provider", "docker", "--pip", "requests",
                timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Successfully installed" in out.stderr and "docker: committing" in out.stderr
    assert f"image nexus-template/{name}:latest" in out.stdout

    sb = nx.sandbox_create("tpl", template_id=name, provider="docker")["sandbox_id"]
    code = ("import requests\nprint(requests.__file__)\n"
            "try:\n    requests.get('http://1.1.1.1', timeout=3)\n"
            "except requests.ConnectionError:\n    print('no network')\n")
    result = nx.sandbox_run(sb, "python", code)
    assert result["stdout"] == "/opt/nexus-template/lib/requests/__init__.py\nno network\n", result

    listed = _listed(name)
    assert listed["provider"] == "docker" and listed["size_mb"] > 0
    assert listed["packages"] == ["requests"] and "requests" in listed["versions"]
    assert "urllib3" in listed["versions"]  # dependencies are recorded too
    table = nexus("template", "list").stdout
    assert any(line.split()[:2] == [name, "docker"] and "requests==" in line
               for line in table.splitlines()), table

    busy = nexus("template", "remove", name, "--provider", "docker")
    assert busy.returncode == 1 and "stop those sandboxes first" in busy.stderr, busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
    nx.sandbox_stop(sb)
    out = nexus("template", "remove", name)
    assert out.returncode == 0 and "(docker)" in out.stdout, out.stderr
    assert _listed(name) is None and not engine.images(name=f"nexus-template/{name}")


def test_from_a_foreign_image_with_a_local_wheel(nexus_home, nx, name, foreign_image,
                                                 tiny_package):
    create = ("template", "create", name, "--provider", "docker", "--from", foreign_image,
              "--pip", str(tiny_package), "--json")
    out = nexus(*create, timeout=300)
    assert out.returncode == 0, out.stderr
    meta = json.loads(out.stdout)
    assert meta["base"] == foreign_image and meta["versions"] == {"tinypkg": "1.0"}
    again = nexus(*create, timeout=120)
    assert json.loads(again.stdout)["cached"] is True, again.stderr

    sb = nx.sandbox_create("foreign-tpl", template_id=name, provider="docker")["sandbox_id"]
    code = "import tinypkg, os; print(tinypkg.ANSWER, os.path.exists('/opt/nexus-agent'))"
    assert nx.sandbox_run(sb, "python", code)["stdout"] == "42 True\n"
    shell = nx.sandbox_run(sb, "bash", "touch /opt/nexus-template/lib/x 2>&1; echo $?")
    assert shell["stdout"].strip().endswith("1")  # read-only, as the rest of the root


def test_bad_templates_fail_in_one_line(nexus_home, nx, engine):
    with pytest.raises(SandboxError) as info:
        nx.sandbox_create("x", template_id="no-such-template-or-image", provider="docker")
    assert "nexus template create" in str(info.value) and "\n" not in str(info.value)

    for provider, hint in (("e2b", "e2b template build"), ("modal", "registry")):
        out = nexus("template", "create", "x", "--provider", provider, "--pip", "six")
        assert out.returncode == 2 and hint in out.stderr, out.stderr
    out = nexus("template", "create", "x", "--from", "debian", "--pip", "six")
    assert out.returncode == 2 and "--provider docker" in out.stderr

    data = io.BytesIO()  # an image of one text file: no python3
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    image = "nexus-nopython-tpl:" + secrets.token_hex(4)
    engine.import_image_from_data(data.getvalue(), repository=image.split(":")[0],
                                  tag=image.split(":")[1])
    try:
        out = nexus("template", "create", "x", "--provider", "docker", "--from", image,
                    "--pip", "six")
        last = out.stderr.strip().splitlines()[-1]  # after the progress lines: one error line
        assert out.returncode == 1 and last.startswith("nexus: ") and "has no python3" in last
        assert not engine.containers(all=True, filters={"ancestor": image})  # probe removed
    finally:
        engine.remove_image(image, force=True)


def test_wheel_tags_and_labels_are_read_defensively():
    from nexus_kernel.errors import ProviderError
    from nexus_kernel.providers import docker_template as dt

    glibc = dt.platforms({"machine": "x86_64", "glibc": "2.36", "musl": ""})
    assert glibc[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in glibc
    assert glibc[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    musl = dt.platforms({"machine": "aarch64", "glibc": "", "musl": "1.2"})
    assert musl == ["musllinux_1_2_aarch64", "musllinux_1_1_aarch64", "musllinux_1_0_aarch64"]
    with pytest.raises(ProviderError, match="neither glibc nor musl"):
        dt.platforms({"machine": "x86_64", "glibc": "", "musl": ""})
    target = dt.pip_target({"version": [3, 13], "free_threaded": True, "platforms": glibc[:1]})
    assert target[:6] == ["--python-version", "3.13", "--implementation", "cp", "--abi", "cp313t"]
    # anyone can label an image nexus.template: odd metadata never breaks `template list`
    hostile = {"nexus.template": "x", "nexus.template.meta": '{"versions": [1], "size_mb": "9"}'}
    meta = dt._meta(hostile, 2**20, "nexus-template/x:latest")
    assert meta["versions"] == {} and meta["packages"] == [] and meta["size_mb"] == 1.0


def test_a_flooding_base_image_is_read_bounded(engine, monkeypatch):
    """A base image's python3 may print without end: the engine keeps a capped log of the
    probe and the host reads at most PROBE_MAX bytes of it, then fails in one line."""
    from nexus_kernel.errors import ProviderError
    from nexus_kernel.providers import docker_template as dt

    monkeypatch.setattr(dt, "_PROBE", "import sys\nfor _ in range(32):\n"
                                      "    sys.stdout.write('x' * 2**20 + '\\n')\n")
    read: list[int] = []

    class Counting:  # the engine's API, counting the log bytes the host receives
        def __getattr__(self, attr):
            return getattr(engine, attr)

        def logs(self, *args, **kwargs):
            out = engine.logs(*args, **kwargs)
            if isinstance(out, bytes):
                read.append(len(out))
                return out

            class Stream:
                def __iter__(self):
                    for chunk in out:
                        read.append(len(chunk))
                        yield chunk

                def close(self):
                    out.close()

            return Stream()

    with pytest.raises(ProviderError, match="did not report its version") as info:
        dt.probe(Counting(), "nexus-sandbox:latest")
    assert "\n" not in str(info.value)
    assert sum(read) <= dt.PROBE_MAX + 2**20, sum(read)  # a chunk at most past the limit
    config = dt._confined(engine)["LogConfig"]
    assert config["Config"]["max-size"] == dt.BUILD_LOG_CAP
