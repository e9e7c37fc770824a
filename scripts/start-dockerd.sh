#!/usr/bin/env bash
# Start the Docker engine if it is not already answering, and wait until it does.
#
#   bash scripts/start-dockerd.sh
#
# Idempotent: when `docker info` already works it does nothing. Otherwise it starts
# `dockerd` in the background (log: $NEXUS_DOCKERD_LOG, default /var/log/dockerd.log),
# choosing a storage driver that works on this machine (overlay2 when the kernel can mount
# overlayfs on /var/lib/docker, else vfs), and waits up to $NEXUS_DOCKERD_WAIT seconds
# (default 60). Exits non-zero with one clear line when the engine cannot be started.
# Override the driver with NEXUS_DOCKER_STORAGE_DRIVER=overlay2|vfs|...
#
# When gVisor's runsc is installed it registers two runtimes in $NEXUS_DOCKER_CONFIG (default
# /etc/docker/daemon.json, other keys kept) before dockerd starts: runsc (--network=none) and
# its network variant runsc-net (--network=host, in the container's own network namespace:
# gVisor's own stack cannot start on recent kernels); see nexus_kernel/providers/docker_runtime.py.
# An engine already running reloads them on SIGHUP (its containers keep running).
set -euo pipefail

WAIT="${NEXUS_DOCKERD_WAIT:-60}"
LOG="${NEXUS_DOCKERD_LOG:-/var/log/dockerd.log}"
DATA_ROOT="${NEXUS_DOCKER_DATA_ROOT:-/var/lib/docker}"

say() { echo "start-dockerd: $*" >&2; }
die() { say "error: $*"; exit 1; }

engine_up() { docker info >/dev/null 2>&1; }

CONFIG="${NEXUS_DOCKER_CONFIG:-/etc/docker/daemon.json}"
# Add runsc and runsc-net to the daemon's runtimes; prints "changed" when the file changed.
register_runsc() {
    local runsc
    runsc="$(command -v runsc 2>/dev/null)" || return 0
    mkdir -p "$(dirname "$CONFIG")"
    python3 - "$CONFIG" "$runsc" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
config = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
wanted = {"runsc": {"path": runsc, "runtimeArgs": ["--network=none"]},
          "runsc-net": {"path": runsc, "runtimeArgs": ["--network=host"]}}
runtimes = config.setdefault("runtimes", {})
if any(runtimes.get(name) != spec for name, spec in wanted.items()):
    runtimes.update(wanted)
    with open(path + ".tmp", "w") as out:
        json.dump(config, out, indent=2)
        out.write("\n")
    os.replace(path + ".tmp", path)
    print("changed")
PY
}
runtimes_changed="$(register_runsc)" || die "cannot register runsc in $CONFIG (is it valid JSON?)"
[ -n "$runtimes_changed" ] && say "registered the gVisor runtimes runsc and runsc-net in $CONFIG"

if engine_up; then
    if [ -n "$runtimes_changed" ]; then
        pid="$(cat /var/run/docker.pid 2>/dev/null || pidof dockerd || true)"
        [ -n "$pid" ] || die "the Docker engine runs but its pid is unknown: reload it (systemctl reload docker)"
        kill -HUP $pid
        for _ in $(seq 1 10); do
            docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc-net"' && break
            sleep 1
        done
        docker info --format '{{json .Runtimes}}' | grep -q '"runsc-net"' \
            || die "dockerd did not load the runsc runtimes from $CONFIG; see its log"
        say "the Docker engine reloaded its runtimes"
    fi
    say "the Docker engine is already running"
    exit 0
fi

command -v dockerd >/dev/null 2>&1 || die "dockerd is not installed: apt-get install -y docker.io"
command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed: apt-get install -y docker.io"
[ "$(id -u)" = 0 ] || die "starting dockerd needs root: run this script with sudo"

# Prefer the service manager when there is one running (a real systemd host).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    say "starting docker with systemctl"
    systemctl start docker >/dev/null 2>&1 || say "systemctl start docker failed; starting dockerd directly"
    for _ in $(seq 1 10); do engine_up && { say "the Docker engine is running"; exit 0; }; sleep 1; done
fi

# overlay2 works when overlayfs can be mounted on top of the data root's filesystem
# (not on overlayfs itself, nor on some network filesystems); vfs always works but copies
# every layer in full, so it is slower and larger.
overlay_works() {
    grep -qw overlay /proc/filesystems || modprobe overlay >/dev/null 2>&1 || return 1
    mkdir -p "$DATA_ROOT"
    local probe
    probe="$(mktemp -d "$DATA_ROOT/.overlay-probe.XXXXXX")" || return 1
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    echo ok >"$probe/lower/f"
    local rc=1
    if mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
        # a write through the merged view must land in upper: the layer-diff path docker uses
        if echo changed >"$probe/merged/f" 2>/dev/null && grep -q changed "$probe/upper/f" 2>/dev/null; then
            rc=0
        fi
        umount "$probe/merged" 2>/dev/null || true
    fi
    rm -rf "$probe"
    return $rc
}

DRIVER="${NEXUS_DOCKER_STORAGE_DRIVER:-}"
if [ -z "$DRIVER" ]; then
    # An existing data root already has a driver: keep it (switching hides old images).
    if [ -d "$DATA_ROOT/overlay2" ] && [ -n "$(ls -A "$DATA_ROOT/overlay2" 2>/dev/null)" ]; then
        DRIVER=overlay2
    elif [ -d "$DATA_ROOT/vfs" ] && [ -n "$(ls -A "$DATA_ROOT/vfs" 2>/dev/null)" ]; then
        DRIVER=vfs
    elif overlay_works; then
        DRIVER=overlay2
    else
        DRIVER=vfs
    fi
fi

mkdir -p "$(dirname "$LOG")" 2>/dev/null || true
if ! touch "$LOG" 2>/dev/null; then
    LOG="$(mktemp /tmp/dockerd.XXXXXX.log)"
fi

say "starting dockerd (storage driver $DRIVER, data root $DATA_ROOT, log $LOG)"
nohup dockerd --storage-driver "$DRIVER" --data-root "$DATA_ROOT" >>"$LOG" 2>&1 </dev/null &
DOCKERD_PID=$!

for _ in $(seq 1 "$WAIT"); do
    if engine_up; then
        say "the Docker engine is running (pid $DOCKERD_PID, driver $DRIVER)"
        exit 0
    fi
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
        tail -n 20 "$LOG" >&2 || true
        die "dockerd exited during startup; see $LOG"
    fi
    sleep 1
done
tail -n 20 "$LOG" >&2 || true
die "dockerd did not answer within ${WAIT}s; see $LOG"
