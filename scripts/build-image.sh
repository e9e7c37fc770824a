#!/usr/bin/env bash
# Build the Docker sandbox image offline (no registry needed), reusing what is already built.
#
#   bash scripts/build-image.sh [--base-only] [--force] [--rebuild-base] [--agent-digest]
#
# Two layers:
#   1. nexus-base:bookworm ($NEXUS_DOCKER_BASE): a minimal Debian bookworm made with
#      `debootstrap --variant=minbase` (python3, nodejs, bash, procps, ca-certificates),
#      a non-root user `user` (uid 1000, home /home/user), shrunk, then `docker import`ed.
#      The shrunk rootfs tarball is cached in $NEXUS_IMAGE_CACHE (default /var/cache/nexus),
#      so the base is re-imported from it rather than debootstrapped again.
#   2. nexus-sandbox:latest ($NEXUS_DOCKER_IMAGE): FROM the base, adds the agent package
#      (nexus_kernel/agent/sandbox_agent/) at /opt/nexus-agent/sandbox_agent/ with its
#      bytecode and labels the image with the package's digest (nexus.agent_sha256: the
#      sha256 of `sha256sum *.py` in the package, as nexus_kernel.agent.agent_digest()).
# Reuse: when the image exists with the current agent's digest nothing is done; when only
# the agent changed, only layer 2 is rebuilt (seconds).
#
# Options: --base-only (stop after layer 1), --force (rebuild layer 2 even when current),
# --rebuild-base (debootstrap again, ignoring the cached rootfs and base image),
# --agent-digest (print the agent package's digest and exit).
# Env: NEXUS_DOCKER_IMAGE, NEXUS_DOCKER_BASE, NEXUS_IMAGE_CACHE, NEXUS_DEBIAN_MIRROR,
#      NEXUS_AGENT_DIR (the agent package directory).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

IMAGE="${NEXUS_DOCKER_IMAGE:-nexus-sandbox:latest}"
BASE="${NEXUS_DOCKER_BASE:-nexus-base:bookworm}"
CACHE="${NEXUS_IMAGE_CACHE:-/var/cache/nexus}"
MIRROR="${NEXUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
AGENT="${NEXUS_AGENT_DIR:-$ROOT/nexus_kernel/agent/sandbox_agent}"
SUITE=bookworm
PACKAGES="python3,nodejs,bash,procps,ca-certificates"
# Bump when the recipe below changes, so a stale cached rootfs is not reused.
RECIPE_VERSION=1

# The agent package's digest: sha256 over `sha256sum` of its files in C order.
agent_digest() {
    (export LC_ALL=C; cd "$AGENT" && sha256sum -- *.py) | sha256sum | cut -d' ' -f1
}

BASE_ONLY=0 FORCE=0 REBUILD_BASE=0
for arg in "$@"; do
    case "$arg" in
        --base-only) BASE_ONLY=1 ;;
        --force) FORCE=1 ;;
        --rebuild-base) REBUILD_BASE=1 ;;
        --agent-digest) agent_digest; exit 0 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "build-image: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

START=$SECONDS
step() { echo "build-image [$((SECONDS - START))s]: $*"; }
die() { echo "build-image: error: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "the docker CLI is missing: apt-get install -y docker.io"
docker info >/dev/null 2>&1 || die "the Docker engine is not running: bash scripts/start-dockerd.sh"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_label() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

RECIPE_HASH="$(printf '%s|%s|%s|%s' "$SUITE" "$PACKAGES" "$RECIPE_VERSION" "$(uname -m)" | sha256sum | cut -c1-12)"
TARBALL="$CACHE/rootfs-$SUITE-$RECIPE_HASH.tar"

# ---- layer 1: the base ---------------------------------------------------------------

shrink_rootfs() {
    local rootfs="$1"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/lintian "$rootfs"/usr/share/linda "$rootfs"/usr/share/bug
    find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' \
        -exec rm -rf {} + 2>/dev/null || true
    find "$rootfs" -xdev -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true
    # keep docs/man pages out of future apt installs in derived images too
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/nexus-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF
}

add_user() {
    local rootfs="$1"
    if ! chroot "$rootfs" id -u user >/dev/null 2>&1; then
        chroot "$rootfs" useradd --uid 1000 --user-group --create-home --home-dir /home/user \
            --shell /bin/bash user
    fi
    mkdir -p "$rootfs/opt/nexus-agent" "$rootfs/run/nexus"
    chroot "$rootfs" chown 1000:1000 /run/nexus
    chmod 0700 "$rootfs/run/nexus"
}

debootstrap_rootfs() {
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing: apt-get install -y debootstrap"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root: run this script with sudo"
    local work rootfs
    work="$(mktemp -d /var/tmp/nexus-rootfs.XXXXXX)"
    rootfs="$work/rootfs"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    step "debootstrap --variant=minbase $SUITE with $PACKAGES from $MIRROR (a few minutes)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
        | while IFS= read -r line; do
            case "$line" in I:\ Retrieving*|I:\ Validating*|I:\ Extracting*|I:\ Unpacking*|I:\ Configuring*) ;;
                *) echo "    $line" ;; esac
          done
    [ -x "$rootfs/usr/bin/python3" ] || die "debootstrap finished without python3 in the rootfs"
    step "adding user 'user' (uid 1000, home /home/user)"
    add_user "$rootfs"
    step "shrinking the rootfs (apt caches, docs, man pages, locales)"
    shrink_rootfs "$rootfs"
    step "the rootfs is $(du -sh "$rootfs" | cut -f1); caching it as $TARBALL"
    mkdir -p "$CACHE"
    tar --numeric-owner --xattrs -C "$rootfs" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
    rm -rf "$work"
    trap - EXIT
}

