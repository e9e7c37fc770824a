#!/usr/bin/env bash
# One command from a fresh machine to a real sandbox: install, then run Python, JavaScript
# and Bash in a bubblewrap-jailed sandbox through the CLI and the Python API.
#
#   bash scripts/demo.sh [--install-only]
#
# Host packages with apt (scripts/install-host.sh: python3-venv, bubblewrap; through sudo
# when not root), then nexus-kernel into the project's virtual environment .venv with the
# "Nexus Sandbox" kernelspec (scripts/install-venv.sh), then the default sandbox environment
# (`nexus template create datascience`), then the demo (scripts/quickstart.py)
# with that environment's python. --install-only stops before the demo (for places where
# bubblewrap cannot make namespaces, such as a default Docker container).
# Ends by saying where everything went and how to remove it.
set -euo pipefail
cd "$(dirname "$0")/.."
install_only=0
for arg in "$@"; do
  case "$arg" in
    --install-only) install_only=1 ;;
    *) echo "demo.sh: unknown option $arg (use --install-only)" >&2; exit 2 ;;
  esac
done
VENV="${NEXUS_VENV:-$PWD/.venv}"
bash scripts/install-host.sh
NEXUS_VENV="$VENV" bash scripts/install-venv.sh .
# The default sandbox environment (local sandboxes created with no template get it): once,
# ~30 s and ~470 MB with PyPI reachable; skipped when already built with the same recipe.
echo "==> building the default sandbox environment 'datascience' (IPython, numpy, pandas," \
     "matplotlib, seaborn, scipy, scikit-learn) in ${NEXUS_HOME:-$HOME/.nexus}/templates"
"$VENV/bin/nexus" template create datascience
if ((!install_only)); then
  "$VENV/bin/python" scripts/quickstart.py
fi
NEXUS_VENV="$VENV" bash scripts/install-venv.sh --where
