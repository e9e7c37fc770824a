#!/usr/bin/env bash
# Install what nexus-kernel needs on a Debian/Ubuntu host, with apt (through sudo when not
# root): python3 and python3-venv (the project lives in its own virtual environment, see
# scripts/install-venv.sh), bubblewrap for the local provider; with --docker, the Docker
# engine, debootstrap and jq for the offline sandbox image and the tests; with --browser,
# headless Chromium and its driver for the browser tests of sandbox output.
# Installs only what is missing; prints what it installs.
set -euo pipefail
want_docker=0 want_browser=0
for arg in "$@"; do
  case "$arg" in
    --docker) want_docker=1 ;;
    --browser) want_browser=1 ;;
    *) echo "install-host.sh: unknown option $arg (use --docker, --browser)" >&2; exit 2 ;;
  esac
done
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-host.sh: run as root, or install sudo" >&2; exit 1; }
  sudo=sudo
else
  sudo=
fi
apt_install() {
  echo "==> apt-get install $*"
  $sudo apt-get update -qq
  # env: sudo drops DEBIAN_FRONTEND from the caller's environment
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

packages=()
if ! command -v python3 >/dev/null; then
  packages+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian and Ubuntu move ensurepip (what `python3 -m venv` needs) into python3-venv.
  packages+=(python3-venv)
fi
command -v bwrap >/dev/null || packages+=(bubblewrap)
if ((want_docker)); then
  command -v dockerd >/dev/null || packages+=(docker.io)
  command -v debootstrap >/dev/null || packages+=(debootstrap)
  command -v jq >/dev/null || packages+=(jq)
fi
if ((want_browser)); then
  command -v chromium >/dev/null || packages+=(chromium)
  command -v chromedriver >/dev/null || packages+=(chromium-driver)
fi
if ((${#packages[@]})); then
  apt_install "${packages[@]}"
fi
