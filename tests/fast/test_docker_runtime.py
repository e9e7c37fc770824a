"""Which engine runtime a docker sandbox gets (providers/docker_runtime.py), from the engine's
``docker info`` as docker.io 20.10 reports it with scripts/start-dockerd.sh's registration,
and ``create --runtime``'s usage errors (no engine needed)."""

from __future__ import annotations

import pytest

from nexus_kernel import cli
from nexus_kernel.errors import ProviderError
from nexus_kernel.providers.docker_runtime import is_gvisor, pick_runtime

INFO = {
    "DefaultRuntime": "runc",
    "Runtimes": {
        "runc": {"path": "runc"},
        "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]},
        "runsc-net": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]},
    },
}


def test_the_runtime_and_its_network_variant():
    assert pick_runtime(INFO, "", network=True) == "runc"
    assert pick_runtime(INFO, "runsc", network=False) == "runsc"
    assert pick_runtime(INFO, "runsc", network=True) == "runsc-net"
    assert pick_runtime(INFO, "runsc-net", network=False) == "runsc-net"
    assert is_gvisor(INFO, "runsc-net") and not is_gvisor(INFO, "runc")


def test_an_unknown_runtime_names_the_engines_and_how_to_register_runsc():
    with pytest.raises(ProviderError) as info:
        pick_runtime(INFO, "kata", network=False)
    assert str(info.value).startswith("the Docker engine has no runtime 'kata' "
                                      "(it has: runc, runsc, runsc-net)")
    assert "apt-get install runsc" in str(info.value) and "\n" not in str(info.value)


def test_network_on_without_a_network_variant_fails_in_one_line():
    engine = {"Runtimes": {"runc": {}, "runsc": INFO["Runtimes"]["runsc"]}}
    assert pick_runtime(engine, "runsc", network=False) == "runsc"
    with pytest.raises(ProviderError, match="needs its network variant 'runsc-net'"):
        pick_runtime(engine, "runsc", network=True)


@pytest.mark.parametrize(("argv", "message"), [
    (["--provider", "local", "--runtime", "runsc"], "--runtime is for the docker provider only"),
    (["--provider", "docker", "--runtime", "run sc"], "is not a runtime name"),
])
def test_create_runtime_usage_errors(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("NEXUS_HOME", str(tmp_path))
    assert cli.main(["sandbox", "create", "x", *argv]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
