#!/usr/bin/env bash
# Install what nexus-kernel needs on a Debian/Ubuntu host: bubblewrap for the local provider
# and, with --docker, the Docker engine and debootstrap for the offline sandbox image.
set -euo pipefail
packages=()
command -v bwrap >/dev/null || packages+=(bubblewrap)
if [[ "${1:-}" == "--docker" ]]; then
  command -v dockerd >/dev/null || packages+=(docker.io)
  command -v debootstrap >/dev/null || packages+=(debootstrap)
  command -v jq >/dev/null || packages+=(jq)
fi
if ((${#packages[@]})); then
  echo "==> apt-get install ${packages[*]}"
  if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi
