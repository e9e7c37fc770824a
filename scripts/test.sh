#!/usr/bin/env bash
# One command from a fresh machine to a passing test suite: host packages, the Docker engine
# and the offline sandbox image, the Python package with its test extras, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-host.sh --docker
bash scripts/start-dockerd.sh
bash scripts/build-image.sh
python3 -m pip install -q -e '.[all,test]'
export NEXUS_REQUIRE_DOCKER=1
python3 -m ruff check .
python3 -m pytest -q -p no:cacheprovider "$@"
