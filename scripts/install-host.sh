#!/usr/bin/env bash
# Install what nexus-kernel needs on a Debian/Ubuntu host, with apt (through sudo when not
# root): python3 and python3-venv (the project lives in its own virtual environment, see
# scripts/install-venv.sh), bubblewrap for the local provider (and slirp4netns for its
# sandboxes with network on) and nodejs for its JavaScript
# sandboxes (they run the host's node, as Python ones run /usr/bin/python3); with --docker, the Docker
# engine, debootstrap and jq for the offline sandbox image and the tests, and gVisor's runsc
# where apt has it (Debian >= 12: the docker provider's runtime runsc, registered with dockerd
# by scripts/start-dockerd.sh); with --browser,
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
# user-mode networking for local sandboxes created with network on (a netns of their own)
command -v slirp4netns >/dev/null || packages+=(slirp4netns)
command -v node >/dev/null || packages+=(nodejs)
if ((want_docker)); then
  command -v dockerd >/dev/null || packages+=(docker.io)
  command -v debootstrap >/dev/null || packages+=(debootstrap)
  command -v jq >/dev/null || packages+=(jq)
  if ! command -v runsc >/dev/null; then
    # a fresh machine may have no package lists yet
    apt-cache show runsc >/dev/null 2>&1 || $sudo apt-get update -qq
    if apt-cache show runsc >/dev/null 2>&1; then
      packages+=(runsc)
    else
      echo "install-host.sh: apt has no runsc here: install gVisor by hand for the docker runtime runsc (gvisor.dev/docs/user_guide/install)" >&2
    fi
  fi
fi
if ((want_browser)); then
  if ! grep -qx 'ID=ubuntu' /etc/os-release 2>/dev/null; then
    command -v chromium >/dev/null || packages+=(chromium)
    command -v chromedriver >/dev/null || packages+=(chromium-driver)
  else  # Ubuntu: Chromium is a snap, installed through these transitional packages (needs snapd)
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null || packages+=(chromium-browser)
    command -v chromedriver >/dev/null || packages+=(chromium-chromedriver)
  fi
fi
if ((${#packages[@]})); then
  apt_install "${packages[@]}"
fi

# Ubuntu >= 23.10 lets unprivileged processes create user namespaces only under an AppArmor
# profile that allows it; the local provider runs bubblewrap unprivileged (as root too: as
# uid 65534). Ubuntu ships such a profile for bwrap (loaded by default from 25.04; on 24.04
# in apparmor-profiles): load it when bubblewrap is refused. The probe is the provider's own.
probe=(bwrap --unshare-user --unshare-pid --unshare-net --as-pid-1 --ro-bind / / true)
[[ $(id -u) -eq 0 ]] && probe=(setpriv --reuid=65534 --regid=65534 --clear-groups "${probe[@]}")
if [[ "$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns 2>/dev/null)" == 1 ]] \
    && ! "${probe[@]}" 2>/dev/null; then
  profile=/usr/share/apparmor/extra-profiles/bwrap-userns-restrict
  [[ -f /etc/apparmor.d/bwrap-userns-restrict || -f $profile ]] || apt_install apparmor-profiles
  if [[ ! -f /etc/apparmor.d/bwrap-userns-restrict ]]; then
    [[ -f $profile ]] || { echo "install-host.sh: AppArmor blocks bubblewrap's user namespaces and $profile is missing: see the local provider's hint (sysctl kernel.apparmor_restrict_unprivileged_userns=0)" >&2; exit 1; }
    echo "==> AppArmor: loading Ubuntu's bwrap-userns-restrict profile (bubblewrap may create user namespaces; what runs inside it may not)"
    $sudo install -m 0644 "$profile" /etc/apparmor.d/bwrap-userns-restrict
  fi
  $sudo apparmor_parser -r /etc/apparmor.d/bwrap-userns-restrict
  "${probe[@]}" 2>/dev/null || echo "install-host.sh: warning: bubblewrap still cannot create user namespaces; the local provider will say why" >&2
fi
