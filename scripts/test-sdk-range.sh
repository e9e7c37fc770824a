#!/usr/bin/env bash
# The cloud SDKs at both ends of the ranges pyproject.toml allows (extras [e2b] and [modal]):
# a throw-away virtual environment gets the package's own dependencies, pytest and each SDK
# at the lowest end of its range, and runs the tests that bind the providers and the fakes
# to the SDK (signatures, defaults, fake-SDK provider tests, mutation checks; no network, no
# sandbox image); then the SDKs move to the highest end (their dependencies upgraded with
# them) and the tests run again. A range that admits an SDK the providers do not work with
# fails here. An end that resolves to versions already tested is not run twice.
#
#   bash scripts/test-sdk-range.sh [lowest|highest]...     # default: both
#
# scripts/test.sh --sdk-range (CI: .ci/run) runs it. About 2 minutes per end here, most of
# it pip (its cache is used: PIP_CACHE_DIR or the user's).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${NEXUS_HOST_PYTHON:-python3}"
ends=("$@")
((${#ends[@]})) || ends=(lowest highest)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
trap 'exit 143' TERM INT  # a timeout's signal still removes the environment

# "name>=low,<high" of each cloud extra, from pyproject.toml
mapfile -t specs < <("$PYTHON" - <<'EOF'
import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
for name in ("e2b", "modal"):
    print(extras[name][0])
EOF
)

# "name==version" of what pip would install for the given specs (resolution only)
resolve() {
  "$PYTHON" -m pip install -q --dry-run --ignore-installed --no-deps --report "$work/report.json" \
    "$@" >&2
  "$PYTHON" - "$work/report.json" <<'EOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(f"{item['metadata']['name']}=={item['metadata']['version']}")
EOF
}

venv="$work/venv"
tested=""
for end in "${ends[@]}"; do
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
  mapfile -t pins < <(resolve "${pins[@]}" | sort)
  if ((${#pins[@]} != ${#specs[@]})); then
    echo "test-sdk-range: pip could not resolve the $end end of ${specs[*]}" >&2; exit 1
  fi
  if [[ " $tested " == *" ${pins[*]} "* ]]; then
    echo "==> $end: ${pins[*]}: already tested"
    continue
  fi
  echo "==> $end: ${pins[*]}"
  if [[ ! -d $venv ]]; then
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q -e . pytest pytest-timeout "${pins[@]}"
  else  # the SDKs and what they need move to this end
    "$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager "${pins[@]}"
  fi
  "$venv/bin/python" -m pip check
  "$venv/bin/python" -m pip list 2>/dev/null | grep -Ei '^(e2b|modal) '
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/test_sdk_fakes_match.py tests/test_cloud_providers.py tests/test_cloud_mutations.py
  tested+=" ${pins[*]} "
done
