#!/usr/bin/env bash
# The cloud SDKs at both ends of the ranges pyproject.toml allows (extras [e2b] and [modal]):
# for "lowest" and "highest", a throw-away virtual environment gets the package's own
# dependencies, pytest and each SDK at that end of its range, then runs the tests that bind
# the providers and the fakes to the SDK (signatures, defaults, fake-SDK provider tests,
# mutation checks; no network, no sandbox image). A range that admits an SDK the providers
# do not work with fails here.
#
#   bash scripts/test-sdk-range.sh [lowest|highest]...     # default: both
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${NEXUS_HOST_PYTHON:-python3}"
ends=("$@")
((${#ends[@]})) || ends=(lowest highest)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# "name>=low,<high" of each cloud extra, from pyproject.toml
mapfile -t specs < <("$PYTHON" - <<'EOF'
import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
for name in ("e2b", "modal"):
    print(extras[name][0])
EOF
)

for end in "${ends[@]}"; do
  venv="$work/$end"
  pins=()
  for spec in "${specs[@]}"; do
    if [[ $end == lowest ]]; then
      low="${spec#*>=}"; low="${low%%,*}"
      pins+=("${spec%%>=*}==$low")
    elif [[ $end == highest ]]; then
      pins+=("$spec")
    else
      echo "test-sdk-range: unknown end '$end' (lowest or highest)" >&2; exit 2
    fi
  done
  echo "==> $end: ${pins[*]}"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q -e . pytest pytest-timeout "${pins[@]}"
  "$venv/bin/python" -m pip list 2>/dev/null | grep -Ei '^(e2b|modal) '
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/test_sdk_fakes_match.py tests/test_cloud_providers.py tests/test_cloud_mutations.py
done
