#!/usr/bin/env bash
# One command from a fresh machine to a passing test suite: host packages (bubblewrap, the
# Docker engine, headless Chromium), the offline sandbox image, the Python package with its
# test extras, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-host.sh --docker --browser
bash scripts/start-dockerd.sh
bash scripts/build-image.sh
python3 -m pip install -q -e '.[all,test]'
export NEXUS_REQUIRE_DOCKER=1 NEXUS_REQUIRE_BROWSER=1
python3 -m ruff check .
python3 -m pytest -q -p no:cacheprovider "$@"