import_base() {
    step "docker import $TARBALL as $BASE"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL nexus.base_recipe=$RECIPE_HASH" \
        --change 'CMD ["/bin/bash"]' \
        "$TARBALL" "$BASE" >/dev/null
}

build_base() {
    if [ "$REBUILD_BASE" = 0 ] && image_exists "$BASE" \
        && [ "$(image_label "$BASE" nexus.base_recipe)" = "$RECIPE_HASH" ]; then
        step "$BASE is up to date (recipe $RECIPE_HASH)"
        return
    fi
    if [ "$REBUILD_BASE" = 1 ] || [ ! -s "$TARBALL" ]; then
        debootstrap_rootfs
    else
        step "reusing the cached rootfs $TARBALL"
    fi
    import_base
    step "$BASE: $(docker image inspect --format '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1/1e6}')"
}

# ---- layer 2: the agent ---------------------------------------------------------------

agent_dockerfile() {
    cat <<EOF
FROM $BASE
COPY sandbox_agent /opt/nexus-agent/sandbox_agent
RUN python3 -m compileall -q /opt/nexus-agent
ENV HOME=/home/user LANG=C.UTF-8 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/user
USER 1000:1000
CMD ["sh", "-c", "cd /opt/nexus-agent && exec python3 -m sandbox_agent --help"]
EOF
}

build_sandbox() {
    [ -f "$AGENT/__main__.py" ] || die "the agent package $AGENT is missing"
    local sha recipe ctx
    sha="$(agent_digest)"
    # the top layer's recipe: the base's recipe and this Dockerfile
    recipe="$RECIPE_HASH-$(agent_dockerfile | sha256sum | cut -c1-12)"
    if [ "$FORCE" = 0 ] && image_exists "$IMAGE" \
        && [ "$(image_label "$IMAGE" nexus.agent_sha256)" = "$sha" ] \
        && [ "$(image_label "$IMAGE" nexus.image_recipe)" = "$recipe" ]; then
        step "$IMAGE is up to date (agent digest ${sha:0:12})"
        return
    fi
    ctx="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$ctx'" EXIT
    mkdir "$ctx/sandbox_agent"
    cp "$AGENT"/*.py "$ctx/sandbox_agent/"
    chmod 0755 "$ctx/sandbox_agent"
    chmod 0644 "$ctx/sandbox_agent"/*.py
    agent_dockerfile >"$ctx/Dockerfile"
    step "docker build $IMAGE (agent digest ${sha:0:12})"
    # Without the buildx plugin, the legacy builder is the one that works (FROM a local image).
    local builder_env=()
    docker buildx version >/dev/null 2>&1 || builder_env=(env DOCKER_BUILDKIT=0)
    if ! "${builder_env[@]}" docker build --quiet --label "nexus.agent_sha256=$sha" \
        --label "nexus.image_recipe=$recipe" -t "$IMAGE" "$ctx" >"$ctx/build.log" 2>&1; then
        cat "$ctx/build.log" >&2
        die "docker build of $IMAGE failed"
    fi
    rm -rf "$ctx"
    trap - EXIT
    image_exists "$IMAGE" || die "docker build did not produce $IMAGE"
    step "$IMAGE is ready"
}

build_base
[ "$BASE_ONLY" = 1 ] && { step "done (base only)"; exit 0; }
build_sandbox
step "done"
