#!/usr/bin/env bash
# One command from a fresh machine to a real sandbox: install, then run Python, JavaScript
# and Bash in a bubblewrap-jailed sandbox through the CLI and the Python API.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-host.sh
python3 -m pip install -q -e .
python3 scripts/quickstart.py
