#!/usr/bin/env bash
# One command from a fresh machine to a passing test suite: host packages (bubblewrap, the
# Docker engine, headless Chromium), the offline sandbox image, the Python package with its
# test extras in the project's virtual environment .venv, the default sandbox environment
# (template "datascience") and CrewAI's test environment (both for the whole suite; a test
# selection builds them when it needs them), then ruff and pytest from it.
#
#   bash scripts/test.sh [PYTEST_ARGS...]
#   bash scripts/test.sh --install-only      # everything up to, not including, ruff and pytest
#
# As root or as a user with sudo: apt, dockerd and debootstrap run through sudo; a user who
# cannot reach the Docker engine is added to the docker group (Docker's own post-install
# step) and the tests run under that group.
set -euo pipefail
cd "$(dirname "$0")/.."
install_only=0
if [[ "${1:-}" == --install-only ]]; then
  install_only=1
  shift
fi
VENV="${NEXUS_VENV:-$PWD/.venv}"
if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi

bash scripts/install-host.sh --docker --browser
$sudo bash scripts/start-dockerd.sh
NEXUS_VENV="$VENV" bash scripts/install-venv.sh '.[all,test]'
# CrewAI's own environment (tests/crewai_env.py: crewai pins mcp<2), for the whole suite only
# (a selection builds it when it needs it): in the background, beside the image and template
# builds, which mostly wait on the disk and the network.
TEST_CACHE="${NEXUS_TEST_CACHE:-$PWD/.pytest_cache/nexus-test}"
crew_pid=
if (($# == 0)); then
  crew_log="$(mktemp)"
  echo "==> building CrewAI's environment for the tests in the background (log: $crew_log)"
  NEXUS_TEST_CACHE="$TEST_CACHE" "$VENV/bin/python" -m tests.crewai_env >"$crew_log" 2>&1 &
  crew_pid=$!
fi
# the image's data-science layer is fetched by the environment's pip (the system python3
# may have none), with the user's pip settings (index, CA bundle, proxy: sudo drops them;
# not the cache directory, which root would fill with files the user cannot write)
pip_env=()
for var in $(compgen -e); do
  case "$var" in
    PIP_CACHE_DIR) ;;
    PIP_*|SSL_CERT_FILE|REQUESTS_CA_BUNDLE|https_proxy|HTTPS_PROXY|http_proxy|HTTP_PROXY|no_proxy|NO_PROXY)
      pip_env+=("$var=${!var}") ;;
  esac
done
$sudo env "${pip_env[@]}" NEXUS_HOST_PYTHON="$VENV/bin/python" bash scripts/build-image.sh
# The default sandbox environment, in the tests' template cache (tests/conftest.py): built
# once (~30 s), skipped when built with the same recipe; pip's wheel cache serves rebuilds.
# For the whole suite only: a selection builds it when a selected test needs it.
if (($# == 0)); then
  echo "==> building the default sandbox environment 'datascience' for the tests"
  NEXUS_HOME="$TEST_CACHE" "$VENV/bin/nexus" template create datascience
fi
if [[ -n "$crew_pid" ]] && ! wait "$crew_pid"; then
  tail -20 "$crew_log" >&2
  echo "test.sh: CrewAI's environment could not be built (above)" >&2
  exit 1
fi

as_docker=()
if [[ $(id -u) -ne 0 ]] && ! docker info >/dev/null 2>&1; then
  user="$(id -un)"
  if ! id -nG "$user" | tr ' ' '\n' | grep -qx docker; then
    echo "==> adding $user to the docker group (undo: sudo gpasswd -d $user docker)"
    sudo usermod -aG docker "$user"
  fi
  as_docker=(sg docker -c)   # the new group counts only in new logins; sg applies it now
fi
NEXUS_VENV="$VENV" bash scripts/install-venv.sh --where
((install_only)) && exit 0

# The tests call `python3`, `nexus` and `jupyter` by name: the environment's come first.
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
export NEXUS_REQUIRE_DOCKER=1 NEXUS_REQUIRE_BROWSER=1
python3 -m ruff check .
if ((${#as_docker[@]})); then
  exec "${as_docker[@]}" "$(printf '%q ' python3 -m pytest -q -p no:cacheprovider "$@")"
fi
exec python3 -m pytest -q -p no:cacheprovider "$@"
