#!/usr/bin/env bash
# Install what nexus-kernel needs on a Debian/Ubuntu host: bubblewrap for the local provider;
# with --docker, the Docker engine and debootstrap for the offline sandbox image; with
# --browser, headless Chromium and its driver for the browser tests of sandbox output.
set -euo pipefail
want_docker=0 want_browser=0
for arg in "$@"; do
  case "$arg" in
    --docker) want_docker=1 ;;
    --browser) want_browser=1 ;;
    *) echo "install-host.sh: unknown option $arg (use --docker, --browser)" >&2; exit 2 ;;
  esac
done
packages=()
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
  echo "==> apt-get install ${packages[*]}"
  if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi
