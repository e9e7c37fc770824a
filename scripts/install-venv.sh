#!/usr/bin/env bash
# Install nexus-kernel into the project's own virtual environment, never into the system
# Python (Debian 12 and Ubuntu >= 23.04 refuse that: externally-managed-environment).
#
#   bash scripts/install-venv.sh [PIP_TARGET]     # default PIP_TARGET: .   (tests: '.[all,test]')
#   bash scripts/install-venv.sh --where          # only say where things are and how to remove them
#
# 1. $NEXUS_VENV (default: .venv in the repository) is created with `python3 -m venv` when it
#    is missing or broken. Stock Debian/Ubuntu need the python3-venv package for that (it
#    holds ensurepip); scripts/install-host.sh installs it.
# 2. `pip install -e PIP_TARGET` into it: `nexus`, `jupyter` and friends land in .venv/bin.
# 3. `nexus kernel install --sys-prefix`: the "Nexus Sandbox" kernelspec goes into
#    .venv/share/jupyter/kernels (an editable install places no data files, so without this
#    `jupyter kernelspec list` would not show the kernel).
# Run as the user who will use nexus (root or not); it needs no root itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="${NEXUS_VENV:-$ROOT/.venv}"
say() { echo "==> $*"; }
die() { echo "install-venv.sh: error: $*" >&2; exit 1; }

where() {
    local state="${NEXUS_HOME:-$HOME/.nexus}" kernels="$VENV/share/jupyter/kernels/nexus-sandbox"
    cat <<EOF

nexus-kernel is installed in the virtual environment $VENV
  use it:   . $VENV/bin/activate        (then: nexus --help, jupyter kernelspec list)
            or call $VENV/bin/nexus directly
  Jupyter:  kernel "Nexus Sandbox" in $kernels
            (listed by this environment's jupyter; for a Jupyter elsewhere:
             $VENV/bin/nexus kernel install --user)
  state:    $state (sandbox records and files; NEXUS_HOME)
  remove:   rm -rf $VENV $state
            (after 'nexus kernel install --user' also ~/.local/share/jupyter/kernels/nexus-sandbox)
EOF
}

if [[ "${1:-}" == --where ]]; then
    where
    exit 0
fi
target="${1:-.}"

# A usable environment: its python runs, is >= 3.10 and has pip.
venv_ok() {
    [[ -x "$VENV/bin/python" ]] \
        && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
        && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

if ! venv_ok; then
    command -v python3 >/dev/null || die "python3 is missing: run bash scripts/install-host.sh (or apt-get install python3)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "nexus-kernel needs Python >= 3.10; python3 is $(python3 -V 2>&1)"
    python3 -c 'import ensurepip, venv' 2>/dev/null \
        || die "$(command -v python3) cannot make a virtual environment (no ensurepip): apt-get install python3-venv"
    if [[ -e "$VENV" ]]; then
        # Left half-made (e.g. by a venv attempt before python3-venv was installed) or its
        # interpreter is gone: start again, but only over something that is a venv.
        [[ -f "$VENV/pyvenv.cfg" ]] || die "$VENV exists and is not a virtual environment; move it away or set NEXUS_VENV"
        say "recreating the broken virtual environment $VENV"
        rm -rf "$VENV"
    fi
    say "python3 -m venv $VENV   ($(python3 -V 2>&1) at $(command -v python3))"
    python3 -m venv "$VENV"
fi
[[ -w "$VENV" ]] || die "$VENV is not writable by $(id -un) (made by another user?): remove it or set NEXUS_VENV"

say "pip install -e '$target' into $VENV (the first time takes a minute)"
"$VENV/bin/python" -m pip install -q -e "$target"
"$VENV/bin/nexus" kernel install --sys-prefix
